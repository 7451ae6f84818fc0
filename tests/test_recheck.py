"""The offline analysis on the host keeps the detail rows it will need.

The in-graph detector flags a slow rise only once it is far up; the
offline analysis dates its onset much earlier. `record.recheck` runs the
analysis over the recent rows at each flush, so the per-variable rows
around every onset and peak it reports are written.
"""

import logging
import math

import keras
import numpy as np
import tensorflow as tf

import tb_stability
from tb_stability import analysis
from tb_stability.analysis import detect as detect_lib
from tb_stability.config import RecorderConfig
from tb_stability.record import recheck
from tb_stability.record.writer import DetailSelector

CONFIG = RecorderConfig()
BEFORE, AFTER = CONFIG.detail_before, CONFIG.detail_after


def _slow_divergence(logdir, steps=800, seed=5):
    """SGD on a linear regression whose learning rate ramps past the
    stability limit of the bias (curvature 2): the loss drifts up slowly
    from about step 320, and the detector flags it only 200 steps later."""
    rng = np.random.default_rng(seed)
    x = (0.3 * rng.normal(size=(steps * 4, 4))).astype("float32")
    w = rng.normal(size=(4, 1)).astype("float32")
    y = (x @ w + 1.0 + 0.3 * rng.normal(size=(steps * 4, 1))).astype("float32")

    class Ramp(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            ramp = 0.9 + 0.15 * tf.minimum((step - 300.0) / 300.0, 1.0)
            return tf.where(step < 300.0, 0.1, ramp)

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(1, kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(Ramp()), loss="mse",
                  steps_per_execution=10)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0,
              callbacks=[tb_stability.keras.StabilityCallback(logdir)])


def _around(step, first, last):
    return range(max(step - BEFORE, first), min(step + AFTER, last) + 1)


def test_detail_rows_at_the_onset_the_analysis_reports(tmp_path):
    logdir = str(tmp_path / "run")
    _slow_divergence(logdir)
    run = analysis.load_logdir(logdir)["."]
    assert len(run.steps) == 800
    anomalies = detect_lib.detect_anomalies(run.steps, run.col("loss"),
                                            nonfinite=run.col("nonfinite"))
    kept = [a for a in anomalies if a.kind in recheck.LOCAL_KINDS]
    assert any(a.kind == "divergence" for a in kept), anomalies
    flagged = run.steps[run.col("flags") != 0]
    online = {int(s) for f in flagged for s in _around(int(f), 0, 799)}
    detail = set(run.detail_steps.tolist())
    points = [s for a in kept for s in (a.step, a.peak_step)]
    # The detector alone would have left these without detail rows.
    assert any(s not in online for s in points), (kept, flagged)
    for s in points:
        missing = [t for t in _around(s, 0, 799) if t not in detail]
        assert not missing, (s, missing)
    # Besides the first steps, no more than the windows asked for.
    # ... and a span where the loss went flat, at each level it settled at.
    flats = 2
    assert len(detail) <= CONFIG.first_steps + (len(points) + len(flagged) + flats) * (
        BEFORE + AFTER + 1)


def _simulate(loss, flush_every, classes=None, pred=None):
    """What the recorder does on the host with rows of `loss`, flushed every
    `flush_every` rows: the detail rows it writes (as row counts)."""
    capacity = 2 * (256 + 1) + 64
    check = recheck.Recheck(capacity, 256, classes=classes)
    selector = DetailSelector(CONFIG)
    written = []
    G = len(tb_stability.metadata.GLOBAL_COLUMNS)
    rows = np.zeros([len(loss), G], np.float32)
    rows[:, tb_stability.metadata.GLOBAL["loss"]] = loss
    rows[:, tb_stability.metadata.GLOBAL["loss_scale"]] = np.nan
    for name in tb_stability.metadata.DATA_COLUMNS:  # not measured
        rows[:, tb_stability.metadata.GLOBAL[name]] = np.nan
    if pred is not None:  # (min, max, mean) of the predictions per row
        for j, name in enumerate(("pred_min", "pred_max", "pred_mean")):
            rows[:, tb_stability.metadata.GLOBAL[name]] = pred[:, j]
    n = len(loss)
    for start in range(0, n, flush_every):
        count = min(start + flush_every, n)
        final = count == n
        check.add(start, np.arange(start, count), rows[start:count])
        if check.due(final):
            selector.note_rows(check.rows(final), count, capacity)
        wanted = selector.wanted(count, capacity, 0 if final else check.hold)
        assert all(r > selector.written for r in wanted)
        assert all(r >= count - capacity for r in wanted)
        written += wanted
        if wanted:
            selector.written = wanted[-1]
    return written


def test_healthy_noise_keeps_the_first_steps_and_where_it_went_flat():
    """Flat noise from the first step: the first steps and one span around
    the onset of the flat stretch (a stall's onset, should the run end so),
    not one per analysis."""
    rng = np.random.default_rng(0)
    loss = 0.1 * np.exp(0.5 * rng.normal(size=3000))
    for every in (1, 10, 256):
        written = _simulate(loss, every)
        assert written[:CONFIG.first_steps] == list(range(CONFIG.first_steps)), every
        assert len(written) <= CONFIG.first_steps + BEFORE + AFTER + 1, every
        assert max(written) < 100, every


def test_a_stall_mid_run_keeps_its_onset():
    """A loss falling from 30 reaches ln 10 at row 1200 and stays there: the
    plateau is known from the whole run only 300+ rows later, the rows
    around its onset are kept."""
    rng = np.random.default_rng(2)
    n = 2500
    t = np.arange(n)
    loss = np.exp(np.maximum(math.log(30.0) * (1 - t / 1200.0), 0.0)) * math.log(10)
    loss *= np.exp(0.005 * rng.normal(size=n))
    (a,) = detect_lib.detect_anomalies(t, loss, classes=10)
    assert (a.kind, a.pattern) == ("plateau", "chance") and 1150 <= a.step <= 1220, a
    for every in (1, 10, 256):
        written = set(_simulate(loss, every, classes=10))
        assert any(a.step - BEFORE <= r <= a.step + AFTER for r in written), every
        assert len(written) <= CONFIG.first_steps + 3 * (BEFORE + AFTER + 1), every


def test_slow_rise_onset_found_late_still_has_its_rows():
    rng = np.random.default_rng(1)
    n, onset = 1500, 1000
    loss = 0.1 * np.exp(0.3 * rng.normal(size=n))
    loss[onset:] *= 1.02 ** np.arange(n - onset)  # a slow geometric rise
    found = detect_lib.detect_anomalies(np.arange(n), loss)
    assert [a.kind for a in found] == ["divergence"], found
    a = found[0]
    assert onset <= a.step < a.peak_step
    for every in (1, 10, 256):  # a Monitor under XLA flushes each step
        written = set(_simulate(loss, every))
        for s in (a.step, a.peak_step):
            assert set(_around(s, 0, n - 1)) <= written, (every, s)
        assert len(written) <= CONFIG.first_steps + 41 * (1 + n // 256 + 1)


def test_a_run_descending_to_new_lows_keeps_no_flat_spans():
    """Flat stretches of a run still reaching new lows, far below its start,
    are no plateau's onset: only the first steps are kept."""
    rng = np.random.default_rng(3)
    n = 5000
    t = np.arange(n)
    loss = 3.0 * np.exp(-t / 200.0) + 0.1 * np.exp(-t / 3000.0)
    loss *= np.exp(0.3 * rng.normal(size=n))
    assert detect_lib.detect_anomalies(t, loss) == []
    for every in (10, 256):
        assert _simulate(loss, every) == list(range(CONFIG.first_steps)), every


def test_a_constant_prediction_stall_keeps_its_onset_at_any_level():
    """A regression whose hidden units die at row 1000: the prediction is
    the same for every input from there on, and the loss sits at the
    targets' variance, two decades below its start and at a level it had
    reached before. The onset's rows are kept all the same."""
    rng = np.random.default_rng(4)
    n, dead = 2500, 1000
    t = np.arange(n)
    loss = np.maximum(300.0 * np.exp(-t / 100.0), 3.0) * np.exp(0.05 * rng.normal(size=n))
    spread = np.where(t < dead, 5.0, 0.0)
    pred = np.stack([35.0 - spread, 35.0 + spread, np.full(n, 35.0)], axis=1)
    assert detect_lib.detect_anomalies(t, loss) == []  # the loss alone: converged
    spread_rel = (pred[:, 1] - pred[:, 0]) / np.abs(pred[:, 2])
    (a,) = detect_lib.detect_anomalies(t, loss, pred_spread=spread_rel)
    assert (a.kind, a.pattern) == ("plateau", "stall")
    for every in (10, 256):
        written = set(_simulate(loss, every, pred=pred))
        assert any(dead - BEFORE <= r <= dead + 2 * detect_lib.BLOCK for r in written), every


def test_a_failing_analysis_leaves_the_recording(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("broken analysis")

    monkeypatch.setattr(detect_lib, "detect_anomalies", broken)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse", steps_per_execution=10)
    logdir = str(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="tb_stability"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0,
                  callbacks=[tb_stability.keras.StabilityCallback(logdir, window=64)])
    assert "offline analysis" in caplog.text
    run = analysis.load_logdir(logdir)["."]
    assert list(run.steps) == list(range(300))  # every row still written
    assert list(run.detail_steps) == list(range(CONFIG.first_steps))
