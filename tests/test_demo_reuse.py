"""`python -m demo.main` (what scripts/demo.sh runs): runs already trained
into the logdir are reused and it says so; `--retrain` trains them again
into a clean directory (one event file per run, not two)."""

import glob
import os

from demo import main as demo


def _events(logdir, run):
    return sorted(glob.glob(os.path.join(logdir, run, "events.out.tfevents.*")))


def test_reuses_trained_runs_unless_retrain(tmp_path, capsys):
    logdir = str(tmp_path / "logs")
    args = ["--logdir", logdir, "--logs-only", "--only", "outlier-batch"]
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    assert "training outlier-batch" in out and "reusing" not in out
    first = _events(logdir, "outlier-batch")
    assert len(first) == 1
    stamp = os.stat(first[0]).st_mtime_ns

    assert demo.main(args) == 0
    out = capsys.readouterr().out
    assert "reusing the 1 demo runs already trained" in out and "--retrain" in out
    assert "training outlier-batch" not in out
    assert _events(logdir, "outlier-batch") == first
    assert os.stat(first[0]).st_mtime_ns == stamp  # not written again

    assert demo.main(args + ["--retrain"]) == 0
    out = capsys.readouterr().out
    assert "training outlier-batch" in out and "reusing" not in out
    again = _events(logdir, "outlier-batch")
    assert len(again) == 1 and again != first  # the old run was replaced, not appended to


def test_an_unfinished_run_is_trained_again(tmp_path):
    logdir = tmp_path / "logs"
    (logdir / "outlier-batch").mkdir(parents=True)
    (logdir / "outlier-batch" / "events.out.tfevents.0.x").write_bytes(b"")
    assert demo.finished_runs(str(logdir)) == set()  # never listed as finished
    (logdir / demo.DONE_FILE).write_text("outlier-batch\nseed000-bad\n")
    assert demo.finished_runs(str(logdir)) == {"outlier-batch"}  # seed000-bad has no events
