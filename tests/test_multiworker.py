"""MultiWorkerMirroredStrategy: two worker processes on localhost (TF_CONFIG
with 127.0.0.1 ports) train one model with a custom loop and `Monitor`.
Only the chief writes, it records the all-reduced (global) statistics, and
the run is analysed exactly as the single-worker run of the same model on
the same data.
"""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import G, free_ports, global_table, read_run

from tb_stability.analysis import report

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "multiworker_run.py")
SPIKE = 400


def _start(logdir, task, ports, out):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, SCRIPT, logdir, str(task), ",".join(map(str, ports)), out],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait(proc, timeout=240):
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail("worker hung:\n" + output[-3000:])
    assert proc.returncode == 0, output[-3000:]
    assert "failed and is switched off" not in output, output[-3000:]
    return output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multiworker")
    logs = tmp / "logs"
    ports = free_ports(2)
    workers = [_start(str(logs / "multi"), i, ports, str(tmp / f"w{i}.npz"))
               for i in range(2)]
    single = _start(str(logs / "single"), -1, [0], str(tmp / "single.npz"))
    for proc in workers + [single]:
        _wait(proc)
    return logs, [np.load(tmp / f"w{i}.npz") for i in range(2)], np.load(tmp / "single.npz")


def test_only_the_chief_writes(runs):
    logs, workers, _ = runs
    assert [bool(w["chief"]) for w in workers] == [True, False]
    assert len(glob.glob(str(logs / "multi" / "events.out.tfevents.*"))) == 1
    # The workers stayed in sync: the same weights at the end.
    np.testing.assert_array_equal(workers[0]["weights"], workers[1]["weights"])


def test_chief_records_the_global_statistics_of_the_single_worker_run(runs):
    logs, _, _ = runs
    steps_m, rows_m = global_table(read_run(str(logs / "multi")))
    steps_s, rows_s = global_table(read_run(str(logs / "single")))
    assert list(steps_m) == list(range(600)) and list(steps_m) == list(steps_s)
    for name in ("loss", "grad_norm", "batch_size", "rms_ratio_max",
                 "update_ratio", "weight_norm", "flags"):
        np.testing.assert_allclose(rows_m[:, G[name]], rows_s[:, G[name]],
                                   rtol=1e-5, err_msg=name)
    # The global batch (2 replicas x half of 32 each), not one replica's.
    assert np.all(rows_m[:, G["batch_size"]] == 32)


def test_same_analysis_as_the_single_worker_run(runs):
    logs, _, _ = runs
    rep = {r["run"]: r for r in report.report_logdir(str(logs))["runs"]}
    multi, single = rep["multi"]["anomalies"], rep["single"]["anomalies"]
    assert multi, "the planted bad batch must be found"
    assert any(abs(a["peak_step"] - SPIKE) <= 2 for a in multi)

    def key(anomalies):
        return [(a["kind"], a["step"], a["peak_step"],
                 [c["cause"] for c in a["causes"]]) for a in anomalies]
    assert key(multi) == key(single)
