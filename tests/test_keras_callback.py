"""StabilityCallback as a user would use it: one line in model.fit."""

import logging
import os

import keras
import numpy as np
import pytest
from conftest import G, S, detail_by_step, event_files, global_table, read_run
from tensorboard.compat.proto import summary_pb2

import tb_stability
from tb_stability import metadata

ADAM_COLS = ["mu_rms", "nu_sqrt_rms", "rms_ratio", "eff_step_max",
             "sqrt_nu_over_eps_median"]


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = (x @ rng.normal(size=(6, 1))).astype("float32")
    return x, y


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(16, activation="relu", name="d1"),
        keras.layers.Dense(1, name="d2"),
    ], name="net")


def _fit(logdir, optimizer="adam", epochs=2, **compile_kwargs):
    x, y = _data()
    model = _model()
    model.compile(optimizer=optimizer, loss="mse", **compile_kwargs)
    cb = tb_stability.keras.StabilityCallback(logdir)
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[cb])
    return model, cb


def test_tags_data_class_and_steps(logdir):
    _fit(logdir, epochs=2)  # 16 steps
    assert len(event_files(logdir)) == 1  # one writer, no spurious files
    run = read_run(logdir)
    md = run.pop("__metadata__")
    assert set(run) == {
        metadata.TAG_RUN_INFO, metadata.TAG_GLOBAL, metadata.TAG_LAYERS_WINDOW,
        metadata.TAG_LAYERS_DETAIL, metadata.TAG_INPUT_GRAD_ROWS,
        metadata.TAG_INPUTS_WINDOW, metadata.TAG_INPUTS_DETAIL,  # from compute_loss
    }
    for tag, meta in md.items():
        assert meta.data_class == summary_pb2.DATA_CLASS_TENSOR, tag
        content = metadata.parse_plugin_metadata(meta.plugin_data.content)
        assert content["series"] == metadata.SERIES_BY_TAG[tag]
    steps, rows = global_table(run)
    assert list(steps) == list(range(16))
    assert np.all(np.isfinite(rows[:, G["loss"]]))
    assert sorted(detail_by_step(run)) == list(range(16))  # first 50 steps
    for _, value in run[metadata.TAG_LAYERS_DETAIL]:
        assert value.shape == (4, len(metadata.STAT_COLUMNS))
    (window_step, window), = run[metadata.TAG_LAYERS_WINDOW]
    assert window_step == 15 and window.shape == (4, len(S), 2)
    grad_rows = dict(run[metadata.TAG_INPUT_GRAD_ROWS])
    assert grad_rows[0].shape == (6,)  # one norm per input feature
    import json
    (_, info), = run[metadata.TAG_RUN_INFO]
    info = json.loads(info.item().decode())
    assert [v["name"] for v in info["variables"]] == [
        "net/d1/kernel", "net/d1/bias", "net/d2/kernel", "net/d2/bias"]
    assert info["optimizer"]["name"] == "Adam" and info["optimizer"]["adam"]
    assert info["input_kernel"] == "net/d1/kernel"


def test_loss_is_per_step_not_the_running_mean(logdir):
    """A one-batch spike stays on its step (Keras's logs smear it)."""
    x, y = _data(n=320)
    y[160:192] *= 50.0  # batch 5 of each epoch is an outlier batch
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    cb = tb_stability.keras.StabilityCallback(logdir)
    hist = model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0,
                     callbacks=[cb])
    steps, rows = global_table(read_run(logdir))
    loss = rows[:, G["loss"]]
    assert int(np.argmax(loss)) == 5
    assert loss[5] > 100 * np.median(loss)
    assert hist.history["loss"][0] < loss[5] / 5  # the epoch mean smears it


class CustomStep(keras.Sequential):
    """Keras's guide to customising fit: compute_loss, then optimizer.apply
    (no optimizer.scale_loss)."""

    def train_step(self, data):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        return {"loss": loss}


def test_custom_train_step_without_scale_loss_records_its_loss(logdir):
    """The loss comes from the model's compute_loss: not NaN, no false anomaly."""
    x, y = _data()
    keras.utils.set_random_seed(0)
    model = CustomStep([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                        keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(x, y, batch_size=32, epochs=4, verbose=0,
              callbacks=[tb_stability.keras.StabilityCallback(logdir)])
    steps, rows = global_table(read_run(logdir))
    loss = rows[:, G["loss"]]
    assert len(steps) == 32 and np.all(np.isfinite(loss))
    assert loss[-1] < loss[0]
    (run,) = tb_stability.analysis.report_logdir(logdir)["runs"]
    assert all(a["kind"] != "nonfinite" for a in run["anomalies"]), run["anomalies"]


def test_two_fit_calls_continue_steps(logdir):
    x, y = _data()
    model = _model()
    model.compile(optimizer="adam", loss="mse")
    cb = tb_stability.keras.StabilityCallback(logdir)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[cb])
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[cb])
    # A new callback instance on the same model continues too.
    cb2 = tb_stability.keras.StabilityCallback(logdir)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[cb2])
    steps = np.concatenate([
        global_table(read_run(os.path.dirname(f)))[0] for f in event_files(logdir)[:1]
    ])
    all_steps = np.concatenate([
        global_table(read_run(logdir))[0]
    ])
    assert list(all_steps) == list(range(24))
    assert len(steps) == 24


def test_validation_steps_per_execution_and_jit(logdir):
    x, y = _data()
    model = _model()
    model.compile(optimizer="adam", loss="mse", steps_per_execution=3,
                  jit_compile=True)
    cb = tb_stability.keras.StabilityCallback(logdir)
    model.fit(x, y, batch_size=32, epochs=2, validation_data=_data(64, 1),
              verbose=0, callbacks=[cb])
    steps, rows = global_table(read_run(logdir))
    assert list(steps) == list(range(16))
    assert np.all(np.isfinite(rows[:, G["loss"]]))
    assert np.all(rows[:, G["batch_size"]] == 32)
    assert np.all(np.isfinite(rows[:, G["rms_ratio_max"]]))


@pytest.mark.parametrize("name", ["adam", "adamw", "nadam"])
def test_adam_family_full_internals(name, logdir):
    opt = {"adam": keras.optimizers.Adam(1e-3),
           "adamw": keras.optimizers.AdamW(1e-3, weight_decay=0.01),
           "nadam": keras.optimizers.Nadam(1e-3)}[name]
    _fit(logdir, optimizer=opt, epochs=1)
    detail = detail_by_step(read_run(logdir))
    for col in ADAM_COLS + ["update_ratio"]:
        assert np.all(np.isfinite(detail[3][:, S[col]])), col


@pytest.mark.parametrize("name", ["sgd", "rmsprop"])
def test_other_optimizers_gradients_and_weights_only(name, logdir, caplog):
    from tb_stability.record import runtime

    runtime.warn_once._seen.clear()
    with caplog.at_level(logging.WARNING, logger="tb_stability"):
        _fit(logdir, optimizer=name, epochs=2)
    warnings = [r for r in caplog.records if "no Adam moments" in r.getMessage()]
    assert len(warnings) == 1
    detail = detail_by_step(read_run(logdir))
    d = detail[2]
    assert np.all(np.isfinite(d[:, S["grad_norm"]]))
    assert np.all(np.isfinite(d[:, S["weight_norm"]]))
    assert np.all(np.isfinite(d[:, S["update_ratio"]]))  # measured exactly
    for col in ADAM_COLS:
        assert np.all(np.isnan(d[:, S[col]])), col


def test_mixed_precision_loss_scale(logdir):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model, _ = _fit(logdir, optimizer="adam", epochs=1)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    run = read_run(logdir)
    steps, rows = global_table(run)
    assert list(steps) == list(range(8))
    scale = rows[:, G["loss_scale"]]
    assert scale[0] == 32768.0  # Keras's initial dynamic scale
    # A step whose scaled gradients overflowed float16 is recorded as
    # non-finite and the next step runs at half the scale (the step was
    # skipped by the LossScaleOptimizer); every other step keeps its scale.
    bad = ~np.isfinite(rows[:, G["grad_norm"]])
    for i in range(len(scale) - 1):
        assert scale[i + 1] == (scale[i] / 2 if bad[i] else scale[i])
    assert rows[bad, G["nonfinite"]].min(initial=1) > 0
    # Finite gradients are recorded unscaled: comparable with float32.
    assert np.all(rows[~bad, G["grad_norm"]] < 1e3) and (~bad).sum() >= 4
    detail = detail_by_step(run)
    good = int(np.flatnonzero(~bad)[0])
    assert np.all(np.isfinite(detail[good][:, S["rms_ratio"]]))


@pytest.mark.parametrize(
    "method, error",
    [("push", RuntimeError("planted failure")),  # in the training step
     ("_process", OSError("disk full"))],  # in the host-side writing
)
def test_failure_never_stops_training(method, error, logdir, caplog, monkeypatch):
    from tb_stability.record import recorder as _recorder

    def broken(self, *a, **k):
        raise error

    monkeypatch.setattr(_recorder.Recorder, method, broken)
    with caplog.at_level(logging.WARNING, logger="tb_stability"):
        model, _ = _fit(logdir, epochs=3)
    assert model.optimizer.iterations.numpy() == 24  # training went on
    assert sum(str(error) in r.getMessage() for r in caplog.records) == 1


def test_training_is_unchanged_and_model_saves(tmp_path):
    """Instrumentation only reads: same weights as an unmonitored run, and
    the optimizer still serialises as what it is.
    """
    x, y = _data()
    results = []
    for monitored in (False, True):
        model = _model(seed=3)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        cbs = [tb_stability.keras.StabilityCallback(str(tmp_path / "run"))] \
            if monitored else []
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
                  callbacks=cbs)
        results.append([w.copy() for w in model.get_weights()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is keras.optimizers.Adam
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
