"""Names the likely causes of an anomaly, with evidence (pure NumPy).

`rank_causes` runs every rule of the registry (`analysis.rules.RULES`,
one module per cause) on the anomaly and ranks what they return by
confidence; when nothing reaches `MIN_CONFIDENCE` the answer is
`unknown` first: a wrong confident cause is the worst answer.

`Cause` and `Context` live in `analysis.context`; they are importable
from here too.
"""

from typing import List, Optional

from tb_stability.analysis import causes as C
from tb_stability.analysis import rules
from tb_stability.analysis.context import Cause, Context, make_cause
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import fmt
from tb_stability.events.series import RunData

__all__ = ["MIN_CONFIDENCE", "Cause", "Context", "rank_causes"]

# Below this confidence (0..1) the top cause is not asserted: `unknown`
# goes first.
MIN_CONFIDENCE = 0.3

# What a rule may raise on data it cannot handle: it then names no cause.
_DATA_ERRORS = (IndexError, ValueError, KeyError, TypeError, ZeroDivisionError)


def rank_causes(run: RunData, anomaly: Anomaly, ctx: Optional[Context] = None) -> List[Cause]:
    """The causes of `anomaly`, most confident first (never empty).

    Arguments:
      run: the run's aligned arrays.
      anomaly: one anomaly of `run` (`detect.detect_anomalies`).
      ctx: the run's `Context` (computed from `run` when not given).

    Returns:
      The causes the rules found, by decreasing confidence (ties in
      `rules.RULES` order), with `unknown` first when none reaches
      `MIN_CONFIDENCE`. Missing data degrades to fewer causes.
    """
    ctx = ctx or Context(run)
    found = []
    for _cause_id, rule in rules.RULES:
        try:
            cause = rule(ctx, anomaly)
        except _DATA_ERRORS:
            cause = None  # missing data degrades to fewer causes
        if cause is not None:
            found.append(cause)
    found.sort(key=lambda c: -c.confidence)
    if not found or found[0].confidence < MIN_CONFIDENCE:
        found.insert(0, make_cause(C.UNKNOWN, 0.0, [
            f"{anomaly.kind} from step {anomaly.step} (peak {anomaly.peak_step}, "
            f"severity {fmt(anomaly.severity)}); none of the known mechanisms "
            f"is supported by the recorded evidence."]))
    return found
