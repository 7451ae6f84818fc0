"""tb_stability.summary: ops in the style of tf.summary.scalar."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import S, read_run
from tensorboard.compat.proto import summary_pb2

from tb_stability import metadata, summary


def _setup():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.Dense(2)])
    opt = keras.optimizers.Adam(1e-2)
    x = tf.random.normal([8, 4])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x)))
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return model, opt, grads


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_ops_write_series_with_metadata(mode, logdir):
    model, opt, grads = _setup()
    variables = model.trainable_variables
    writer = tf.summary.create_file_writer(logdir)

    def write(step):
        stats = summary.variable_stats(grads, variables, opt)
        ok = summary.layers_detail(None, stats, step=step)
        G = len(metadata.GLOBAL_COLUMNS)
        table = tf.constant([[-1.0] + [0.5] * G, [0.0] + [0.25] * G])
        ok2 = summary.global_rows(None, table, step=step)
        ok3 = summary.run_info("custom/run_info", {"hello": "world"}, step=step)
        return ok, ok2, ok3

    if mode == "function":
        write = tf.function(write)
    with writer.as_default():
        assert all(bool(r) for r in write(tf.constant(7, tf.int64)))
    writer.close()
    run = read_run(logdir)
    md = run.pop("__metadata__")
    assert set(run) == {metadata.TAG_LAYERS_DETAIL, metadata.TAG_GLOBAL,
                        "custom/run_info"}
    assert all(m.data_class == summary_pb2.DATA_CLASS_TENSOR for m in md.values())
    (step, stats), = run[metadata.TAG_LAYERS_DETAIL]
    assert step == 7 and stats.shape == (4, len(S))
    np.testing.assert_allclose(
        stats[:, S["grad_norm"]], [np.linalg.norm(g.numpy()) for g in grads],
        rtol=1e-5)
    assert np.all(np.isfinite(stats[:, S["rms_ratio"]]))
    (_, info), = run["custom/run_info"]
    assert json.loads(info.item().decode()) == {"hello": "world"}


def test_without_optimizer_adam_columns_are_nan():
    model, _, grads = _setup()
    stats = summary.variable_stats(grads, model.trainable_variables).numpy()
    assert np.all(np.isfinite(stats[:, S["grad_norm"]]))
    assert np.all(np.isnan(stats[:, S["rms_ratio"]]))


def test_no_writer_returns_false():
    assert not bool(summary.layers_detail(None, tf.zeros([2, len(S)]), step=1))


def test_bad_shapes_and_missing_step(logdir):
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        with pytest.raises(ValueError, match="rank-2"):
            summary.layers_detail(None, tf.zeros([3]), step=1)
        with pytest.raises(ValueError, match=f"last dimension of {1 + len(metadata.GLOBAL_COLUMNS)}"):
            summary.global_rows(None, tf.zeros([2, 5]), step=1)
        with pytest.raises(ValueError, match="No step set"):
            summary.layers_detail(None, tf.zeros([2, len(S)]))
