"""`stats_every`: the per-variable statistics other than the gradient norms
are computed every few steps, and on every step where it matters.
"""

import json

import keras
import numpy as np
import pytest
from conftest import G, S, detail_by_step, global_table, read_run

import tb_stability
from tb_stability import metadata

STEPS = 600
BATCH = 8
SPIKE = 400


def _train(logdir, spike=None, nan_at=None, **callback_kwargs):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * BATCH, 8)).astype("float32")
    y = x @ rng.normal(size=(8, 1)).astype("float32")
    if spike is not None:
        y[spike * BATCH:(spike + 1) * BATCH] *= 1000.0  # one bad batch
    if nan_at is not None:
        x[nan_at * BATCH] = np.nan
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)),
                              keras.layers.Dense(16, activation="tanh"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    cb = tb_stability.keras.StabilityCallback(logdir, **callback_kwargs)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[cb])
    run = read_run(logdir)
    steps, rows = global_table(run)
    assert list(steps) == list(range(STEPS))
    return run, rows


def _computed(rows):
    return np.isfinite(rows[:, G["rms_ratio_max"]])


def test_default_computes_every_eighth_step_and_the_first_ones(tmp_path):
    run, rows = _train(str(tmp_path / "run"))
    computed = _computed(rows)
    every = np.arange(STEPS)
    assert computed[:50].all()  # the first steps, in full
    assert computed[every % 8 == 0].all()
    # A healthy run computes few steps beyond the grid.
    off_grid = computed[50:] & (every[50:] % 8 != 0)
    assert off_grid.mean() < 0.1, off_grid.mean()
    assert (~computed[50:]).sum() > 0.8 * (STEPS - 50) * 7 / 8
    # The gradient norms, the loss and the learning rate: every step.
    for name in ("loss", "grad_norm", "learning_rate", "nonfinite"):
        assert np.isfinite(rows[:, G[name]]).all(), name
    # Steps not computed: NaN where a statistic was not measured.
    for name in ("update_ratio", "weight_norm", "eff_step_max"):
        assert np.isnan(rows[~computed, G[name]]).all(), name
        assert np.isfinite(rows[computed, G[name]]).all(), name
    (_, info), = run[metadata.TAG_RUN_INFO]
    assert json.loads(info.item().decode())["stats_every"] == 8
    # Window aggregates are over the measured steps only (not NaN).
    for _, window in run[metadata.TAG_LAYERS_WINDOW]:
        assert np.isfinite(window[:, S["rms_ratio"], :]).all()
        assert np.isfinite(window[:, S["grad_norm"], :]).all()


def test_a_spike_and_the_steps_after_it_are_computed(tmp_path):
    run, rows = _train(str(tmp_path / "run"), spike=SPIKE)
    flags = rows[:, G["flags"]].astype(int)
    assert flags[SPIKE] & metadata.FLAG_LOSS_JUMP
    computed = _computed(rows)
    assert computed[SPIKE:SPIKE + 9].all()  # the spike and detail_after
    detail = detail_by_step(run)
    for step in range(SPIKE, SPIKE + 9):
        row = detail[step]
        for name in ("rms_ratio", "mu_rms", "nu_sqrt_rms", "update_ratio"):
            assert np.isfinite(row[:, S[name]]).all(), (step, name)
    # Before it: gradient norms every step, Adam's columns on the grid.
    for step in range(SPIKE - 32, SPIKE):
        row = detail[step]
        assert np.isfinite(row[:, S["grad_norm"]]).all()
        assert np.isfinite(row[:, S["rms_ratio"]]).all() == bool(computed[step])
    # The bad batch's gradients jumped on every layer at the spike.
    jump = detail[SPIKE][:, S["grad_norm"]] / detail[SPIKE - 1][:, S["grad_norm"]]
    assert np.all(jump > 10)


def test_a_nonfinite_step_is_counted_exactly(tmp_path):
    run, rows = _train(str(tmp_path / "run"), nan_at=300)
    bad = np.flatnonzero(rows[:, G["nonfinite"]] > 0)
    assert bad[0] == 300  # 300 is off the grid of 8: computed for it
    assert rows[300, G["flags"]].astype(int) & metadata.FLAG_NONFINITE
    detail = detail_by_step(run)
    # One NaN input makes every gradient entry NaN: counted, not estimated.
    assert list(detail[300][:, S["grad_nonfinite"]]) == [8 * 16, 16, 16, 1]


@pytest.mark.parametrize("kwargs", [{"stats_every": 1}, {"full_detail": True}])
def test_every_step_on_request(tmp_path, kwargs):
    run, rows = _train(str(tmp_path / "run"), **kwargs)
    assert _computed(rows).all()


def test_the_tab_serves_the_spike_with_every_statistic(tmp_path):
    """Through TensorBoard: the anomaly's evidence says which statistics are
    sparse, and from the spike on every step's Adam statistics are there.
    """
    from conftest import no_bare_nan, tensorboard_app
    from werkzeug import test as wtest

    _train(str(tmp_path / "run"), spike=SPIKE)
    app, _ = tensorboard_app(tmp_path)
    client = wtest.Client(app)
    base = "/data/plugin/tb_stability"
    timeline = no_bare_nan(client.get(base + "/timeline", query_string={
        "run": "run", "width": "200"}).data)
    (spike,) = [a for a in timeline["anomalies"] if a["peak_step"] == SPIKE]
    data = no_bare_nan(client.get(base + "/anomaly", query_string={
        "run": "run", "step": str(SPIKE)}).data)
    ev = data["evidence"]
    assert ev["stats_every"] == 8 and ev["resolution"] == "step"
    at = ev["steps"].index(SPIKE)
    measured = lambda v: isinstance(v, float)  # noqa: E731 (NaN is "NaN")
    for row in ev["stats"]["rms_ratio"]:
        assert all(map(measured, row[at:]))  # measured from the spike on
        assert not all(map(measured, row[:at]))  # sparse before it
    for row in ev["stats"]["grad_norm"]:
        assert all(map(measured, row))  # every step
