"""`Monitor.record` called from Python (after a compiled train step, the
README's first custom loop) writes what `record` inside the `tf.function`
writes, and compiles its work once instead of running it op by op.
"""

import json

import keras
import numpy as np
import tensorflow as tf
from conftest import global_table, read_run

import tb_stability
from tb_stability import metadata

STEPS = 120
BATCH = 32


def _train(logdir, in_graph, spike_at=70, last_batch=None):
    """The same tiny run, `record` eager or inside the step; returns the
    monitor. A loss spike (a batch of targets scaled up) at `spike_at` makes the
    detector keep detail rows; `last_batch` shortens the last batch.
    """
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_all = rng.normal(size=(STEPS, BATCH, 6)).astype("float32")
    y_all = rng.normal(size=(STEPS, BATCH, 1)).astype("float32")
    y_all[spike_at] *= 100.0
    model = keras.Sequential([keras.Input((6,)),
                              keras.layers.Dense(16, activation="tanh",
                                                 name="hidden"),
                              keras.layers.Dense(1, name="out")], name="tiny")
    opt = keras.optimizers.Adam(1e-2)
    variables = model.trainable_variables
    monitor = tb_stability.Monitor(logdir, optimizer=opt, variables=variables,
                                   model=model, window=32)

    def body(step, x, y):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss = tf.reduce_mean(tf.square(pred - y))
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        return loss, grads, pred

    @tf.function
    def graph_step(step, x, y):
        loss, grads, pred = body(step, x, y)
        monitor.record(step, loss, grads, batch_size=tf.shape(x)[0],
                       inputs=x, targets=y, predictions=pred)
        return loss

    plain_step = tf.function(body)
    with monitor:
        for step in range(STEPS):
            x, y = x_all[step], y_all[step]
            if last_batch is not None and step == STEPS - 1:
                x, y = x[:last_batch], y[:last_batch]
            if in_graph:
                graph_step(tf.constant(step, tf.int64), x, y)
            else:
                loss, grads, pred = plain_step(tf.constant(step, tf.int64), x, y)
                monitor.record(step, loss, grads, batch_size=len(x), inputs=x,
                               targets=y, predictions=pred)
    return monitor


def _events(run):
    """{tag: {step: array}} of every tb_stability series but run_info."""
    return {tag: dict(events) for tag, events in run.items()
            if tag not in ("__metadata__", metadata.TAG_RUN_INFO)}


def _run_info(run):
    (_, value), = run[metadata.TAG_RUN_INFO]
    return json.loads(value.item())


def test_eager_record_writes_the_rows_of_in_graph_record(tmp_path):
    eager_dir, graph_dir = str(tmp_path / "eager"), str(tmp_path / "graph")
    _train(eager_dir, in_graph=False)
    monitor = _train(graph_dir, in_graph=True)
    # record inside the step: the recorder's graph is traced once, not once
    # per trace of the step.
    assert monitor.recorder._traced_push.experimental_get_tracing_count() == 1
    eager, graph = read_run(eager_dir), read_run(graph_dir)
    assert _run_info(eager) == _run_info(graph)
    steps_e, rows_e = global_table(eager)
    steps_g, rows_g = global_table(graph)
    assert list(steps_e) == list(steps_g) == list(range(STEPS))
    np.testing.assert_allclose(rows_e, rows_g, rtol=1e-5, atol=1e-7)
    flags = rows_g[:, metadata.GLOBAL["flags"]]
    assert np.nansum(flags) > 0  # the spike was flagged: detail beyond the first steps
    events_e, events_g = _events(eager), _events(graph)
    assert sorted(events_e) == sorted(events_g)
    for tag in events_g:
        assert sorted(events_e[tag]) == sorted(events_g[tag]), tag
        for step, value in events_g[tag].items():
            np.testing.assert_allclose(events_e[tag][step], value, rtol=1e-5,
                                       atol=1e-7, err_msg=f"{tag} at {step}")
    assert max(events_g[metadata.TAG_LAYERS_DETAIL]) > 50


def test_eager_record_traces_once(tmp_path):
    """Step numbers, losses and batch sizes are arguments, not constants of
    the trace, and the batch axis of the data is relaxed: one trace for the
    whole run, a last batch of another size included.
    """
    monitor = _train(str(tmp_path / "a"), in_graph=False)
    assert monitor._push_fn.traces == 1
    monitor = _train(str(tmp_path / "b"), in_graph=False, last_batch=5)
    assert monitor._push_fn.traces == 1  # the batch axis is relaxed
    steps, rows = global_table(read_run(str(tmp_path / "b")))
    assert list(steps) == list(range(STEPS))
    assert rows[-1, metadata.GLOBAL["batch_size"]] == 5


def test_flush_after_each_compiled_call_writes_once_per_window(tmp_path):
    """Under jit_compile, `monitor.flush()` after every call writes whole
    windows only (the rings are read once per window), and `close` the rest.
    """
    logdir = str(tmp_path / "xla")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(BATCH, 6)).astype("float32"))
    y = tf.constant(rng.normal(size=(BATCH, 1)).astype("float32"))
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1)])
    opt = keras.optimizers.Adam(1e-2)
    variables = model.trainable_variables
    monitor = tb_stability.Monitor(logdir, optimizer=opt, variables=variables,
                                   window=16, flush_secs=3600)

    @tf.function(jit_compile=True)
    def step_fn(step):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        monitor.record(step, loss, grads)

    for step in range(40):
        step_fn(tf.constant(step, tf.int64))
        monitor.flush()
    rec = monitor.recorder
    assert rec._seen == 32  # rows read from the rings: two whole windows
    assert not rec.due()
    rec._out.flush()  # what was written, on disk
    windows = [len(table) for _, table in
               read_run(logdir).get(metadata.TAG_GLOBAL, [])]
    assert windows == [16, 16]
    monitor.close()
    steps, _ = global_table(read_run(logdir))
    assert list(steps) == list(range(40))


def test_eager_record_with_sparse_and_missing_gradients(tmp_path):
    """Embedding gradients (`IndexedSlices`), a variable without gradient
    and a dict of inputs go through the flat compiled call: one trace for
    batches of different sizes, and every step's gradient norms as the
    gradients give them.
    """
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    tokens = keras.Input((5,), dtype="int32", name="tokens")
    side = keras.Input((3,), name="side")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(50, 4)(tokens))
    hidden = keras.layers.Concatenate()([embedded, side])
    out = keras.layers.Dense(1)(hidden)
    model = keras.Model({"tokens": tokens, "side": side}, out)
    unused = tf.Variable(tf.ones([2, 2]), name="unused")
    variables = model.trainable_variables + [unused]
    opt = keras.optimizers.Adam(1e-2)
    logdir = str(tmp_path / "sparse")
    monitor = tb_stability.Monitor(logdir, optimizer=opt, variables=variables,
                                   window=16, on_anomaly=None)

    @tf.function
    def step_fn(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        grads = tape.gradient(loss, variables)
        opt.apply_gradients([(g, v) for g, v in zip(grads, variables)
                             if g is not None])
        return loss, grads

    norms = []
    sizes = [32] * 20 + [7]
    for step, n in enumerate(sizes):
        x = {"tokens": rng.integers(0, 50, size=(n, 5)).astype("int32"),
             "side": rng.normal(size=(n, 3)).astype("float32")}
        y = rng.normal(size=(n, 1)).astype("float32")
        loss, grads = step_fn(x, y)
        assert isinstance(grads[0], tf.IndexedSlices) and grads[-1] is None
        norms.append(np.sqrt(sum(float(tf.reduce_sum(tf.square(
            tf.convert_to_tensor(g)))) for g in grads if g is not None)))
        monitor.record(step, loss, grads, batch_size=n, inputs=x, targets=y)
    monitor.close()
    assert monitor._push_fn.traces == 1
    steps, rows = global_table(read_run(logdir))
    assert list(steps) == list(range(len(sizes)))
    np.testing.assert_allclose(rows[:, metadata.GLOBAL["grad_norm"]], norms,
                               rtol=1e-5)
    assert rows[-1, metadata.GLOBAL["batch_size"]] == 7
    detail = read_run(logdir)[metadata.TAG_LAYERS_DETAIL][0][1]
    grad_norm = detail[:, metadata.STAT["grad_norm"]]
    assert np.isfinite(grad_norm[:-1]).all() and np.isnan(grad_norm[-1])


def test_in_graph_record_with_python_steps_traces_once(tmp_path):
    """A step counted in Python inside the user's function (an unrolled
    loop) is an argument of the recorder's trace, not part of its key.
    """
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    opt = keras.optimizers.Adam(1e-2)
    variables = model.trainable_variables
    monitor = tb_stability.Monitor(str(tmp_path / "run"), optimizer=opt,
                                   variables=variables, on_anomaly=None)
    x = tf.ones([4, 3])

    @tf.function
    def three_steps():
        for i in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(x) - 1.0))
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables))
            monitor.record(i, loss, grads, batch_size=4)

    three_steps()
    monitor.close()
    assert monitor.recorder._traced_push.experimental_get_tracing_count() == 1
    steps, _ = global_table(read_run(str(tmp_path / "run")))
    assert list(steps) == [0, 1, 2]
