"""`tb-stability report`: table, JSON, exit codes, errors."""

import json
import os
import subprocess
import sys

import pytest

from tb_stability import cli


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tb_stability.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_table_and_exit_one_on_anomalies(demo_logs, capsys):
    logdir = str(demo_logs[0])
    assert cli.main(["report", logdir]) == 1
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["run", "kind", "step", "cause", "layer", "lead", "fix"]
    assert "summed_loss" in out and "seed000-fixed" in out


def test_exit_zero_without_anomalies_and_json(demo_logs, capsys):
    logdir = str(demo_logs[0])
    assert cli.main(["report", logdir, "--run", "seed003-fixed", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["logdir"] == logdir
    assert [r["run"] for r in result["runs"]] == ["seed003-fixed"]
    assert result["runs"][0]["anomalies"] == []
    assert result["runs"][0]["steps"] == 8000


@pytest.mark.parametrize("args, message", [
    (["report", "/nonexistent/dir"], "not a directory"),
    (["report", "{tmp}"], "no tb_stability data"),
    (["report", "{demo}", "--run", "nope"], "no tb_stability data for run"),
])
def test_read_errors_exit_two(args, message, tmp_path, demo_logs, capsys):
    args = [a.format(tmp=tmp_path, demo=demo_logs[0]) for a in args]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_usage_error_exits_two():
    proc = _cli("report")
    assert proc.returncode == 2 and "usage" in proc.stderr
    proc = _cli("frobnicate", ".")
    assert proc.returncode == 2


def test_installed_console_script(demo_logs):
    exe = os.path.join(os.path.dirname(sys.executable), "tb-stability")
    if not os.path.exists(exe):
        pytest.skip("console script not installed (editable source checkout)")
    proc = subprocess.run([exe, "report", str(demo_logs[0]), "--run", "seed000-bad"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "summed_loss" in proc.stdout


def test_corrupt_and_truncated_event_files_are_skipped(demo_logs, tmp_path, caplog):
    import shutil

    src = demo_logs[0] / "seed002-bad"
    for name, damage in (("truncated", "cut"), ("corrupt", "flip")):
        dst = tmp_path / name
        shutil.copytree(src, dst)
        (path,) = list(dst.glob("events.out.tfevents.*"))
        data = bytearray(path.read_bytes())
        if damage == "cut":
            data = data[: len(data) * 2 // 3]
        else:
            data[len(data) // 2: len(data) // 2 + 8] = b"\xff" * 8
        path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="tb_stability"):
        code = cli.main(["report", str(tmp_path)])
    assert code in (0, 1)
    from tb_stability import analysis

    runs = analysis.load_logdir(str(tmp_path))
    assert set(runs) == {"truncated", "corrupt"}
    assert 0 < len(runs["truncated"].steps) < 10000  # read up to the damage
