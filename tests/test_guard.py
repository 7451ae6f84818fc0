"""The opt-in update guard: `skip_nonfinite`, `skip_outlier_z`, the bound.

Real small trainings: a NaN row or an outlier batch planted at a random
step; the weights and Adam's moments stay finite, the loss recovers, and
the step is recorded as skipped (`guard_skip`).
"""

import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tb_stability
from tb_stability import metadata
from tb_stability.config import RecorderConfig
from tests.conftest import G, global_table, read_run

BATCH, STEPS, FEATURES = 16, 80, 6


def _data(seed, nan_step=None, outlier_step=None, steps=STEPS):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps * BATCH, FEATURES)).astype("float32")
    w = rng.normal(size=(FEATURES, 1)).astype("float32")
    y = (x @ w + 0.1 * rng.normal(size=(steps * BATCH, 1))).astype("float32")
    if nan_step is not None:
        x[nan_step * BATCH + 3] = np.nan  # one NaN row in that batch
    if outlier_step is not None:
        y[outlier_step * BATCH:(outlier_step + 1) * BATCH] *= 1e4
    return x, y


def _model(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((FEATURES,)),
                             keras.layers.Dense(16, activation="tanh"),
                             keras.layers.Dense(1)])


def _fit(logdir, x, y, seed, jit=False, **options):
    model = _model(seed)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse",
                  jit_compile=jit)
    cb = tb_stability.keras.StabilityCallback(logdir, **options)
    hist = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False,
                     verbose=0, callbacks=[cb])
    return model, hist


def _all_finite(model):
    values = [v.numpy() for v in model.trainable_variables]
    values += [v.numpy() for v in model.optimizer.variables]
    return all(np.all(np.isfinite(v)) for v in values)


def _rows(logdir):
    steps, rows = global_table(read_run(logdir))
    return steps, rows


def test_config_validates_and_round_trips():
    config = RecorderConfig(skip_nonfinite=True, skip_outlier_z=6,
                            max_skips_in_a_row=5)
    assert config.guard_on and not RecorderConfig().guard_on
    back = RecorderConfig.from_run_info(config.to_run_info())
    for name in ("skip_nonfinite", "skip_outlier_z", "max_skips_in_a_row"):
        assert getattr(back, name) == getattr(config, name)
    assert config.to_run_info()["guard"] == {
        "skip_nonfinite": True, "skip_outlier_z": 6.0, "max_skips_in_a_row": 5}
    for bad in ({"skip_outlier_z": -1.0}, {"skip_outlier_z": float("nan")},
                {"max_skips_in_a_row": 0}):
        with pytest.raises(ValueError):
            RecorderConfig(**bad)
    # Runs written before the guard existed: its defaults.
    assert RecorderConfig.from_run_info({"window": 8}).skip_nonfinite is False


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_skips_a_nan_batch(seed, tmp_path):
    nan_step = int(np.random.default_rng(100 + seed).integers(20, 60))
    x, y = _data(seed, nan_step=nan_step)
    logdir = str(tmp_path / "run")
    model, hist = _fit(logdir, x, y, seed, skip_nonfinite=True)
    assert _all_finite(model)
    steps, rows = _rows(logdir)
    assert list(steps) == list(range(STEPS))
    skip = rows[:, G["guard_skip"]]
    assert skip[nan_step] == metadata.GUARD_SKIPPED
    assert np.all(skip[np.arange(STEPS) != nan_step] == metadata.GUARD_APPLIED)
    assert rows[nan_step, G["nonfinite"]] > 0  # still recorded as non-finite
    assert rows[nan_step, G["update_ratio"]] == 0.0
    loss = rows[:, G["loss"]]
    assert np.all(np.isfinite(loss[nan_step + 1:]))
    assert loss[-5:].mean() < loss[:5].mean()
    # The optimizer did not count the skipped step.
    assert int(model.optimizer.iterations.numpy()) == STEPS - 1


def test_fit_unguarded_twin_goes_nan(tmp_path):
    x, y = _data(0, nan_step=30)
    model, _ = _fit(str(tmp_path / "run"), x, y, 0)
    assert not _all_finite(model)
    _, rows = _rows(str(tmp_path / "run"))
    assert np.all(np.isnan(rows[:, G["guard_skip"]]))
    # The guarded twin records the same steps up to the NaN batch (the
    # gradient norms it hands to the recorder are the ones it computes).
    _fit(str(tmp_path / "guarded"), x, y, 0, skip_nonfinite=True)
    _, guarded = _rows(str(tmp_path / "guarded"))
    for name in ("loss", "grad_norm", "update_ratio", "weight_norm"):
        np.testing.assert_allclose(guarded[:30, G[name]], rows[:30, G[name]],
                                   rtol=1e-5, err_msg=name)


def _monitor_run(logdir, x, y, seed, mode, steps=STEPS, **options):
    """A custom loop: eager, a tf.function step with `record` outside it,
    or `record` inside the tf.function ("graph")."""
    model = _model(seed)
    opt = keras.optimizers.Adam(0.01)
    monitor = tb_stability.Monitor(logdir, optimizer=opt,
                                   variables=model.trainable_variables,
                                   model=model, **options)

    def step(s, xb, yb):
        with tf.GradientTape() as tape:
            pred = model(xb, training=True)
            loss = tf.reduce_mean(tf.square(pred - yb))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        if mode == "graph":
            monitor.record(s, loss, grads, inputs=xb, targets=yb,
                           predictions=pred)
        return loss, grads, pred

    if mode != "eager":
        step = tf.function(step)
    for s in range(steps):
        xb = tf.constant(x[s * BATCH:(s + 1) * BATCH])
        yb = tf.constant(y[s * BATCH:(s + 1) * BATCH])
        loss, grads, pred = step(tf.constant(s, tf.int64), xb, yb)
        if mode != "graph":
            monitor.record(s, loss, grads, inputs=xb, targets=yb,
                           predictions=pred)
    monitor.close()
    return model, opt


@pytest.mark.parametrize("mode, seed", [("eager", 0), ("function", 1),
                                        ("graph", 2)])
def test_monitor_skips_a_nan_batch(mode, seed, tmp_path):
    steps = 40
    nan_step = int(np.random.default_rng(200 + seed).integers(10, 30))
    x, y = _data(seed, nan_step=nan_step, steps=steps)
    logdir = str(tmp_path / "run")
    model, opt = _monitor_run(logdir, x, y, seed, mode, steps=steps,
                              skip_nonfinite=True)
    values = [v.numpy() for v in model.trainable_variables + opt.variables]
    assert all(np.all(np.isfinite(v)) for v in values)
    assert "apply" not in opt.__dict__  # the optimizer's own apply is back
    run_steps, rows = _rows(logdir)
    assert list(run_steps) == list(range(steps))
    skip = rows[:, G["guard_skip"]]
    assert skip[nan_step] == metadata.GUARD_SKIPPED
    assert np.all(skip[np.arange(steps) != nan_step] == metadata.GUARD_APPLIED)
    loss = rows[:, G["loss"]]
    assert np.all(np.isfinite(loss[nan_step + 1:]))
    assert loss[-5:].mean() < loss[:5].mean()


def test_fit_skips_a_nan_batch_under_jit(tmp_path):
    x, y = _data(3, nan_step=25, steps=40)
    logdir = str(tmp_path / "run")
    model, _ = _fit(logdir, x, y, 3, jit=True, skip_nonfinite=True)
    assert _all_finite(model)
    _, rows = _rows(logdir)
    skip = rows[:, G["guard_skip"]]
    assert skip[25] == metadata.GUARD_SKIPPED and np.nansum(skip) == 1


def _after_outlier(logdir, outlier):
    _, rows = _rows(logdir)
    loss = rows[:, G["loss"]]
    before = np.median(loss[outlier - 10:outlier])
    after = np.median(loss[outlier + 1:])
    return rows, before, after


@pytest.mark.parametrize("seed", [0, 1])
def test_outlier_batch_is_skipped_and_the_loss_does_not_spike(seed, tmp_path):
    outlier = int(np.random.default_rng(300 + seed).integers(45, 60))
    x, y = _data(seed, outlier_step=outlier)
    guarded, twin = str(tmp_path / "guarded"), str(tmp_path / "twin")
    _fit(guarded, x, y, seed, skip_outlier_z=6.0)
    _fit(twin, x, y, seed)
    rows, before, after = _after_outlier(guarded, outlier)
    skip = rows[:, G["guard_skip"]]
    assert skip[outlier] == metadata.GUARD_SKIPPED
    assert np.sum(skip == metadata.GUARD_SKIPPED) == 1, np.flatnonzero(skip)
    _, twin_before, twin_after = _after_outlier(twin, outlier)
    # Adam normalises the outlier's step, yet the unguarded twin's loss
    # rises to twice its level and more for the rest of the run (the step's
    # momentum keeps pushing while its square holds the step size down).
    assert after < 1.5 * before, (before, after)
    assert twin_after > 1.5 * twin_before, (twin_before, twin_after)
    assert twin_after > 2.0 * after, (after, twin_after)


def test_the_bound_lets_updates_through_and_warns_once(tmp_path, caplog):
    x, y = _data(4, steps=12)
    x[:] = np.nan  # every batch
    logdir = str(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="tb_stability"):
        _fit(logdir, x, y, 4, skip_nonfinite=True, max_skips_in_a_row=5)
    _, rows = _rows(logdir)
    skip = rows[:, G["guard_skip"]]
    assert list(skip) == [metadata.GUARD_SKIPPED] * 5 + \
        [metadata.GUARD_LET_THROUGH] * 7
    warned = [r for r in caplog.records if "max_skips_in_a_row" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]


def test_loss_scale_optimizer_skips_alone(tmp_path):
    """Under mixed precision a non-finite step is the LossScaleOptimizer's
    skip (its scale halves); the guard does not skip it again."""
    x, y = _data(5, nan_step=6, steps=12)
    logdir = str(tmp_path / "run")
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model, _ = _fit(logdir, x, y, 5, skip_nonfinite=True)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(np.all(np.isfinite(v.numpy())) for v in model.trainable_variables)
    _, rows = _rows(logdir)
    skip, scale = rows[:, G["guard_skip"]], rows[:, G["loss_scale"]]
    assert np.all(skip == metadata.GUARD_APPLIED)
    assert scale[7] == scale[6] / 2  # the LossScaleOptimizer's own skip


SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "guard_mirrored.py")


@pytest.mark.parametrize("mode", ["keras", "monitor"])
def test_mirrored_strategy_skips_on_every_replica(mode, tmp_path):
    logdir, out = str(tmp_path / "run"), str(tmp_path / "out.npz")
    proc = subprocess.run([sys.executable, SCRIPT, logdir, mode, out],
                          capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = np.load(out)
    assert bool(result["finite"])
    _, rows = _rows(logdir)
    skip = rows[:, G["guard_skip"]]
    nan_step = int(result["nan_step"])
    assert skip[nan_step] == metadata.GUARD_SKIPPED
    assert np.sum(skip == metadata.GUARD_SKIPPED) == 1
    assert np.all(np.isfinite(rows[nan_step + 1:, G["loss"]]))


def test_report_shows_the_skipped_nan_batch(tmp_path):
    """A guarded NaN batch is still a non-finite anomaly with its cause; the
    report says the guard skipped its update, and the run is not broken."""
    from tb_stability import cli
    from tb_stability.analysis import report

    nan_step = 40
    x, y = _data(6, nan_step=nan_step)
    logdir = str(tmp_path / "logs")
    _fit(os.path.join(logdir, "guarded"), x, y, 6, skip_nonfinite=True)
    result = report.report_logdir(logdir)
    anomalies = result["runs"][0]["anomalies"]
    bad = [a for a in anomalies if a["kind"] == "nonfinite"]
    assert len(bad) == 1, anomalies
    assert bad[0]["step"] == nan_step and bad[0]["end_step"] == nan_step + 1
    assert bad[0]["guard_skipped"] == 1
    assert bad[0]["causes"][0]["cause"] == "nonfinite_input"
    assert all(a["guard_skipped"] == 0 for a in anomalies if a is not bad[0])
    table = "\n".join(cli.format_table(result))
    assert "[1 skipped]" in table
    # The tab's timeline marks it.
    from tb_stability.events import reader
    from tb_stability.server import payloads

    run = reader.load_logdir(logdir)["guarded"]
    timeline = payloads.timeline(run, anomalies, 64)
    assert timeline["guard_skipped_total"] == 1
    # ... and the cause card's payload carries the count.
    assert payloads.anomaly_detail(run, bad[0])["anomaly"]["guard_skipped"] == 1
    assert sum(timeline["guard_skipped"]) == 1


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_monitor_guard_on_a_clean_run_changes_nothing(mode, tmp_path):
    x, y = _data(7, steps=20)
    plain, guarded = str(tmp_path / "plain"), str(tmp_path / "guarded")
    _monitor_run(plain, x, y, 7, mode, steps=20)
    _monitor_run(guarded, x, y, 7, mode, steps=20, skip_nonfinite=True,
                 skip_outlier_z=6.0)
    _, a = _rows(plain)
    _, b = _rows(guarded)
    assert np.all(b[:, G["guard_skip"]] == metadata.GUARD_APPLIED)
    for name in ("loss", "grad_norm", "update_ratio", "weight_norm"):
        np.testing.assert_allclose(b[:, G[name]], a[:, G[name]], rtol=1e-5,
                                   err_msg=name)
