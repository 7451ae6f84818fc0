"""The four reported seed blow-ups (demo/README.md), each broken and fixed.

Every scenario is a function `(logdir, fixed, ..., seed=0) -> dict` that
trains one run into `logdir` with tb_stability and returns what a test needs
to check the reproduction (losses per step, first non-finite step,
accuracy). `seed` picks the data, the batch order and the initialisation
(seed 0 is the demo's run); under demo.main.deterministic each run is the
same on every execution. See demo/README.md for
the threads, mechanisms, fixes and the diagnosis tb_stability should give.
"""

import math

import numpy as np

from demo.data import mnist_like, one_hot


def _first_nonfinite(losses):
    bad = np.flatnonzero(~np.isfinite(np.asarray(losses, np.float64)))
    return int(bad[0]) if len(bad) else None


def seed000(logdir, fixed, batch=256, steps=1000, lr=0.015, seed=0):
    """Summed softmax cross-entropy + SGD: NaN past a batch size.

    Broken: the beginners' tutorial loss `-reduce_sum(y * log(softmax))`,
    summed over the batch, so the gradient (and SGD's step) grows with the
    batch; past the edge the first steps overshoot, the softmax saturates
    and log(0) gives NaN within a few steps. On this data the edge is at
    about batch 256 with the tutorial's lr 0.01 (some sample orders still
    train there); the demo takes lr 0.015 (batch 256 at lr 0.015 is the step
    of batch 384 at 0.01), which is NaN by step 3 on every order tried
    (seeds 0-9). Fixed: mean reduction and the logits-based loss, with the
    learning rate scaled to the mean (0.5).
    """
    import keras
    import tensorflow as tf

    import tb_stability

    x, labels = mnist_like(60000, seed=seed)
    y = one_hot(labels)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(10, kernel_initializer="zeros", name="softmax"),
    ], name="seed000")
    opt = keras.optimizers.SGD(0.5 if fixed else lr)
    variables = model.trainable_variables
    rng = np.random.default_rng(seed)
    losses = []
    with tb_stability.Monitor(logdir, optimizer=opt, variables=variables) as monitor:
        @tf.function
        def train_step(step, xb, yb):
            with tf.GradientTape() as tape:
                logits = model(xb)
                if fixed:
                    loss = tf.reduce_mean(
                        tf.nn.softmax_cross_entropy_with_logits(yb, logits))
                else:
                    loss = -tf.reduce_sum(yb * tf.math.log(tf.nn.softmax(logits)))
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables))
            monitor.record(step, loss, grads, batch_size=tf.shape(xb)[0])
            return loss

        for step in range(steps):
            idx = rng.integers(0, len(x), size=batch)
            losses.append(float(train_step(tf.constant(step, tf.int64),
                                           x[idx], y[idx])))
            nan_at = _first_nonfinite(losses)
            if nan_at is not None and step >= nan_at + 20:
                break  # as the thread did: nothing more to learn
    logits = x[:5000] @ variables[0].numpy() + variables[1].numpy()
    accuracy = float(np.mean(np.argmax(logits, 1) == labels[:5000]))
    return {"losses": losses, "nan_step": _first_nonfinite(losses),
            "accuracy": accuracy, "batch": batch}


def seed001(logdir, fixed, lr=1e-3, epochs=10, batch=32, model_seed=2, seed=0):
    """A 3-layer Keras MLP on raw 0..255 pixels: stuck at ln 10, or NaN.

    Broken: pixels in 0..255 make the first layer's pre-activations and
    gradients huge; the first updates overshoot, the ReLUs die, the sigmoid
    outputs saturate alike and the loss pins at ln 10 = 2.3026 with accuracy
    about 0.1 (with lr 3e-3 it turns NaN instead). Fixed: inputs / 255.
    """
    import keras

    import tb_stability

    x, labels = mnist_like(5000, seed=1 + seed)
    y = one_hot(labels)
    if not fixed:
        x = x * 255.0
    keras.utils.set_random_seed(model_seed + seed)
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(784, name="dense_in"),
        keras.layers.Dense(50, activation="relu", name="hidden"),
        keras.layers.Dense(10, activation="sigmoid", name="out"),
    ], name="seed001")
    model.compile(optimizer=keras.optimizers.SGD(lr),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(
        x, y, batch_size=batch, epochs=epochs, verbose=0,
        callbacks=[tb_stability.keras.StabilityCallback(logdir),
                   keras.callbacks.TerminateOnNaN()])
    return {"epoch_loss": history.history["loss"],
            "epoch_accuracy": history.history["accuracy"],
            "nan_step": None if all(map(math.isfinite, history.history["loss"]))
            else "epoch"}


def seed002(logdir, fixed, batch=1024, steps=10000, seed=0):
    """Adam at very low loss: spikes by orders of magnitude, again and again.

    Broken: learn the mean of 100 uniform numbers (exactly realisable) with
    Adam (lr 1e-3, exponential decay, epsilon 1e-8 as TF1's default); the
    loss reaches ~1e-12, gradients vanish, Adam's second moment decays with
    them, the effective step lr/(sqrt(v_hat)+eps) grows until it passes the
    stability limit, and the loss jumps back to ~1e-2. Fixed: epsilon 1e-2.
    """
    import keras
    import tensorflow as tf

    import tb_stability

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((100,)),
        keras.layers.Dense(100, name="dense_1"),
        keras.layers.Dense(1, name="dense_2"),
    ], name="seed002")
    schedule = keras.optimizers.schedules.ExponentialDecay(
        1e-3, decay_steps=500, decay_rate=0.99)
    opt = keras.optimizers.Adam(schedule, epsilon=1e-2 if fixed else 1e-8)
    variables = model.trainable_variables
    rng = np.random.default_rng(seed)
    losses = np.empty(steps)
    with tb_stability.Monitor(logdir, optimizer=opt, variables=variables) as monitor:
        @tf.function
        def train_step(step, xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(xb) - yb))
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables))
            monitor.record(step, loss, grads, batch_size=tf.shape(xb)[0])
            return loss

        for step in range(steps):
            xb = rng.random((batch, 100), dtype=np.float32)
            yb = xb.mean(axis=1, keepdims=True)
            losses[step] = float(train_step(tf.constant(step, tf.int64), xb, yb))
    return {"losses": losses.tolist(), "nan_step": _first_nonfinite(losses)}


def seed003(logdir, fixed, batch=256, steps=8000, lr=1e-3, seed=0):
    """Adam trains well for thousands of steps, then blows up.

    Broken: a realisable multi-output regression (a linear teacher) with
    Adam at a constant lr 1e-3 and Keras's default epsilon 1e-7. The loss
    reaches its floor (~1e-14) early and stays there for thousands of steps
    while the second moment decays; then the effective step passes the
    stability limit and the loss blows up by about eight orders of magnitude
    and stays up (the thread: after 200k batches). Fixed: epsilon 1e-2.
    """
    import keras
    import tensorflow as tf

    import tb_stability

    rng = np.random.default_rng(seed)
    teacher = tf.constant(rng.normal(size=(16, 4)).astype(np.float32) / 4)
    keras.utils.set_random_seed(seed)

    def batch_of(i):
        pair = tf.stack([i, tf.constant(7 + seed, tf.int64)])
        xb = tf.random.stateless_normal([batch, 16], seed=pair)
        return xb, xb @ teacher

    data = tf.data.Dataset.range(steps).map(batch_of)
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(64, name="dense_1"),
        keras.layers.Dense(4, name="dense_2"),
    ], name="seed003")
    model.compile(optimizer=keras.optimizers.Adam(
        lr, epsilon=1e-2 if fixed else 1e-7), loss="mse")
    cb = tb_stability.keras.StabilityCallback(logdir)
    model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[cb])
    return {"nan_step": None}


SCENARIOS = (
    ("seed000", seed000),
    ("seed001", seed001),
    ("seed002", seed002),
    ("seed003", seed003),
)
