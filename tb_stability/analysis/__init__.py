"""Finds anomalies and names their causes (pure NumPy, no TensorFlow).

    from tb_stability.analysis import report_logdir, load_logdir, analyze_run
    result = report_logdir("logs")             # the JSON-able report
    runs = load_logdir("logs")                 # {run: RunData}
    analyze_run(runs["run1"])                  # [anomaly dict]

Pure NumPy: the analysis reads aligned arrays (`tb_stability.events.series`)
and never imports TensorFlow or TensorBoard. `load_logdir` and
`report_logdir` read event files through `tb_stability.events.reader`,
imported on first use.

Modules: `detect` (anomalies), `attribute` (causes), `causes` (ids and
fixes), `report` (the JSON shape).
"""

from tb_stability.analysis.attribute import Cause, rank_causes
from tb_stability.analysis.causes import ALL as CAUSE_IDS
from tb_stability.analysis.detect import Anomaly, detect_anomalies
from tb_stability.analysis.report import analyze_run, report_logdir
from tb_stability.events.series import RunData

__all__ = ["Anomaly", "Cause", "CAUSE_IDS", "RunData", "analyze_run",
           "detect_anomalies", "load_logdir", "rank_causes", "report_logdir"]


def load_logdir(logdir, run=None):
    """{run name: RunData} of a logdir; see `tb_stability.events.reader`."""
    from tb_stability.events import reader  # pylint: disable=import-outside-toplevel

    return reader.load_logdir(logdir, run=run)
