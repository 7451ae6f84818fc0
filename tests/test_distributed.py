"""MirroredStrategy over two logical CPU devices: global norms, written once."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import G, event_files, global_table, read_run

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "mirrored_run.py")


@pytest.mark.parametrize("mode", ["keras", "monitor"])
def test_mirrored_strategy_records_global_norms_once(mode, tmp_path):
    logdir = str(tmp_path / "run")
    out = str(tmp_path / "ref.npz")
    proc = subprocess.run([sys.executable, SCRIPT, logdir, mode, out],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "instrumentation failed" not in proc.stderr, proc.stderr[-3000:]
    assert "record failed" not in proc.stderr, proc.stderr[-3000:]
    ref = np.load(out)
    assert len(event_files(logdir)) == 1  # written once, not per replica
    steps, rows = global_table(read_run(logdir))
    assert list(steps) == list(range(6))  # each step once
    # The all-reduced norm of the global-batch gradient, not a replica's.
    np.testing.assert_allclose(rows[:, G["grad_norm"]], ref["norms"], rtol=1e-4)
    np.testing.assert_allclose(rows[:, G["loss"]], ref["losses"], rtol=1e-4)
    np.testing.assert_allclose(rows[:, G["batch_size"]], 16)
    # The data columns are over the global batch, not one replica's half.
    for name in ("target_min", "target_max", "target_mean"):
        np.testing.assert_allclose(rows[:, G[name]], ref[name], rtol=1e-5, err_msg=name)
    np.testing.assert_array_equal(rows[:, G["input_nonfinite"]], 0)
    assert np.all(np.isfinite(rows[:, G["pred_mean"]]))
