"""The data's and the model's own evidence: recorded with no user code.

Per step: non-finite inputs and targets, the targets' and the predictions'
range (global columns); per input feature: the non-finite count (inputs
ring); once: the model's output layer, loss and dtypes (run_info "model").
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tb_stability
from tb_stability import metadata
from tb_stability.events.reader import load_logdir

BATCH, FEATURES, BAD_BATCH, BAD_FEATURE = 32, 6, 5, 2
NONFINITE = metadata.INPUT_COLUMNS.index("nonfinite")


def _run(logdir):
    runs = load_logdir(logdir)
    assert len(runs) == 1
    return next(iter(runs.values())) if isinstance(runs, dict) else runs[0]


def _binary_data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    y = (rng.random((n, 1)) > 0.5).astype("float32")
    return x, y


def _sigmoid_model():
    # A linear hidden layer: oneDNN's fused MatMul+Relu turns a NaN into 0
    # on some CPUs (not on others), which would keep the planted NaN from
    # reaching the predictions there.
    return keras.Sequential([keras.Input((FEATURES,)),
                             keras.layers.Dense(8, name="hidden"),
                             keras.layers.Dense(1, activation="sigmoid", name="out")],
                            name="binary")


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "jit"])
def test_fit_records_nonfinite_input_targets_and_predictions(logdir, jit):
    keras.utils.set_random_seed(0)
    x, y = _binary_data()
    x[BAD_BATCH * BATCH + 3, BAD_FEATURE] = np.nan  # one NaN in one feature
    model = _sigmoid_model()
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy", jit_compile=jit)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              validation_data=(x[:64], y[:64]),  # test_step must not leak in
              callbacks=[tb_stability.keras.StabilityCallback(logdir)])
    run = _run(logdir)
    steps = len(x) // BATCH
    assert list(run.steps) == list(range(steps))
    # Non-finite inputs: that step only, and the feature named.
    expected = np.zeros(steps)
    expected[BAD_BATCH] = 1
    np.testing.assert_array_equal(run.col("input_nonfinite"), expected)
    stats = run.inputs_at(BAD_BATCH)
    assert stats is not None and stats.shape == (FEATURES, len(metadata.INPUT_COLUMNS))
    assert list(np.flatnonzero(stats[:, NONFINITE])) == [BAD_FEATURE]
    assert np.all(np.isfinite(stats[:, :NONFINITE]))  # finite entries only
    batch = x[BAD_BATCH * BATCH:(BAD_BATCH + 1) * BATCH, BAD_FEATURE]
    np.testing.assert_allclose(
        stats[BAD_FEATURE, metadata.INPUT_COLUMNS.index("mean")],
        np.nanmean(batch), rtol=1e-5)
    # Targets: every step's batch, exactly.
    np.testing.assert_array_equal(run.col("target_nonfinite"), 0)
    for step in range(steps):
        yb = y[step * BATCH:(step + 1) * BATCH]
        assert run.col("target_min")[step] == yb.min()
        assert run.col("target_max")[step] == yb.max()
        np.testing.assert_allclose(run.col("target_mean")[step], yb.mean(), rtol=1e-6)
    # Predictions of a sigmoid: inside (0, 1) while the weights are finite.
    before = slice(0, BAD_BATCH + 1)
    for name in ("pred_min", "pred_max", "pred_mean"):
        values = run.col(name)[before]
        assert np.all(np.isfinite(values)) and np.all((values > 0) & (values < 1)), name
    assert np.all(run.col("pred_min")[before] <= run.col("pred_mean")[before])
    assert np.all(run.col("pred_mean")[before] <= run.col("pred_max")[before])
    # The NaN reached the weights: later predictions are all NaN, not measured.
    assert np.isnan(run.col("pred_mean")[-1])
    assert run.info["input_features"] == FEATURES
    assert run.info["input_columns"] == list(metadata.INPUT_COLUMNS)
    assert run.model["output"] == {"layer": "out", "class": "Dense",
                                   "activation": "sigmoid", "units": 1}


def _fit_model_info(logdir, model, loss, y):
    x = np.random.default_rng(1).normal(size=(64, FEATURES)).astype("float32")
    model.compile(keras.optimizers.SGD(0.01), loss)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0,
              callbacks=[tb_stability.keras.StabilityCallback(logdir)])
    return _run(logdir)


def test_run_info_model_softmax_over_one_unit_and_string_loss(logdir):
    model = keras.Sequential([keras.Input((FEATURES,)),
                              keras.layers.Dense(1, activation="softmax", name="prob")])
    y = (np.arange(64) % 2).astype("float32")[:, None]
    run = _fit_model_info(logdir, model, "binary_crossentropy", y)
    assert run.model["output"]["layer"] == "prob"
    assert run.model["output"]["activation"] == "softmax"
    assert run.model["output"]["units"] == 1
    assert run.model["loss"] == {"class": "BinaryCrossentropy",
                                 "name": "binary_crossentropy",
                                 "reduction": "sum_over_batch_size",
                                 "from_logits": False}
    assert run.model["dtypes"] == {"variable": "float32", "compute": "float32"}
    assert run.optimizer["variable_dtype"] == "float32"
    # Softmax over one unit is always 1: the predictions say so every step.
    np.testing.assert_allclose(run.col("pred_min"), 1.0)
    np.testing.assert_allclose(run.col("pred_max"), 1.0)


def test_run_info_model_loss_instance_from_logits_sum(logdir):
    x = keras.Input((FEATURES,))
    h = keras.layers.Dense(4, name="hidden")(x)
    out = keras.layers.Activation("linear", name="logits")(h)
    model = keras.Model(x, out)
    y = np.eye(4, dtype="float32")[np.arange(64) % 4]
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, reduction="sum")
    run = _fit_model_info(logdir, model, loss, y)
    assert run.model["output"] == {"layer": "logits", "class": "Activation",
                                   "activation": "linear", "units": 4}
    assert run.model["loss"]["class"] == "CategoricalCrossentropy"
    assert run.model["loss"]["reduction"] == "sum"
    assert run.model["loss"]["from_logits"] is True
    # One-hot targets: 0 and 1, mean 1/4.
    np.testing.assert_array_equal(run.col("target_min"), 0.0)
    np.testing.assert_array_equal(run.col("target_max"), 1.0)
    np.testing.assert_allclose(run.col("target_mean"), 0.25)


def test_fit_multi_input_counts_every_input(logdir):
    """A dict of inputs: non-finite entries counted over all of them, the
    first float input recorded per feature."""
    keras.utils.set_random_seed(0)
    a_in, b_in = keras.Input((3,), name="a"), keras.Input((5,), name="b")
    h = keras.layers.Concatenate()([a_in, b_in])
    model = keras.Model({"a": a_in, "b": b_in}, keras.layers.Dense(1, name="out")(h))
    rng = np.random.default_rng(0)
    xa = rng.normal(size=(64, 3)).astype("float32")
    xb = rng.normal(size=(64, 5)).astype("float32")
    xb[40, 4] = np.inf  # second batch, second input
    y = rng.normal(size=(64, 1)).astype("float32")
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.fit({"a": xa, "b": xb}, y, batch_size=32, shuffle=False, verbose=0,
              callbacks=[tb_stability.keras.StabilityCallback(logdir)])
    run = _run(logdir)
    np.testing.assert_array_equal(run.col("input_nonfinite"), [0, 1])
    assert run.info["input_features"] == 3
    np.testing.assert_allclose(run.col("target_mean"), [y[:32].mean(), y[32:].mean()],
                               rtol=1e-5)
    assert run.model["loss"]["class"] == "MeanSquaredError"
    assert run.model["output"]["activation"] == "linear"


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "function"])
def test_monitor_records_targets_predictions_and_model(logdir, graph):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 16, FEATURES)).astype("float32")
    labels = rng.integers(0, 3, size=(4, 16)).astype("int32")  # sparse targets
    labels[2, 7] = 2
    model = keras.Sequential([keras.Input((FEATURES,)),
                              keras.layers.Dense(3, activation="softmax", name="probs")])
    opt = keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    variables = model.trainable_variables
    monitor = tb_stability.Monitor(logdir, optimizer=opt, variables=variables, model=model)

    def step_fn(step, xb, yb):
        with tf.GradientTape() as tape:
            pred = model(xb, training=True)
            loss = loss_fn(yb, pred)
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        monitor.record(step, loss, grads, inputs=xb, targets=yb, predictions=pred)
        return pred

    if graph:
        step_fn = tf.function(step_fn)
    preds = [step_fn(tf.constant(s, tf.int64), x[s], labels[s]).numpy() for s in range(4)]
    monitor.close()
    run = _run(logdir)
    np.testing.assert_array_equal(run.col("target_min"), labels.min(axis=1))
    np.testing.assert_array_equal(run.col("target_max"), labels.max(axis=1))
    np.testing.assert_allclose(run.col("target_mean"), labels.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(run.col("pred_min"), [p.min() for p in preds], rtol=1e-5)
    np.testing.assert_allclose(run.col("pred_max"), [p.max() for p in preds], rtol=1e-5)
    np.testing.assert_allclose(run.col("pred_mean"), 1 / 3, rtol=1e-5)  # rows sum to 1
    np.testing.assert_array_equal(run.col("input_nonfinite"), 0)
    np.testing.assert_array_equal(run.col("target_nonfinite"), 0)
    assert run.model["loss"] is None  # a custom loop's loss is not known
    assert run.model["output"] == {"layer": "probs", "class": "Dense",
                                   "activation": "softmax", "units": 3}
    assert run.model["dtypes"] == {"variable": "float32", "compute": "float32"}
    stats = run.inputs_at(0)
    np.testing.assert_allclose(stats[:, metadata.INPUT_COLUMNS.index("max")],
                               x[0].max(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(stats[:, NONFINITE], 0)


def test_monitor_without_data_or_model(logdir):
    """Nothing given: the data columns are NaN, dtypes from the variables."""
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(2)])
    opt = keras.optimizers.SGD(0.1)
    variables = model.trainable_variables
    x = np.ones((8, FEATURES), np.float32)
    with tb_stability.Monitor(logdir, optimizer=opt, variables=variables) as monitor:
        for step in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(x)))
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables))
            monitor.record(step, loss, grads)
    run = _run(logdir)
    for name in metadata.DATA_COLUMNS:
        assert np.all(np.isnan(run.col(name))), name
    assert run.model == {"output": None, "loss": None,
                         "dtypes": {"variable": "float32", "compute": None}}
    assert len(run.inputs_steps) == 0


def _write_old_format_run(logdir):
    """A run as written before the data columns and `input_columns`: 11
    global columns, 4 input columns, no "model" in run_info."""
    old_globals = list(metadata.GLOBAL_COLUMNS[:metadata.GLOBAL_COLUMNS.index(
        "input_nonfinite")])
    info = {"format_version": 1, "optimizer": {"name": "SGD", "adam": False},
            "variables": [{"name": "dense/kernel", "shape": [3, 2]}],
            "stat_columns": list(metadata.STAT_COLUMNS),
            "global_columns": old_globals,
            "window_aggregates": list(metadata.WINDOW_AGGREGATES),
            "input_features": 3}
    rows = np.zeros([4, 1 + len(old_globals)], np.float32)
    rows[:, 0] = np.arange(-3, 1)
    rows[:, 1 + old_globals.index("loss")] = [1.0, 0.9, 0.8, 0.7]
    detail = np.arange(12, dtype=np.float32).reshape(3, 4)
    window = detail + 100

    def write(tag, value, step):
        series = metadata.SERIES_BY_TAG[tag]
        tf.summary.write(tag, tf.constant(value), step=step,
                         metadata=metadata.create_summary_metadata(series))

    with tf.summary.create_file_writer(logdir).as_default():
        write(metadata.TAG_RUN_INFO, json.dumps(info), 0)
        write(metadata.TAG_INPUTS_DETAIL, detail, 0)
        write(metadata.TAG_GLOBAL, rows, 3)
        write(metadata.TAG_INPUTS_WINDOW, window, 3)
    return detail, window


def test_old_format_run_still_loads(logdir):
    detail, window = _write_old_format_run(logdir)
    run = _run(logdir)
    np.testing.assert_allclose(run.col("loss"), [1.0, 0.9, 0.8, 0.7])
    for name in metadata.DATA_COLUMNS:
        assert np.all(np.isnan(run.col(name))), name
    assert list(run.inputs_steps) == [0, 3]
    assert list(run.inputs_from_window) == [False, True]
    assert run.inputs.shape == (2, 3, len(metadata.INPUT_COLUMNS))
    np.testing.assert_array_equal(run.inputs[0, :, :NONFINITE], detail)
    np.testing.assert_array_equal(run.inputs[1, :, :NONFINITE], window)
    assert np.all(np.isnan(run.inputs[:, :, NONFINITE]))
    np.testing.assert_array_equal(run.inputs_at(0)[:, :NONFINITE], detail)
    assert run.inputs_at(3) is None  # a window aggregate, not that step's batch
    assert run.model == {}


def test_nonfinite_data_keeps_detail_at_each_onset_only():
    """A stretch of non-finite inputs keeps the detail of its first step (the
    detail span around it), not of every step: masked missing values cost
    one span."""
    from tb_stability.record.recorder import _detail_marks

    g = metadata.GLOBAL
    rows = np.zeros([8, len(metadata.GLOBAL_COLUMNS)], np.float32)
    rows[:, g["input_nonfinite"]] = [0, 2, 2, 0, 0, 1, 1, 1]
    rows[:, g["target_nonfinite"]] = np.nan  # no targets given
    rows[6, g["flags"]] = metadata.FLAG_LOSS_JUMP
    marks, bad = _detail_marks(rows[:6], False)
    assert list(np.flatnonzero(marks)) == [1, 5] and bad
    marks, bad = _detail_marks(rows[6:], bad)  # the stretch goes on
    assert list(np.flatnonzero(marks)) == [0] and bad  # only the flag
