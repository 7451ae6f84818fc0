"""The demo's seed blow-ups really break, and their fixes really don't.

Runs are deterministic (fixed seeds, see demo/seeds.py); the whole demo is
trained once per session (about two minutes on two cores).
"""

import math

import numpy as np
import pytest
from conftest import G, detail_by_step, global_table, read_run

from tb_stability import metadata

LN10 = math.log(10.0)
REQUIRED = [f"seed00{i}-{kind}" for i in range(4) for kind in ("bad", "fixed")]


@pytest.fixture
def demo_run(demo_logs):
    return demo_logs


def _series(demo_run, name):
    logdir = demo_run[0]
    steps, rows = global_table(read_run(str(logdir / name)))
    assert np.all(np.diff(steps) == 1), name  # every step, in order
    return steps, rows


def _excursions(loss, factor=100.0, start=0):
    """Number of separate excursions above factor x the running minimum."""
    floor = np.minimum.accumulate(np.maximum(np.nan_to_num(loss, nan=np.inf), 1e-20))
    above = (loss > factor * floor) & (np.arange(len(loss)) >= start)
    return int(np.sum(above[1:] & ~above[:-1]) + above[0])


def test_all_runs_and_progress(demo_run):
    _, results, lines = demo_run
    assert set(REQUIRED) <= set(results)
    assert {"seed001-bad-nan", "outlier-batch"} <= set(results)
    assert lines[0].startswith("[1/") and lines[-1].endswith(" s")


def test_seed000_summed_loss_goes_nan_past_the_batch(demo_run):
    steps, rows = _series(demo_run, "seed000-bad")
    loss = rows[:, G["loss"]]
    assert loss[0] == pytest.approx(256 * LN10, rel=1e-3)  # B * ln C
    nan_at = int(np.flatnonzero(~np.isfinite(loss))[0])
    assert nan_at < 20
    assert rows[nan_at, G["flags"]].astype(int) & metadata.FLAG_NONFINITE
    assert demo_run[1]["seed000-bad"]["accuracy"] < 0.2
    _, fixed = _series(demo_run, "seed000-fixed")
    assert np.all(np.isfinite(fixed[:, G["loss"]])) and len(fixed) == 1000
    assert demo_run[1]["seed000-fixed"]["accuracy"] > 0.85


def test_seed001_raw_pixels_stick_at_ln10(demo_run):
    _, rows = _series(demo_run, "seed001-bad")
    tail = rows[-300:, G["loss"]]
    assert abs(tail.mean() - LN10) < 1e-3  # 2.3025, the thread's value
    assert np.all(np.abs(tail - LN10) < 1e-2)  # per batch, flat
    assert demo_run[1]["seed001-bad"]["epoch_accuracy"][-1] < 0.15
    assert rows[0, G["loss"]] > 20 * LN10  # the first steps overshoot
    _, nan_rows = _series(demo_run, "seed001-bad-nan")
    assert not np.isfinite(nan_rows[-1, G["loss"]])
    _, fixed = _series(demo_run, "seed001-fixed")
    assert np.all(np.isfinite(fixed[:, G["loss"]]))
    assert demo_run[1]["seed001-fixed"]["epoch_accuracy"][-1] > 0.8
    assert demo_run[1]["seed001-fixed"]["epoch_loss"][-1] < 1.0


def test_seed002_adam_spikes_at_very_low_loss(demo_run):
    _, rows = _series(demo_run, "seed002-bad")
    loss = rows[:, G["loss"]]
    assert loss.min() < 1e-10
    assert _excursions(loss, start=2000) >= 3  # again and again
    assert loss[2000:].max() > 1e4 * loss.min()
    assert np.sum(rows[:, G["flags"]] != 0) >= 3  # detail kept around them
    _, fixed = _series(demo_run, "seed002-fixed")
    floss = fixed[:, G["loss"]]
    assert _excursions(floss, start=2000) == 0
    assert np.median(floss[-500:]) < 1e-10


def test_seed003_adam_blows_up_after_training_well(demo_run):
    logdir = demo_run[0]
    _, rows = _series(demo_run, "seed003-bad")
    loss = rows[:, G["loss"]]
    low = loss < 1e-12
    best_stretch = max(len(s) for s in "".join("1" if v else "0" for v in low).split("0"))
    assert best_stretch >= 2000  # trained well for thousands of steps
    blow = int(np.flatnonzero((loss > 100 * loss.min()) & (np.arange(len(loss)) > 3000))[0])
    assert np.median(loss[-500:]) > 1e4 * loss.min()  # and stays up
    flags = rows[:, G["flags"]].astype(int)
    rise = np.flatnonzero(flags & metadata.FLAG_LOSS_RISE)
    assert len(rise) >= 1 and blow - 50 <= rise[0] <= blow + 200
    detail = detail_by_step(read_run(str(logdir / "seed003-bad")))
    assert all(s in detail for s in range(rise[0] - 32, rise[0] + 9))
    _, fixed = _series(demo_run, "seed003-fixed")
    floss = fixed[:, G["loss"]]
    assert _excursions(floss, start=2000) == 0 and floss[-500:].max() < 1e-12


def test_fixed_runs_raise_no_detector_flag(demo_run):
    for name in ("seed000-fixed", "seed001-fixed", "seed002-fixed", "seed003-fixed"):
        _, rows = _series(demo_run, name)
        assert not np.any(rows[50:, G["flags"]]), name


def test_outlier_batch_spike(demo_run):
    _, rows = _series(demo_run, "outlier-batch")
    assert int(np.argmax(rows[:, G["loss"]])) == 900
    assert int(rows[900, G["flags"]]) & metadata.FLAG_LOSS_JUMP
