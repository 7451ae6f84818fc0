"""Small synthetic training runs, one per cause id, and healthy controls.

Each function `(logdir, seed=0)` trains a run of its own into `logdir` with
tb_stability (well under a minute on CPU) and is deterministic: `seed` picks
the data, the batch order and the initialisation (tests/test_seeds.py checks
that the diagnosis holds over several).
"""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import tb_stability
from demo.data import mnist_like, one_hot


def _classification(n=4096, seed=0):
    x, labels = mnist_like(n, seed=seed)
    return x, one_hot(labels)


def _loop(logdir, model, opt, loss_fn, batches, steps, **record_kw):
    variables = model.trainable_variables
    with tb_stability.Monitor(logdir, optimizer=opt, variables=variables,
                              model=model) as monitor:
        @tf.function
        def step_fn(step, xb, yb):
            with tf.GradientTape() as tape:
                pred = model(xb, training=True)
                loss = loss_fn(pred, yb)
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables))
            monitor.record(step, loss, grads, batch_size=tf.shape(xb)[0],
                           inputs=xb, targets=yb, predictions=pred)
            return loss

        losses = []
        for step in range(steps):
            xb, yb = batches(step)
            losses.append(float(step_fn(tf.constant(step, tf.int64), xb, yb)))
            if not math.isfinite(losses[-1]) and len(losses) > 20 and \
                    not any(math.isfinite(v) for v in losses[-20:]):
                break
    return losses


def _xent(logits, yb):
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(yb, logits))


def _mse(pred, yb):
    return tf.reduce_mean(tf.square(pred - yb))


def _fit(logdir, model, opt, batch, epochs, seed=0):
    """Keras fit on the classification data with StabilityCallback."""
    x, y = _classification(seed=seed)
    model.compile(optimizer=opt, loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0,
              callbacks=[tb_stability.keras.StabilityCallback(logdir)])


def _batches(x, y, batch, seed=0):
    rng = np.random.default_rng(seed)

    def get(step):
        idx = rng.integers(0, len(x), size=batch)
        return x[idx], y[idx]
    return get


def log_zero(logdir, seed=0):
    """Hand-written mean cross-entropy, SGD far too fast: log(0) -> NaN."""
    x, y = _classification(seed=seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, name="logits")],
                             name="logzero")
    opt = keras.optimizers.SGD(30.0)

    def loss_fn(logits, yb):
        return -tf.reduce_mean(tf.reduce_sum(yb * tf.math.log(tf.nn.softmax(logits)), 1))
    return _loop(logdir, model, opt, loss_fn, _batches(x, y, 64, seed=seed), 200)


def nonfinite_gradient(logdir, seed=0):
    """sqrt(relu(h)): finite forward, 0 * inf = NaN in the backward pass."""
    x, y = _classification(seed=seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(32, name="hidden"),
        keras.layers.Lambda(lambda h: tf.sqrt(tf.nn.relu(h)), name="sqrt"),
        keras.layers.Dense(10, name="logits"),
    ], name="nfgrad")
    opt = keras.optimizers.Adam(1e-3)

    return _loop(logdir, model, opt, _xent, _batches(x, y, 64, seed=seed), 60)


def learning_rate(logdir, seed=0):
    """A warm-up that jumps to a learning rate 100x too large at step 300."""
    x, y = _classification(seed=seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((784,)),
                              keras.layers.Dense(64, activation="tanh", name="hidden"),
                              keras.layers.Dense(10, name="logits")], name="lr")

    class Jump(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return tf.where(step < 300, 0.05, 8.0)

    opt = keras.optimizers.SGD(Jump())

    return _loop(logdir, model, opt, _xent, _batches(x, y, 64, seed=seed), 600)


def bad_init(logdir, seed=0):
    """Weights drawn ~10x too large (std 3 for He's ~0.35 at width 16): huge loss
    and gradients in every layer from step 0 (loss ~1e4-5e4).

    The first SGD steps overshoot; each throws the weights so far that about
    half the ReLUs of a layer go negative on every sample, and the 16-unit
    layers are all dead within a few steps, long before anything can
    overflow: the loss pins at ln 10 (on seeds 0-9, by step 3-8).
    """
    x, y = _classification(seed=seed)
    keras.utils.set_random_seed(seed)
    init = keras.initializers.RandomNormal(stddev=3.0)
    model = keras.Sequential([keras.Input((784,))] + [
        keras.layers.Dense(16, activation="relu", kernel_initializer=init, name=f"d{i}")
        for i in range(3)] + [keras.layers.Dense(10, kernel_initializer=init, name="logits")],
        name="badinit")
    opt = keras.optimizers.SGD(0.1)

    return _loop(logdir, model, opt, _xent, _batches(x, y, 64, seed=seed), 300)


def dead_units(logdir, seed=0):
    """ReLUs killed at init (large negative bias): output pinned at ln 10."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(64, activation="relu", bias_initializer=keras.initializers.Constant(-50.0),
                           name="hidden"),
        keras.layers.Dense(10, name="logits")], name="dead")
    _fit(logdir, model, keras.optimizers.SGD(0.01), batch=32, epochs=2, seed=seed)


def vanishing_gradient(logdir, seed=0):
    """A deep sigmoid stack with small weights: early layers stop learning."""
    keras.utils.set_random_seed(seed)
    init = keras.initializers.RandomNormal(stddev=0.05)
    model = keras.Sequential([keras.Input((784,))] + [
        keras.layers.Dense(32, activation="sigmoid", kernel_initializer=init, name=f"d{i}")
        for i in range(10)] + [keras.layers.Dense(10, name="logits")], name="vanish")
    _fit(logdir, model, keras.optimizers.SGD(0.01), batch=32, epochs=2, seed=seed)


def exploding_gradient(logdir, seed=0, clipnorm=None):
    """A ReLU SimpleRNN with an identity recurrent kernel (IRNN) on 40-step
    sequences, plain SGD without clipping: the recurrent kernel's gradient
    at the first step is hundreds, ~20x the other kernels', the first
    update lifts its spectral radius above 1 and the state and the
    gradients explode through the 40 steps: inf by step 2. `clipnorm=1.0`
    (as Le et al. train it) keeps it healthy.

    (Pascanu's cliff, a tanh RNN whose gradient bursts once late in
    training, is not used: where and whether the burst comes is chaotic,
    at steps 252-567, 92 or 156 and not at all across seeds.)
    """
    length, batch = 40, 64
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)

    def batches(step):
        xb = rng.normal(size=(batch, length, 1)).astype(np.float32)
        return xb, xb[:, :10, 0].sum(1, keepdims=True) / 3.0
    model = keras.Sequential([
        keras.Input((length, 1)),
        keras.layers.SimpleRNN(32, activation="relu", recurrent_initializer="identity",
                               name="rnn"),
        keras.layers.Dense(1, name="out")], name="irnn")
    opt = keras.optimizers.SGD(0.01, clipnorm=clipnorm)
    return _loop(logdir, model, opt, _mse, batches, 300)


def healthy_noisy_sgd(logdir, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((784,)),
                              keras.layers.Dense(64, activation="relu", name="hidden"),
                              keras.layers.Dense(10, name="logits")], name="noisy")
    _fit(logdir, model, keras.optimizers.SGD(0.05), batch=4, epochs=1, seed=seed)


def healthy_summed_adam(logdir, seed=0):
    """A summed loss under Adam: scale invariant, not a cause."""
    x, y = _classification(seed=seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, name="logits")],
                             name="sumadam")
    opt = keras.optimizers.Adam(1e-3)

    def loss_fn(logits, yb):
        return -tf.reduce_sum(yb * tf.math.log(tf.nn.softmax(logits) + 1e-7))
    return _loop(logdir, model, opt, loss_fn, _batches(x, y, 256, seed=seed), 600)


def healthy_warmup(logdir, seed=0):
    """A large but stable learning-rate warm-up (linear to 0.1 over 300 steps)."""
    x, y = _classification(seed=seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((784,)),
                              keras.layers.Dense(64, activation="relu", name="hidden"),
                              keras.layers.Dense(10, name="logits")], name="warmup")

    class Warmup(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return 0.1 * tf.minimum(1.0, (tf.cast(step, tf.float32) + 1.0) / 300.0)

    opt = keras.optimizers.SGD(Warmup(), momentum=0.9)

    return _loop(logdir, model, opt, _xent, _batches(x, y, 64, seed=seed), 800)


def nonfinite_input(logdir, seed=0):
    """NaN in input feature 300 from step 200; the user masks non-finite
    activations, so the loss stays finite while x^T delta poisons the first
    kernel (a silent NaN).
    """
    x, y = _classification(seed=seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(32, name="hidden"),
        keras.layers.Lambda(lambda h: tf.where(tf.math.is_finite(h), h, 0.0), name="guard"),
        keras.layers.Activation("relu"),
        keras.layers.Dense(10, name="logits"),
    ], name="nfinput")
    opt = keras.optimizers.Adam(1e-3)
    base = _batches(x, y, 64, seed=seed)

    def batches(step):
        xb, yb = base(step)
        if step >= 200:
            xb = xb.copy()
            xb[0, 300] = np.nan
        return xb, yb

    return _loop(logdir, model, opt, _xent, batches, 260)


def unknown(logdir, seed=0):
    """A loss spike no recorded signal supports (the value was misreported)."""
    x, y = _classification(seed=seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, name="logits")],
                             name="unknown")
    opt = keras.optimizers.SGD(0.1)
    variables = model.trainable_variables
    get = _batches(x, y, 64, seed=seed)
    with tb_stability.Monitor(logdir, optimizer=opt, variables=variables) as monitor:
        for step in range(600):
            xb, yb = get(step)
            with tf.GradientTape() as tape:
                loss = _xent(model(xb), yb)
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables))
            reported = loss * (1000.0 if step == 400 else 1.0)
            monitor.record(step, reported, grads, batch_size=64)


def output_mismatch(logdir, seed=0):
    """A regression with a sigmoid output under fit: targets around 50 that
    a sigmoid (at most 1) can never reach, so the loss stalls at about
    mean((y - 1)^2) from the first epoch."""
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    x = rng.normal(size=(2048, 8)).astype(np.float32)
    y = (50.0 + 10.0 * x[:, :1] + rng.normal(size=(2048, 1))).astype(np.float32)
    model = keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="hidden"),
        keras.layers.Dense(1, activation="sigmoid", name="out")], name="sigout")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.fit(x, y, batch_size=32, epochs=5, verbose=0,
              callbacks=[tb_stability.keras.StabilityCallback(logdir)])


SCENARIOS = {
    "output_mismatch": output_mismatch,
    "nonfinite_input": nonfinite_input,
    "unknown": unknown,
    "log_zero": log_zero,
    "nonfinite_gradient": nonfinite_gradient,
    "learning_rate": learning_rate,
    "bad_init": bad_init,
    "dead_units": dead_units,
    "vanishing_gradient": vanishing_gradient,
    "exploding_gradient": exploding_gradient,
}
HEALTHY = {
    "healthy_noisy_sgd": healthy_noisy_sgd,
    "healthy_summed_adam": healthy_summed_adam,
    "healthy_warmup": healthy_warmup,
}
