"""Recorded statistics against a NumPy reimplementation of Keras's Adam."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import G, S, detail_by_step, global_table, read_run

import tb_stability

LR, B1, B2, EPS = 0.01, 0.9, 0.999, 1e-3
STEPS = 7


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5)).astype("float32")
    y = rng.normal(size=(16, 3)).astype("float32")
    return x, y


def _model():
    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(8, activation="tanh"),
        keras.layers.Dense(3),
    ])


def reference(weights0, grads_per_step):
    """Keras Adam in NumPy; returns per-step [V, S] reference stats."""
    w = [np.array(x, np.float64) for x in weights0]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    out = []
    for t, grads in enumerate(grads_per_step, start=1):
        rows = []
        alpha = LR * np.sqrt(1 - B2**t) / (1 - B1**t)
        for i, g in enumerate(grads):
            g = np.array(g, np.float64)
            m[i] = B1 * m[i] + (1 - B1) * g
            v[i] = B2 * v[i] + (1 - B2) * g * g
            old = w[i].copy()
            w[i] = w[i] - alpha * m[i] / (np.sqrt(v[i]) + EPS)
            v_hat = v[i] / (1 - B2**t)
            row = np.full(len(S), np.nan)
            row[S["grad_norm"]] = np.linalg.norm(g)
            row[S["grad_nonfinite"]] = 0
            row[S["weight_norm"]] = np.linalg.norm(w[i])
            row[S["weight_nonfinite"]] = 0
            row[S["update_ratio"]] = np.linalg.norm(w[i] - old) / np.linalg.norm(w[i])
            row[S["mu_rms"]] = np.sqrt(np.mean(m[i] ** 2))
            row[S["nu_sqrt_rms"]] = np.sqrt(np.mean(v_hat))
            row[S["rms_ratio"]] = np.sqrt(np.mean(g * g / np.maximum(v_hat, EPS**2)))
            row[S["eff_step_max"]] = LR * np.sqrt(1 - B2**t) / (np.sqrt(v[i].min()) + EPS)
            flat = np.sort(v_hat.ravel())
            row[S["sqrt_nu_over_eps_median"]] = np.sqrt(flat[len(flat) // 2]) / EPS
            row[S["moment_nonfinite"]] = 0
            rows.append(row)
        out.append(np.array(rows))
    return out, w


def assert_detail_matches(run, ref, rtol, atol):
    """Every step is kept in detail and equals the NumPy reference."""
    detail = detail_by_step(run)
    assert sorted(detail) == list(range(STEPS))
    for step in range(STEPS):
        np.testing.assert_allclose(detail[step], ref[step], rtol=rtol, atol=atol,
                                   err_msg=f"step {step}")


@pytest.mark.parametrize("mode", ["eager", "function", "jit"])
def test_monitor_matches_numpy_adam(mode, logdir):
    x, y = _data()
    model = _model()
    opt = keras.optimizers.Adam(LR, beta_1=B1, beta_2=B2, epsilon=EPS)
    variables = model.trainable_variables
    weights0 = [v.numpy() for v in variables]
    monitor = tb_stability.Monitor(logdir, optimizer=opt, variables=variables)
    grads_seen = []

    def step_fn(step, x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        monitor.record(step, loss, grads, batch_size=tf.shape(x)[0], inputs=x)
        return loss, grads

    if mode != "eager":
        step_fn = tf.function(step_fn, jit_compile=(mode == "jit"))
    losses = []
    with monitor:
        for step in range(STEPS):
            loss, grads = step_fn(tf.constant(step, tf.int64), x, y)
            losses.append(float(loss))
            grads_seen.append([g.numpy() for g in grads])
            if mode == "jit":
                monitor.flush()

    ref, w_ref = reference(weights0, grads_seen)
    for a, b in zip(w_ref, variables):  # the reference is Keras's Adam
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-6)
    run = read_run(logdir)
    assert_detail_matches(run, ref, rtol=2e-4, atol=1e-7)
    steps, rows = global_table(run)
    assert list(steps) == list(range(STEPS))
    np.testing.assert_allclose(rows[:, G["loss"]], losses, rtol=1e-5)
    for step in range(STEPS):
        ref_g = np.sqrt(sum(np.sum(np.square(g)) for g in grads_seen[step]))
        np.testing.assert_allclose(rows[step, G["grad_norm"]], ref_g, rtol=1e-5)
    np.testing.assert_allclose(rows[:, G["learning_rate"]], LR, rtol=1e-6)
    np.testing.assert_allclose(rows[:, G["batch_size"]], 16)
    np.testing.assert_allclose(
        rows[:, G["rms_ratio_max"]],
        [r[[0, 2], S["rms_ratio"]].max() for r in ref], rtol=2e-4,
    )
    assert np.all(rows[:, G["nonfinite"]] == 0)
    # Input statistics per feature: mean, std, min, max of the batch, and
    # its count of non-finite entries.
    inputs = dict(run["tb_stability/inputs_detail"])
    np.testing.assert_allclose(
        inputs[0], np.stack([x.mean(0), x.std(0), x.min(0), x.max(0),
                             np.zeros(x.shape[1])], 1),
        rtol=1e-5, atol=1e-6,
    )


def test_keras_callback_matches_numpy_adam(logdir):
    x, y = _data()
    model = _model()
    opt = keras.optimizers.Adam(LR, beta_1=B1, beta_2=B2, epsilon=EPS)
    model.compile(optimizer=opt, loss="mse")
    weights0 = [v.numpy() for v in model.trainable_variables]
    # Gradients per step, recomputed in the same order (full batch each step).
    probe = _model()
    probe.set_weights(model.get_weights())
    grads_seen, losses = [], []
    popt = keras.optimizers.Adam(LR, beta_1=B1, beta_2=B2, epsilon=EPS)
    for _ in range(STEPS):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(probe(x) - y))
        grads = tape.gradient(loss, probe.trainable_variables)
        popt.apply_gradients(zip(grads, probe.trainable_variables))
        grads_seen.append([g.numpy() for g in grads])
        losses.append(float(loss))
    cb = tb_stability.keras.StabilityCallback(logdir)
    model.fit(x, y, batch_size=16, epochs=STEPS, shuffle=False, verbose=0,
              callbacks=[cb])
    ref, _ = reference(weights0, grads_seen)
    run = read_run(logdir)
    assert_detail_matches(run, ref, rtol=1e-3, atol=1e-6)
    steps, rows = global_table(run)
    np.testing.assert_allclose(rows[:, G["loss"]], losses, rtol=1e-4)
    np.testing.assert_allclose(rows[:, G["batch_size"]], 16)


def test_monitor_in_function_flushes_whole_rows(logdir):
    """The in-graph flush trigger sees every ring write of its step."""
    x, y = _data()
    model = _model()
    opt = keras.optimizers.Adam(LR)
    variables = model.trainable_variables
    monitor = tb_stability.Monitor(logdir, optimizer=opt, variables=variables,
                                   window=2)

    @tf.function
    def step_fn(step):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y)) + 1.0
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        monitor.record(step, loss, grads)

    with monitor:
        for step in range(300):
            step_fn(tf.constant(step, tf.int64))
    steps, rows = global_table(read_run(logdir))
    assert list(steps) == list(range(300))
    assert np.all(rows[:, G["loss"]] > 1.0)  # no row read before written
