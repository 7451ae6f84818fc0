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
    assert header == ["run", "kind", "step", "cause", "(confidence)", "layer", "lead"]
    assert "summed_loss" in out and "seed000-fixed" in out


def test_table_fits_120_columns_with_each_fix_once_per_run(demo_logs, capsys):
    """Issue 18: the table was ~200 columns wide with seed002-bad's fix
    repeated on each of its 14 rows."""
    from tb_stability.analysis import causes

    logdir = str(demo_logs[0])
    assert cli.main(["report", logdir]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= cli.WIDTH
    blocks = {}  # run -> its fix lines (those under its rows)
    run = None
    for line in lines[1:]:
        if line.startswith("    fix ("):
            blocks[run].append(line)
        elif not line.startswith("      "):
            run = line.split()[0]
            blocks.setdefault(run, [])
    seed002 = blocks["seed002-bad"]
    assert [line.split()[1] for line in seed002] == ["(adam_epsilon):"]  # once, not 14 times
    assert sum(1 for line in lines if line.startswith("seed002-bad ")) > 1
    # the fix is all there, wrapped
    text = " ".join(line.strip() for line in lines)
    assert causes.BY_ID["adam_epsilon"].fix in text
    assert blocks["seed003-fixed"] == []
    assert cli.main(["report", logdir, "--no-fixes"]) == 1
    assert "fix (" not in capsys.readouterr().out


def test_long_names_are_shortened_in_the_middle():
    cause = {"cause": "adam_epsilon", "confidence": 0.95, "layer": "model/" + "block_" * 30 + "dense",
             "variable": None, "lead_steps": 9, "evidence": [], "fix": "Raise epsilon. " * 20}
    result = {"runs": [{"run": "sweep/lr=0.001/" + "x" * 150 + "/seed=3", "steps": 10,
                        "anomalies": [{"kind": "spike", "pattern": "", "step": 3400,
                                       "peak_step": 3447, "causes": [cause]}]}]}
    lines = cli.format_table(result)
    assert max(len(line) for line in lines) <= cli.WIDTH
    row = lines[1]
    assert row.startswith("sweep/lr=0.001/") and "\u2026" in row and "/seed=3" in row
    assert "model/block_" in row and "_dense" in row
    assert sum(1 for line in lines if line.startswith("    fix (adam_epsilon)")) == 1


def test_quiet_on_a_closed_pipe(demo_logs):
    """`tb-stability report DIR | head -3`: the reader goes away; no
    BrokenPipeError traceback, the usual exit status."""
    proc = subprocess.Popen([sys.executable, "-m", "tb_stability.cli", "report",
                             str(demo_logs[0])], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before it writes: its first write finds the pipe closed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    for flag in ([], ["--json"]):
        shell = subprocess.run(
            ["bash", "-c", f'"{sys.executable}" -m tb_stability.cli report '
             f'"{demo_logs[0]}" {" ".join(flag)} | head -3'],
            capture_output=True, text=True, timeout=120)
        assert len(shell.stdout.splitlines()) == 3
        assert "Traceback" not in shell.stderr and "BrokenPipe" not in shell.stderr, shell.stderr


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
