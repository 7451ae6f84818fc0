"""A corpus of small real training runs, broken and healthy, for the detector.

Each entry of `RUNS` trains one run into a log directory with tb_stability
(`Monitor` in a custom loop, or `StabilityCallback` under `fit`), on
synthetic data, with fixed seeds (a few seconds each on a 2-core CPU). Every
train function takes `(logdir, seed=0, fix=False)` and returns the per-step
losses it saw (None under `fit`, where the recorder is the only record).

Each broken run is labelled with its true `cause` (an id of
shared/design/causes.md, or "unknown" where no id applies) and `fix=True`
trains the same run with the one change a user would make (`fix`, one
line), which must then be healthy: the attribution corpus.

`expect` is the anomaly kind a person would point at first on the chart
(`detect.Anomaly.kind`: "spike", "divergence", "nonfinite", "plateau",
"instability"), None for a healthy control, which must raise no anomaly.
`family` groups runs of one mechanism; `source` names, in one line, the
family of public reports the run re-creates (the code is our own).

    python tests/scripts/train_corpus.py /tmp/corpus_logs   # one dir per run
    python tests/scripts/train_corpus.py /tmp/corpus_logs --fixed --jobs 2
"""

import dataclasses
import math
import os
from typing import Callable, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import scenarios
import tensorflow as tf

import tb_stability


@dataclasses.dataclass(frozen=True)
class CorpusRun:
    train: Callable      # train(logdir, seed=0, fix=False) -> losses or None
    expect: Optional[str]  # anomaly kind a person points at first; None for healthy
    family: str
    source: str          # one line: the public report it re-creates, or "control: ..."
    cause: Optional[str] = None   # true cause id (causes.md) or "unknown"; None for healthy
    fix: Optional[str] = None     # one line: what fix=True changes
    # Kinds that name the same observation as `expect` for this run: the
    # recovering blow-ups of adam_epsilon_exact_fit are a train of spikes on
    # one CPU and, its near-zero loss rounding otherwise, a chronic
    # instability (the loss keeps returning far above its best) on another.
    also: tuple = ()

    def seen_in(self, kind):
        """Whether an anomaly of `kind` is what a person points at here."""
        return kind == self.expect or kind in self.also


# ---------------------------------------------------------------- loops


# The custom training loop recorded by `Monitor` (stops after 20 non-finite
# steps in a row): the scenarios' own.
_loop = scenarios._loop


# ---------------------------------------------------------------- data


def _seed(seed):
    keras.utils.set_random_seed(seed)
    return np.random.default_rng(seed)


def _blobs(rng, n, dim, classes, sep=1.5, scale=1.0):
    """(x [n, dim] float32, labels [n]) of Gaussian class clusters."""
    centers = rng.normal(size=(classes, dim)) * sep / math.sqrt(dim) * 2.0
    labels = rng.integers(0, classes, n)
    x = centers[labels] + rng.normal(size=(n, dim))
    return (scale * x).astype(np.float32), labels


def _one_hot(labels, classes):
    return np.eye(classes, dtype=np.float32)[labels]


def _linear(rng, n, dim, noise=0.1, offset=0.0, gain=1.0):
    """(x [n, dim], y [n, 1]) of y = gain * x.w + offset + noise."""
    x = rng.normal(size=(n, dim)).astype(np.float32)
    w = rng.normal(size=(dim, 1)) / math.sqrt(dim)
    y = gain * (x @ w) + offset + noise * rng.normal(size=(n, 1))
    return x, y.astype(np.float32)


def _batches(rng, x, y, batch):
    def get(step):
        idx = rng.integers(0, len(x), size=batch)
        return x[idx], y[idx]
    return get


def _mlp(dim, widths, out, activation="relu", out_activation=None, name="mlp", **kw):
    layers = [keras.Input((dim,))]
    layers += [keras.layers.Dense(w, activation=activation, name=f"d{i}", **kw)
               for i, w in enumerate(widths)]
    layers.append(keras.layers.Dense(out, activation=out_activation, name="out"))
    return keras.Sequential(layers, name=name)


def _xent(logits, yb):
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(yb, logits))


def _mse(pred, yb):
    return tf.reduce_mean(tf.square(pred - yb))


def _standardise(x):
    return ((x - x.mean(0)) / x.std(0)).astype(np.float32)


class _Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over `steps`, then constant."""

    def __init__(self, peak, steps):
        self.peak, self.steps = peak, steps

    def __call__(self, step):
        return self.peak * tf.minimum(1.0, (tf.cast(step, tf.float32) + 1.0) / self.steps)


def _fit(logdir, model, x, y, *, loss, optimizer, batch, epochs, shuffle=True):
    model.compile(optimizer=optimizer, loss=loss)
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, shuffle=shuffle,
              callbacks=[tb_stability.keras.StabilityCallback(logdir)])


# ------------------------------------------------------------ broken runs
#
# Every broken run takes `fix`: fix=True trains the same run with the one
# change a user would make (`CorpusRun.fix`), and must then be healthy.


def regression_dead_relu(logdir, seed=0, fix=False):
    """Targets around 35 (not centred), SGD(0.01, momentum 0.9): the first
    steps overshoot and kill every ReLU; only the output bias learns, so the
    loss stalls at var(y), the error of predicting the mean, 50x above the
    noise floor. The ReLUs are dead, but what killed them is the step size:
    fix: SGD lr 1e-3."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.3, offset=35.0, gain=3.0)
    model = _mlp(10, [32, 32], 1, name="deadreg")
    opt = keras.optimizers.SGD(1e-3 if fix else 0.01, momentum=0.9)
    return _loop(logdir, model, opt, _mse,
                 _batches(rng, x, y, 64), 500)


def imbalanced_prior(logdir, seed=0, fix=False):
    """5% positives, positive raw-unit features (amounts ~1000) under
    SGD(0.1): the first update kills the hidden ReLUs, the output learns
    the prior and the loss stalls at the label entropy H(0.05) ~ 0.2."""
    rng = _seed(seed)
    n = 4096
    labels = (rng.random(n) < 0.05).astype(np.float32)
    z = rng.normal(size=(n, 16)) + 1.5 * labels[:, None] * (np.arange(16) < 4)
    x = (1000.0 * np.exp(0.5 * z)).astype(np.float32)
    if fix:
        x = _standardise(x)
    model = _mlp(16, [32], 1, out_activation="sigmoid", name="imbalanced")
    _fit(logdir, model, x, labels[:, None], loss="binary_crossentropy",
         optimizer=keras.optimizers.SGD(0.1), batch=128, epochs=16)


def summed_loss_sgd(logdir, seed=0, fix=False):
    """Cross-entropy summed over a batch of 64 under SGD(0.05): a 64x step
    kills the ReLUs, the output stays at the prior: loss ~ 64 ln 10 = 147."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    x = 1.0 / (1.0 + np.exp(-2.0 * x))  # intensities in (0, 1)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64], 10, name="summed")
    reduce = tf.reduce_mean if fix else tf.reduce_sum

    def loss_fn(logits, yb):
        return reduce(tf.nn.softmax_cross_entropy_with_logits(yb, logits))
    return _loop(logdir, model, keras.optimizers.SGD(0.05), loss_fn,
                 _batches(rng, x, y, 64), 400)


def blowup_then_stall(logdir, seed=0, fix=False):
    """Adam with a linear warm-up to a peak lr of 0.3 (far too high): the
    loss falls to ~0.3 in the first tens of steps, blows up as the lr
    grows, the ReLUs die and it settles at ln 10, far above its minimum."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64, 64], 10, name="blowstall")
    peak = 3e-3 if fix else 0.3
    return _loop(logdir, model, keras.optimizers.Adam(_Warmup(peak, 200)), _xent,
                 _batches(rng, x, y, 64), 600)


def chronic_sgd_momentum(logdir, seed=0, fix=False):
    """SGD(lr 2, momentum 0.9) on a tanh MLP: the loss keeps jumping back far
    above its running minimum for the whole run, without net progress."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64], 10, activation="tanh", name="chronicsgd")
    lr = 0.02 if fix else 2.0
    return _loop(logdir, model, keras.optimizers.SGD(lr, momentum=0.9), _xent,
                 _batches(rng, x, y, 64), 600)


def chronic_adam(logdir, seed=0, fix=False):
    """Adam(0.3) on a tanh MLP: chronic instability, no net progress."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64], 10, activation="tanh", name="chronicadam")
    return _loop(logdir, model, keras.optimizers.Adam(1e-3 if fix else 0.3), _xent,
                 _batches(rng, x, y, 64), 600)


def frozen_softmax_bce(logdir, seed=0, fix=False):
    """Dense(1, activation="softmax") and a binary cross-entropy on its
    probabilities: the output is always 1, every gradient is exactly zero,
    the loss is -log(eps) times the batch's share of negatives. (Keras 3's
    compiled binary_crossentropy reads the softmax's logits and trains; the
    tf.keras 2 report, and any loss on the probabilities, is frozen.)"""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 16, 2)
    y = labels[:, None].astype(np.float32)
    model = _mlp(16, [16], 1, out_activation="sigmoid" if fix else "softmax",
                 name="softmax1")

    def loss_fn(p, yb):
        p = tf.clip_by_value(p, 1e-7, 1.0 - 1e-7)
        return -tf.reduce_mean(yb * tf.math.log(p) + (1.0 - yb) * tf.math.log(1.0 - p))
    return _loop(logdir, model, keras.optimizers.Adam(1e-3), loss_fn,
                 _batches(rng, x, y, 64), 300)


def frozen_cce_width1(logdir, seed=0, fix=False):
    """categorical_crossentropy over a width-1 softmax with 0/1 labels, under
    fit: log_softmax of one logit is 0, so the loss reads exactly 0 at every
    step (while the weights still move: the op's gradient softmax - y
    assumes the labels sum to 1)."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 1536, 16, 2)
    model = _mlp(16, [16], 1, out_activation="sigmoid" if fix else "softmax", name="cce1")
    _fit(logdir, model, x, labels[:, None].astype(np.float32),
         loss="binary_crossentropy" if fix else "categorical_crossentropy",
         optimizer=keras.optimizers.Adam(1e-3), batch=64, epochs=6)


def frozen_relu_output(logdir, seed=0, fix=False):
    """A regression with a ReLU on its output and mostly negative targets,
    full batch: the output unit dies within a few steps, then the loss is
    constant to every digit and every gradient is zero."""
    rng = _seed(seed)
    x, y = _linear(rng, 512, 8, noise=0.1, offset=-3.0)
    model = _mlp(8, [16], 1, out_activation=None if fix else "relu", name="reluout")
    return _loop(logdir, model, keras.optimizers.Adam(0.01), _mse,
                 lambda step: (x, y), 400)


def silent_nan_masked_loss(logdir, seed=0, fix=False):
    """One target of the batch at step 150 is NaN (a missing label); the
    loss masks non-finite per-example errors with tf.where, so the forward
    loss stays finite but 0 * NaN in the backward pass poisons the weights
    and Adam's moments. Once every prediction is NaN the masked loss reads
    exactly 0: the chart shows a run that "converged"."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.1)
    base = _batches(rng, x, y, 32)

    def batches(step):
        xb, yb = base(step)
        if step == 150:
            if fix:  # the row with the missing label dropped
                return xb[:31], yb[:31]
            yb = yb.copy()
            yb[5] = np.nan
        return xb, yb
    model = _mlp(10, [32], 1, name="maskedloss")

    def loss_fn(pred, yb):
        err = tf.square(pred - yb)
        ok = tf.math.is_finite(err)
        return tf.reduce_sum(tf.where(ok, err, 0.0)) / tf.maximum(
            tf.reduce_sum(tf.cast(ok, tf.float32)), 1.0)
    return _loop(logdir, model, keras.optimizers.Adam(1e-3), loss_fn, batches, 400)


def unscaled_inputs_lnc(logdir, seed=0, fix=False):
    """8x8 "pixels" in 0..255 into a ReLU MLP under SGD(0.01): the first
    update overshoots, the ReLUs die, the loss pins at ln 10."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 64, 10)
    x = np.clip(255.0 * (0.5 + 0.2 * x), 0, 255).astype(np.float32)
    if fix:
        x = _standardise(x)
    y = _one_hot(labels, 10)
    model = _mlp(64, [64], 10, name="unscaled")
    return _loop(logdir, model, keras.optimizers.SGD(0.01), _xent,
                 _batches(rng, x, y, 64), 600)


def spike_train(logdir, seed=0, fix=False):
    """One data shard has its targets in the wrong unit (x30): each time a
    batch from it comes (every 120 steps) the loss jumps and recovers."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.1)
    base = _batches(rng, x, y, 64)

    def batches(step):
        xb, yb = base(step)
        if step % 120 == 100 and not fix:
            yb = 30.0 * yb
        return xb, yb
    model = _mlp(10, [32], 1, name="spiketrain")
    return _loop(logdir, model, keras.optimizers.Adam(3e-3), _mse, batches, 720)


def divergence_sgd_mse(logdir, seed=0, fix=False):
    """Linear regression, SGD a little past the stability limit 2/lambda_max:
    the error grows ~1.3x per step until it overflows."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.1)
    x[:, 0] *= 3.0  # one stiff direction
    # MSE Hessian 2 E[x x^T]: largest eigenvalue ~ 2 * 9 = 18.
    lam = 2.0 * float(np.linalg.eigvalsh(x.T @ x / len(x)).max())
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(1, name="out")],
                             name="divsgd")
    return _loop(logdir, model, keras.optimizers.SGD((1.0 if fix else 2.3) / lam), _mse,
                 _batches(rng, x, y, 128), 400)


def sigmoid_output_regression(logdir, seed=0, fix=False):
    """Targets in 10..90 behind a sigmoid output: the output saturates at 1,
    the loss stalls at mean((y - 1)^2)."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=1.0, offset=50.0, gain=15.0)
    model = _mlp(10, [32], 1, out_activation=None if fix else "sigmoid", name="sigreg")
    return _loop(logdir, model, keras.optimizers.Adam(1e-3), _mse,
                 _batches(rng, x, y, 64), 500)


def lr_growing_schedule(logdir, seed=0, fix=False):
    """ExponentialDecay with decay_rate 1.5 (a growing learning rate): the
    loss falls, then rises without recovering."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64], 10, activation="tanh", name="growlr")
    lr = keras.optimizers.schedules.ExponentialDecay(0.05, 20, 0.9 if fix else 1.5)
    return _loop(logdir, model, keras.optimizers.SGD(lr), _xent,
                 _batches(rng, x, y, 64), 600)


# --- adam_epsilon


def adam_epsilon_exact_fit(logdir, seed=0, fix=False):
    """A tiny linear regression with noise-free targets, full batch, under
    Adam(0.01, epsilon=1e-10): the loss falls to ~1e-17 by step ~400, the
    gradients vanish, Adam's second moment decays with them and the
    effective step lr / (sqrt(v) + eps) grows past the stability limit:
    from step ~900-1400 the loss blows up by ~10 decades, recovers, and
    does it again. Fix: epsilon=3e-2 (lr * curvature / eps < 2)."""
    rng = _seed(seed)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = (x @ (0.02 * rng.normal(size=(8, 1)))).astype(np.float32)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(
        1, kernel_initializer="zeros", name="out")], name="exactfit")
    opt = keras.optimizers.Adam(0.01, epsilon=3e-2 if fix else 1e-10)
    return _loop(logdir, model, opt, _mse, lambda step: (x, y), 1600)


def adam_epsilon_float16(logdir, seed=0, fix=False):
    """A float16 model (dtype policy "float16": variables and Adam's moments
    in half precision) under Adam(epsilon=1e-8): 1e-8 is below float16's
    smallest subnormal (6e-8) and rounds to 0, and so does v = (1-b2) g^2
    of every gradient entry under ~8e-3: m / (sqrt(0) + 0) = inf or NaN in
    the first updates. Fix: epsilon=1e-4, representable in float16."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.1)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float16")
    try:
        model = _mlp(10, [32], 1, name="half")
        opt = keras.optimizers.Adam(1e-3, epsilon=1e-4 if fix else 1e-8)

        def loss_fn(pred, yb):
            return _mse(tf.cast(pred, tf.float32), yb)
        return _loop(logdir, model, opt, loss_fn, _batches(rng, x, y, 64), 300)
    finally:
        keras.config.set_dtype_policy(previous)


# --- summed_loss


def summed_mse_large_batch(logdir, seed=0, fix=False):
    """Squared error summed (reduce_sum) over batches of 512 under SGD(0.02):
    the step is 512x the mean loss's, far past the stability limit; the
    loss grows geometrically to overflow. Fix: reduce_mean."""
    rng = _seed(seed)
    x, y = _linear(rng, 8192, 10, noise=0.1, gain=2.0)
    model = _mlp(10, [32], 1, name="summse")
    reduce = tf.reduce_mean if fix else tf.reduce_sum

    def loss_fn(pred, yb):
        return reduce(tf.square(pred - yb))
    return _loop(logdir, model, keras.optimizers.SGD(0.02), loss_fn,
                 _batches(rng, x, y, 512), 300)


def summed_loss_fit(logdir, seed=0, fix=False):
    """A compiled CategoricalCrossentropy(reduction="sum") over batches of 256
    under SGD(0.1): every step is 256x the mean loss's, the loss (~680 =
    256 ln 10 at the start) grows by decades per step and overflows to NaN
    by step ~20-25. Fix: the default mean reduction."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    model = _mlp(32, [64], 10, out_activation="softmax", name="summedfit")
    loss = keras.losses.CategoricalCrossentropy(
        reduction="sum_over_batch_size" if fix else "sum")
    _fit(logdir, model, x, _one_hot(labels, 10), loss=loss,
         optimizer=keras.optimizers.SGD(0.1), batch=256, epochs=10)


# --- log_zero


def log_zero_softmax(logdir, seed=0, fix=False):
    """The tutorial cross-entropy -sum(y * log(softmax(z))) on a linear
    softmax classifier under SGD(3): the first steps make the logits
    trail by more than ~100 on some examples, their softmax underflows to
    exactly 0 and y log(0) turns the loss NaN (0 * -inf, or inf).
    Fix: softmax_cross_entropy_with_logits (the same lr then converges)."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 16, 4, sep=6.0)
    y = _one_hot(labels, 4)
    model = _mlp(16, [], 4, name="logsoftmax")

    def loss_fn(logits, yb):
        if fix:
            return _xent(logits, yb)
        return -tf.reduce_mean(tf.reduce_sum(yb * tf.math.log(tf.nn.softmax(logits)), 1))
    return _loop(logdir, model, keras.optimizers.SGD(3.0), loss_fn,
                 _batches(rng, x, y, 64), 300)


def log_zero_sigmoid(logdir, seed=0, fix=False):
    """A hand-written binary cross-entropy y log(sigmoid(z)) + (1-y)
    log(1 - sigmoid(z)): once a positive's logit passes ~17, sigmoid(z)
    rounds to 1.0 in float32 and (1-y) log(0) = 0 * -inf = NaN. Fix:
    sigmoid_cross_entropy_with_logits."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 16, 2, sep=4.0)
    y = labels[:, None].astype(np.float32)
    model = _mlp(16, [32], 1, name="logsigmoid")

    def loss_fn(z, yb):
        if fix:
            return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(yb, z))
        p = tf.sigmoid(z)
        return -tf.reduce_mean(yb * tf.math.log(p) + (1.0 - yb) * tf.math.log(1.0 - p))
    return _loop(logdir, model, keras.optimizers.Adam(0.01), loss_fn,
                 _batches(rng, x, y, 64), 400)


def log_zero_custom_keras_loss(logdir, seed=0, fix=False):
    """model.compile(loss=a custom binary cross-entropy -mean(y log p +
    (1-y) log(1-p))) on a sigmoid output, under fit: once a positive's
    logit passes ~17, p rounds to 1.0 in float32 and (1-y) log(1-p) = 0 *
    -inf = NaN. Fix: the built-in binary_crossentropy (it clips p)."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 16, 2, sep=4.0)
    model = _mlp(16, [32], 1, out_activation="sigmoid", name="customloss")

    def my_bce(y_true, y_pred):
        return -tf.reduce_mean(y_true * tf.math.log(y_pred)
                               + (1.0 - y_true) * tf.math.log(1.0 - y_pred), axis=-1)
    _fit(logdir, model, x, labels[:, None].astype(np.float32),
         loss="binary_crossentropy" if fix else my_bce,
         optimizer=keras.optimizers.Adam(0.01), batch=64, epochs=6)


def nonfinite_grad_contrastive(logdir, seed=0, fix=False):
    """A metric-learning loss mean(d(a, p) + relu(1 - d(a, n))) with d =
    tf.norm of the difference of in-batch embeddings; the positive sampler
    falls back to the anchor itself when its class has no other member in
    the batch (forced at step 150): d = 0 exactly, and the norm's gradient
    there is 0/0 = NaN while the loss is finite. Fix: d = sqrt(sum of
    squares + 1e-12)."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 16, 8, sep=3.0)
    batch = 64

    def batches(step):
        i = rng.integers(0, len(x), batch)
        lab = labels[i]
        pos, neg = np.arange(batch), np.arange(batch)
        for k in range(batch):
            same = np.flatnonzero((lab == lab[k]) & (np.arange(batch) != k))
            if len(same):  # else the anchor itself: the bug
                pos[k] = same[rng.integers(0, len(same))]
            other = np.flatnonzero(lab != lab[k])
            neg[k] = other[rng.integers(0, len(other))]
        if step == 150:
            pos[0] = 0
        return x[i], np.stack([pos, neg], 1).astype(np.float32)
    model = keras.Sequential([keras.Input((16,)),
                              keras.layers.Dense(32, activation="relu", name="d0"),
                              keras.layers.Dense(8, name="embed")], name="metric")

    def dist(a, b):
        if fix:
            return tf.sqrt(tf.reduce_sum(tf.square(a - b), 1) + 1e-12)
        return tf.norm(a - b, axis=1)

    def loss_fn(emb, pairs):
        idx = tf.cast(pairs, tf.int32)
        d_ap = dist(emb, tf.gather(emb, idx[:, 0]))
        d_an = dist(emb, tf.gather(emb, idx[:, 1]))
        return tf.reduce_mean(d_ap + tf.nn.relu(1.0 - d_an))
    return _loop(logdir, model, keras.optimizers.Adam(1e-3), loss_fn, batches, 300)


def nonfinite_grad_sqrt_layer(logdir, seed=0, fix=False):
    """A custom layer Lambda(sqrt(relu(h))) ("square-root compression" of
    the hidden features), under fit: the forward is finite, but wherever a
    unit is off the backward pass multiplies sqrt's infinite slope at 0 by
    ReLU's 0: NaN gradients from the first step. Fix: sqrt(relu(h) +
    1e-6)."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 16, 4)
    eps = 1e-6 if fix else 0.0
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(32, name="hidden"),
        keras.layers.Lambda(lambda h: tf.sqrt(tf.nn.relu(h) + eps), name="sqrt"),
        keras.layers.Dense(4, name="out")], name="sqrtlayer")
    _fit(logdir, model, x, _one_hot(labels, 4),
         loss=keras.losses.CategoricalCrossentropy(from_logits=True),
         optimizer=keras.optimizers.Adam(3e-3), batch=64, epochs=3)


def nonfinite_input_nan_rows(logdir, seed=0, fix=False):
    """A table with missing values read as NaN in 5 of 4096 rows, under fit:
    the first batch holding one has a NaN loss, and the NaN gradient poisons
    every weight. Fix: drop the incomplete rows."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.1, gain=2.0)
    rows = rng.choice(len(x), 5, replace=False)
    x[rows, rng.integers(0, 10, len(rows))] = np.nan
    if fix:
        keep = np.isfinite(x).all(axis=1)
        x, y = x[keep], y[keep]
    model = _mlp(10, [32], 1, name="nanrows")
    _fit(logdir, model, x, y, loss="mse", optimizer=keras.optimizers.Adam(1e-3),
         batch=64, epochs=3)


def nonfinite_input_log_feature(logdir, seed=0, fix=False):
    """A feature engineered as log(amount) where ~0.2% of the amounts are 0:
    -inf in one input column; the first batch holding one turns the loss
    NaN. Fix: log1p(amount)."""
    rng = _seed(seed)
    n = 4096
    other = rng.normal(size=(n, 7))
    amount = rng.lognormal(3.0, 1.0, n)
    amount[rng.random(n) < 0.002] = 0.0
    labels = ((other[:, 0] + (np.log1p(amount) - 3.0)) > 0).astype(int)
    with np.errstate(divide="ignore"):
        feature = np.log1p(amount) if fix else np.log(amount)
    x = np.concatenate([other, (feature - 3.0)[:, None]], 1).astype(np.float32)
    model = _mlp(8, [32], 2, name="logfeat")
    return _loop(logdir, model, keras.optimizers.Adam(1e-3), _xent,
                 _batches(rng, x, _one_hot(labels, 2), 64), 400)


# --- unnormalized_inputs


def one_feature_other_units(logdir, seed=0, fix=False):
    """Nine standardised features and one in dollars (income ~5e4), a
    regression under fit with SGD(0.01): that feature's kernel row takes
    gradients ~1e4x the others', the first steps overshoot and the loss
    overflows to NaN. Fix: standardise that feature too."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 9, noise=0.1, gain=2.0)
    income = rng.normal(5e4, 1.5e4, size=(len(x), 1))
    y = y + 0.5 * (income - 5e4) / 1.5e4
    x = np.concatenate([x, _standardise(income) if fix else income], 1).astype(np.float32)
    model = _mlp(10, [32], 1, name="income")
    _fit(logdir, model, x, y.astype(np.float32), loss="mse",
         optimizer=keras.optimizers.SGD(0.01), batch=64, epochs=3)


# --- exploding_gradient


def exploding_relu_rnn(logdir, seed=0, fix=False):
    """tests/scenarios.py's exploding_gradient: an IRNN (ReLU SimpleRNN,
    identity recurrent kernel) under SGD without clipping, inf by step 2.
    Fix: clipnorm=1.0 (as Le et al. train it)."""
    return scenarios.exploding_gradient(logdir, seed, clipnorm=1.0 if fix else None)


def exploding_linear_rnn_fit(logdir, seed=0, fix=False):
    """A SimpleRNN with no activation (a linear recurrence) over 100-step
    sequences under fit and plain SGD: the recurrent kernel's first
    gradient sums 100 time lags, ~15x the other kernels', its first update
    moves it by more than its own norm, the recurrence's gain passes 1 and
    the loss is NaN from the second step. Fix: clipnorm=1.0."""
    length = 100
    rng = _seed(seed)
    x = rng.normal(size=(2048, length, 4)).astype(np.float32)
    y = (x[:, -5:, 0].sum(1, keepdims=True) / 2.2).astype(np.float32)
    model = keras.Sequential([
        keras.Input((length, 4)),
        keras.layers.SimpleRNN(32, activation=None, name="rnn"),
        keras.layers.Dense(1, name="out")], name="linrnn")
    _fit(logdir, model, x, y, loss="mse",
         optimizer=keras.optimizers.SGD(0.01, clipnorm=1.0 if fix else None),
         batch=32, epochs=3)


# --- vanishing_gradient


def vanishing_deep_sigmoid(logdir, seed=0, fix=False):
    """Ten Dense(32, sigmoid) layers under SGD(0.05), fit: each sigmoid
    passes at most 1/4 of the gradient, the first layers get ~1e-6 of the
    last's and the loss sits at ln 4. Fix: ReLU with He init."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 4)
    kw = dict(activation="relu", kernel_initializer="he_normal") if fix else dict(
        activation="sigmoid")
    model = _mlp(32, [32] * 10, 4, name="deepsigmoid", **kw)
    _fit(logdir, model, x, _one_hot(labels, 4),
         loss=keras.losses.CategoricalCrossentropy(from_logits=True),
         optimizer=keras.optimizers.SGD(0.05), batch=64, epochs=4)


def vanishing_tiny_init(logdir, seed=0, fix=False):
    """Eight Dense(64, tanh) layers from RandomNormal(0.01): each layer
    scales its input by ~0.08, the signal and the backward gradient shrink
    ~1e-9 through the stack, and the loss sits at ln 10. Fix: the default
    Glorot init."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    init = "glorot_uniform" if fix else keras.initializers.RandomNormal(stddev=0.01)
    model = _mlp(32, [64] * 8, 10, activation="tanh", name="tinyinit",
                 kernel_initializer=init)
    return _loop(logdir, model, keras.optimizers.SGD(0.05), _xent,
                 _batches(rng, x, _one_hot(labels, 10), 64), 400)


# --- dead_units


def dead_negative_bias(logdir, seed=0, fix=False):
    """Hidden ReLUs with bias_initializer Constant(-10), under fit: every
    pre-activation is negative on every sample, the hidden gradient is
    exactly 0, only the output bias learns and the loss sits at ln 10.
    Fix: zero bias init."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    bias = "zeros" if fix else keras.initializers.Constant(-10.0)
    model = _mlp(32, [64], 10, name="negbias", bias_initializer=bias)
    _fit(logdir, model, x, _one_hot(labels, 10),
         loss=keras.losses.CategoricalCrossentropy(from_logits=True),
         optimizer=keras.optimizers.Adam(1e-3), batch=64, epochs=4)


def saturated_sigmoid_units(logdir, seed=0, fix=False):
    """Sigmoid hidden units with bias_initializer Constant(15), under fit:
    every unit is pinned at 1 (slope ~3e-7), the hidden layer passes the
    same constant features for every input, no gradient reaches its
    weights and the loss sits at ln 10. Fix: zero bias init."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    bias = "zeros" if fix else keras.initializers.Constant(15.0)
    model = _mlp(32, [64], 10, activation="sigmoid", name="pinned", bias_initializer=bias)
    _fit(logdir, model, x, _one_hot(labels, 10),
         loss=keras.losses.CategoricalCrossentropy(from_logits=True),
         optimizer=keras.optimizers.Adam(1e-3), batch=64, epochs=4)


# --- bad_init


def bad_init_relu_std10(logdir, seed=0, fix=False):
    """A 4-layer ReLU stack with kernels from RandomNormal(stddev=10) (He
    would be ~0.3): activations grow ~50x per layer, the first loss is
    ~1e7 with every layer's gradient huge together, and SGD's first step
    overflows. Fix: he_normal."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 16, 10)
    init = "he_normal" if fix else keras.initializers.RandomNormal(stddev=10.0)
    model = _mlp(16, [32] * 4, 10, name="std10", kernel_initializer=init)
    return _loop(logdir, model, keras.optimizers.SGD(0.01), _xent,
                 _batches(rng, x, _one_hot(labels, 10), 64), 300)


def bad_init_uniform_fit(logdir, seed=0, fix=False):
    """A 6-layer, 128-wide ReLU net initialised RandomUniform(-1, 1) (~6x He
    per layer), under fit with SGD(0.01): the logits are ~1e4 at step 0,
    the first loss is huge in every layer at once and the first updates
    overflow: NaN by step ~3. Fix: he_uniform."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    init = "he_uniform" if fix else keras.initializers.RandomUniform(-1.0, 1.0)
    model = _mlp(32, [128] * 6, 10, name="uniform1", kernel_initializer=init)
    _fit(logdir, model, x, _one_hot(labels, 10),
         loss=keras.losses.CategoricalCrossentropy(from_logits=True),
         optimizer=keras.optimizers.SGD(0.01), batch=64, epochs=4)


# --- learning_rate


def adam_lr_too_high_fit(logdir, seed=0, fix=False):
    """Adam(learning_rate=0.5) on a tanh classifier under fit: every step
    moves each weight by up to 0.5, the units saturate and the loss jumps
    around ~ln 10 for the whole run without net progress. Fix: 1e-3."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    model = _mlp(32, [64], 10, activation="tanh", out_activation="softmax",
                 name="adamhigh")
    _fit(logdir, model, x, _one_hot(labels, 10), loss="categorical_crossentropy",
         optimizer=keras.optimizers.Adam(1e-3 if fix else 0.5), batch=64, epochs=6)


def lr_jump_after_warmup(logdir, seed=0, fix=False):
    """A PiecewiseConstantDecay meant as a step decay, values [0.05, 5.0] (a
    typo for 0.005) under SGD with momentum, fit: the loss falls for 200
    steps, then the jump to 5.0 blows it up. Fix: values [0.05, 0.005]."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    model = _mlp(32, [64], 10, activation="tanh", name="lrjump")
    lr = keras.optimizers.schedules.PiecewiseConstantDecay([200], [0.05, 0.005 if fix else 5.0])
    _fit(logdir, model, x, _one_hot(labels, 10),
         loss=keras.losses.CategoricalCrossentropy(from_logits=True),
         optimizer=keras.optimizers.SGD(lr, momentum=0.9), batch=64, epochs=6)


# --- bad_batch


def bad_batch_outlier_inputs(logdir, seed=0, fix=False):
    """One batch (step 300) from a glitched sensor, its inputs x8: the loss
    jumps by decades at that step and recovers within tens of steps. Fix:
    filter that batch out (here: a clean batch in its place)."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.1)
    base = _batches(rng, x, y, 64)

    def batches(step):
        xb, yb = base(step)
        if step == 300 and not fix:
            xb = 8.0 * xb
        return xb, yb
    model = _mlp(10, [32], 1, name="outlier")
    return _loop(logdir, model, keras.optimizers.Adam(3e-3), _mse, batches, 500)


def bad_batch_corrupt_chunk(logdir, seed=0, fix=False):
    """fit with shuffle=False over a file whose rows 4096-4159 (one batch)
    have targets x10 (a unit bug in one chunk): the loss spikes at the same
    step of every epoch and recovers. Fix: the chunk's targets repaired."""
    rng = _seed(seed)
    x, y = _linear(rng, 8192, 10, noise=0.1, gain=2.0)
    if not fix:
        y[4096:4160] *= 10.0
    model = _mlp(10, [32], 1, name="chunk")
    _fit(logdir, model, x, y, loss="mse", optimizer=keras.optimizers.Adam(3e-3),
         batch=64, epochs=3, shuffle=False)


# --- output_mismatch


def tanh_output_targets(logdir, seed=0, fix=False):
    """Dense(1, activation="tanh") on a regression whose targets are 0..10,
    under fit: the output saturates at 1 and the loss stalls near
    mean((y - 1)^2). Fix: a linear output."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.2, offset=5.0, gain=2.0)
    model = _mlp(10, [32], 1, out_activation=None if fix else "tanh", name="tanhout")
    _fit(logdir, model, x, y, loss="mse", optimizer=keras.optimizers.Adam(1e-2),
         batch=64, epochs=6)


# --- unknown: none of the causes (no signal to learn)


def shuffled_labels(logdir, seed=0, fix=False):
    """Labels shuffled apart from their inputs (a join on the wrong key),
    under fit: there is nothing to learn, the loss sits at ln 10 while the
    gradients stay healthy. Fix: the real labels."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    if not fix:
        labels = rng.permutation(labels)
    model = _mlp(32, [64], 10, out_activation="softmax", name="shuffled")
    _fit(logdir, model, x, _one_hot(labels, 10), loss="categorical_crossentropy",
         optimizer=keras.optimizers.Adam(1e-3), batch=64, epochs=6)


def random_targets(logdir, seed=0, fix=False):
    """A regression whose targets were drawn independently of the inputs (a
    column mix-up): the loss stalls at var(y). Fix: the real targets."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.1, gain=2.0)
    if not fix:
        y = rng.permutation(y)
    model = _mlp(10, [32], 1, name="randtargets")
    return _loop(logdir, model, keras.optimizers.Adam(3e-3), _mse,
                 _batches(rng, x, y, 64), 500)


def constant_inputs(logdir, seed=0, fix=False):
    """Every input row identical (a preprocessing bug broadcast the first
    record): the model can only learn the class prior and the loss stops at
    ln 10 with finite, shrinking gradients. Fix: the real inputs."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    if not fix:
        x = np.repeat(x[:1], len(x), axis=0)
    model = _mlp(32, [64], 10, name="constinput")
    return _loop(logdir, model, keras.optimizers.Adam(1e-3), _xent,
                 _batches(rng, x, _one_hot(labels, 10), 64), 400)


# ---------------------------------------------------------- healthy runs


def ok_noisy_small_batch(logdir, seed=0, fix=False):
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10, sep=1.0)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64], 10, name="noisy")
    return _loop(logdir, model, keras.optimizers.SGD(0.1), _xent,
                 _batches(rng, x, y, 8), 800)


def ok_slow_descent(logdir, seed=0, fix=False):
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64], 10, name="slow")
    return _loop(logdir, model, keras.optimizers.SGD(3e-3), _xent,
                 _batches(rng, x, y, 64), 800)


def ok_deep_linear_saddle(logdir, seed=0, fix=False):
    """A deep linear net from a tiny init sits near its starting loss for a
    long stretch (the saddle at 0), then learns the map abruptly."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 16, noise=0.05, gain=2.0)
    init = keras.initializers.RandomNormal(stddev=0.05)
    model = keras.Sequential([keras.Input((16,))] + [
        keras.layers.Dense(16, use_bias=False, kernel_initializer=init, name=f"d{i}")
        for i in range(4)] + [keras.layers.Dense(1, use_bias=False, kernel_initializer=init,
                                                 name="out")], name="saddle")
    return _loop(logdir, model, keras.optimizers.SGD(0.03), _mse,
                 _batches(rng, x, y, 64), 1000)


def ok_warmup_decay(logdir, seed=0, fix=False):
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64], 10, name="warmdecay")

    class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            s = tf.cast(step, tf.float32) + 1.0
            return 0.2 * tf.minimum(s / 100.0, tf.sqrt(100.0 / s))

    return _loop(logdir, model, keras.optimizers.SGD(WarmupDecay(), momentum=0.9), _xent,
                 _batches(rng, x, y, 64), 800)


def ok_large_first_loss(logdir, seed=0, fix=False):
    """Targets around 300: the first loss is ~1e5 and falls fast to ~1."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=1.0, offset=300.0, gain=20.0)
    model = _mlp(10, [32], 1, name="bigfirst")
    return _loop(logdir, model, keras.optimizers.Adam(0.1), _mse,
                 _batches(rng, x, y, 64), 600)


def ok_summed_mse_adam(logdir, seed=0, fix=False):
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.1, gain=2.0)
    model = _mlp(10, [32], 1, name="summse")

    def loss_fn(pred, yb):
        return tf.reduce_sum(tf.square(pred - yb))
    return _loop(logdir, model, keras.optimizers.Adam(1e-3), loss_fn,
                 _batches(rng, x, y, 128), 600)


def ok_nan_in_discarded_branch(logdir, seed=0, fix=False):
    """Features log-transformed with tf.where(x > 0, log(x), -1): the branch
    not taken is NaN for x <= 0 in the forward pass; it depends on the data
    only, so every gradient stays finite."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 16, 4)
    y = _one_hot(labels, 4)
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Lambda(lambda v: tf.concat(
            [v, tf.where(v > 0, tf.math.log(v), -1.0)], 1), name="logfeat"),
        keras.layers.Dense(32, activation="relu", name="d0"),
        keras.layers.Dense(4, name="out")], name="wherenan")
    return _loop(logdir, model, keras.optimizers.Adam(3e-3), _xent,
                 _batches(rng, x, y, 64), 600)


def ok_noise_floor(logdir, seed=0, fix=False):
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.5, gain=3.0)
    model = _mlp(10, [32], 1, name="floor")
    return _loop(logdir, model, keras.optimizers.Adam(3e-3), _mse,
                 _batches(rng, x, y, 64), 600)


def ok_near_zero_loss(logdir, seed=0, fix=False):
    """Separable classes under Adam: the loss goes down to 1e-5 and below."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 16, 4, sep=8.0)
    y = _one_hot(labels, 4)
    model = _mlp(16, [32], 4, name="nearzero")
    return _loop(logdir, model, keras.optimizers.Adam(1e-2), _xent,
                 _batches(rng, x, y, 64), 800)


def ok_cosine_restarts(logdir, seed=0, fix=False):
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64], 10, name="cosine")
    lr = keras.optimizers.schedules.CosineDecayRestarts(0.3, 150, t_mul=1.5)
    return _loop(logdir, model, keras.optimizers.SGD(lr, momentum=0.9), _xent,
                 _batches(rng, x, y, 64), 900)


def ok_momentum_oscillation(logdir, seed=0, fix=False):
    """Ill-conditioned linear regression under heavy momentum: the loss
    rings as it converges."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.1)
    x[:, 0] *= 3.0
    lam = 2.0 * float(np.linalg.eigvalsh(x.T @ x / len(x)).max())
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(1, name="out")],
                             name="ring")
    return _loop(logdir, model, keras.optimizers.SGD(1.0 / lam, momentum=0.95), _mse,
                 _batches(rng, x, y, 128), 600)


def ok_keras_fit(logdir, seed=0, fix=False):
    """A plain Keras fit of a small classifier (the callback's path)."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    model = _mlp(32, [64], 10, out_activation="softmax", name="fitok")
    _fit(logdir, model, x, _one_hot(labels, 10), loss="categorical_crossentropy",
         optimizer=keras.optimizers.Adam(1e-3), batch=64, epochs=8)


def _broken(train, expect, family, source, cause, fix, also=()):
    return CorpusRun(train, expect, family, source, cause=cause, fix=fix,
                     also=also)


RUNS = {
    # --- broken: each labelled with its true cause and the fix fix=True applies
    # adam_epsilon
    "adam_epsilon_exact_fit": _broken(
        adam_epsilon_exact_fit, "spike", "adam_eps_low_loss",
        "GitHub wavenet/tf: Adam loss jumps after long training near zero loss, fixed by a larger epsilon",
        "adam_epsilon", "Adam epsilon 1e-10 -> 3e-2", also=("instability",)),
    "adam_epsilon_float16": _broken(
        adam_epsilon_float16, "nonfinite", "adam_eps_float16",
        "GitHub keras #11860: Adam does not work with FP16 (loss nan), epsilon below half precision",
        "adam_epsilon", "Adam epsilon 1e-8 -> 1e-4"),
    # summed_loss
    "summed_loss_sgd": _broken(
        summed_loss_sgd, "plateau", "summed_ce_sgd",
        "SO: Why does TensorFlow example fail when increasing batch size? (reduce_sum cross-entropy, SGD)",
        "summed_loss", "reduce_sum -> reduce_mean"),
    "summed_mse_large_batch": _broken(
        summed_mse_large_batch, "nonfinite", "summed_mse_sgd",
        "SO: cannot optimise with tf.reduce_sum() but can with tf.reduce_mean() (squared error, SGD diverges)",
        "summed_loss", "reduce_sum -> reduce_mean"),
    "summed_loss_fit": _broken(
        summed_loss_fit, "nonfinite", "summed_reduction_fit",
        "GitHub keras: loss with reduction='sum' trains far worse than the mean with the same SGD lr",
        "summed_loss", "reduction='sum' -> 'sum_over_batch_size'"),
    # log_zero
    "log_zero_softmax": _broken(
        log_zero_softmax, "nonfinite", "log_softmax_handwritten",
        "SO: Train neural network: mathematical reason for NaN (-reduce_sum(y_*tf.log(y)), 0 * log 0)",
        "log_zero", "hand-written log(softmax) -> softmax_cross_entropy_with_logits"),
    "log_zero_sigmoid": _broken(
        log_zero_sigmoid, "nonfinite", "log_sigmoid_handwritten",
        "SO: custom binary cross-entropy with log(sigmoid) returns nan, from_logits version works",
        "log_zero", "hand-written log(sigmoid) BCE -> sigmoid_cross_entropy_with_logits"),
    "log_zero_custom_keras_loss": _broken(
        log_zero_custom_keras_loss, "nonfinite", "log_custom_keras_loss",
        "SO: Keras custom binary cross-entropy loss becomes nan, the built-in binary_crossentropy does not",
        "log_zero", "custom -mean(y log p + (1-y) log(1-p)) -> built-in binary_crossentropy"),
    # nonfinite_gradient
    "nonfinite_grad_contrastive": _broken(
        nonfinite_grad_contrastive, "nonfinite", "norm_at_zero_loss",
        "GitHub TF #30199: triplet loss gradient NaN when a positive equals its anchor (tf.norm at 0)",
        "nonfinite_gradient", "tf.norm(a - b) -> sqrt(sum((a - b)^2) + 1e-12)"),
    "nonfinite_grad_sqrt_layer": _broken(
        nonfinite_grad_sqrt_layer, "nonfinite", "sqrt_at_zero_layer",
        "SO: NaN gradients from a custom layer using tf.sqrt, the forward pass is finite",
        "nonfinite_gradient", "sqrt(relu(h)) -> sqrt(relu(h) + 1e-6)"),
    # nonfinite_input
    "silent_nan_masked_loss": _broken(
        silent_nan_masked_loss, "nonfinite", "nan_target_masked",
        "GitHub TF: tf.where masking of NaN losses still gives NaN gradients (0 * NaN)",
        "nonfinite_input", "the row with the NaN target dropped"),
    "nonfinite_input_nan_rows": _broken(
        nonfinite_input_nan_rows, "nonfinite", "nan_rows_x",
        "SO: Keras regression loss is nan from the first epoch, the CSV has missing values",
        "nonfinite_input", "rows with NaN dropped"),
    "nonfinite_input_log_feature": _broken(
        nonfinite_input_log_feature, "nonfinite", "inf_feature",
        "SO: loss nan after np.log on a feature with zeros (-inf in the inputs)",
        "nonfinite_input", "log(amount) -> log1p(amount)"),
    # unnormalized_inputs
    "unscaled_inputs_lnc": _broken(
        unscaled_inputs_lnc, "plateau", "raw_pixels",
        "SO: MLP on raw 0-255 pixels, loss stuck at 2.3026, accuracy 10%",
        "unnormalized_inputs", "pixels standardised per feature ((x - mean) / std)"),
    "imbalanced_prior": _broken(
        imbalanced_prior, "plateau", "raw_amounts_all_features",
        "SO: binary classifier on imbalanced data stuck at one loss, predicts only the majority class",
        "unnormalized_inputs", "inputs standardised per feature"),
    "one_feature_other_units": _broken(
        one_feature_other_units, "nonfinite", "one_feature_other_units",
        "SO: Keras regression loss nan with SGD, one feature (price/income) in the tens of thousands",
        "unnormalized_inputs", "the income feature standardised"),
    # exploding_gradient
    "exploding_relu_rnn": _broken(
        exploding_relu_rnn, "nonfinite", "relu_rnn_no_clipping",
        "SO: SimpleRNN with relu activation, loss becomes inf/nan after the first batches (no clipnorm)",
        "exploding_gradient", "SGD clipnorm=1.0"),
    "exploding_linear_rnn_fit": _broken(
        exploding_linear_rnn_fit, "nonfinite", "linear_rnn_long_sequences",
        "Keras/TF issues: SimpleRNN(activation=None) or a linear recurrence over long sequences, "
        "loss nan from the first epoch under SGD; gradient clipping fixes it",
        "exploding_gradient", "SGD clipnorm=1.0"),
    # vanishing_gradient
    "vanishing_deep_sigmoid": _broken(
        vanishing_deep_sigmoid, "plateau", "deep_sigmoid_stack",
        "SO: deep network with sigmoid activations does not learn, loss constant (vanishing gradients)",
        "vanishing_gradient", "sigmoid -> relu with he_normal init"),
    "vanishing_tiny_init": _broken(
        vanishing_tiny_init, "plateau", "tiny_init_deep_tanh",
        "SO: deep tanh network initialised with stddev 0.01 never learns (activations shrink to 0)",
        "vanishing_gradient", "RandomNormal(0.01) -> glorot_uniform"),
    # dead_units
    "dead_negative_bias": _broken(
        dead_negative_bias, "plateau", "negative_bias_init",
        "SO: all ReLU outputs zero, model predicts one class (negative bias initialisation)",
        "dead_units", "bias init Constant(-10) -> zeros"),
    "saturated_sigmoid_units": _broken(
        saturated_sigmoid_units, "plateau", "sigmoid_pinned_bias_init",
        "SO: sigmoid hidden layer outputs all 1.0, the network predicts one class (saturated units)",
        "dead_units", "bias init Constant(15) -> zeros"),
    "regression_dead_relu": _broken(
        regression_dead_relu, "plateau", "relu_killed_uncentred_targets",
        "SO: Keras regression loss stuck, every prediction the same value (dead ReLUs)",
        "learning_rate", "SGD lr 0.01 -> 1e-3 (momentum 0.9 kept)"),
    # bad_init
    "bad_init_relu_std10": _broken(
        bad_init_relu_std10, "nonfinite", "normal_std10_relu",
        "SO: loss is huge from the first step then nan, weights initialised with stddev 10",
        "bad_init", "RandomNormal(stddev=10) -> he_normal"),
    "bad_init_uniform_fit": _broken(
        bad_init_uniform_fit, "nonfinite", "uniform_pm1_wide_relu",
        "SO: RandomUniform(-1, 1) initializer, loss enormous at the first batch and nan right after",
        "bad_init", "RandomUniform(-1, 1) -> he_uniform"),
    # learning_rate
    "divergence_sgd_mse": _broken(
        divergence_sgd_mse, "divergence", "sgd_past_stability_limit",
        "SO: linear regression with gradient descent, loss grows to inf then nan (lr too high)",
        "learning_rate", "SGD lr 2.3/lambda_max -> 1/lambda_max"),
    "lr_growing_schedule": _broken(
        lr_growing_schedule, "divergence", "growing_schedule",
        "SO: loss decreases then increases steadily (learning-rate schedule that grows)",
        "learning_rate", "ExponentialDecay decay_rate 1.5 -> 0.9"),
    "blowup_then_stall": _broken(
        blowup_then_stall, "plateau", "warmup_peak_too_high",
        "SO: loss drops at first, jumps, then stays at 2.30 forever (Adam lr too high)",
        "learning_rate", "warm-up peak 0.3 -> 3e-3"),
    # The loss of these two jumps from step to step but its block medians
    # sit flat, at (Adam) or 3-6x above (SGD) its first steps' level: what
    # the chart shows first is a run that stopped learning. The kind
    # "instability" (returns far above the best) is on planted series in
    # tests/test_stalls.py.
    "chronic_sgd_momentum": _broken(
        chronic_sgd_momentum, "plateau", "sgd_momentum_too_high",
        "SO: loss jumps up and down and never decreases with SGD momentum and a big lr",
        "learning_rate", "SGD lr 2.0 -> 0.02"),
    "chronic_adam": _broken(
        chronic_adam, "plateau", "adam_too_high",
        "SO: loss fluctuating wildly with Adam, lr 0.1+, no convergence",
        "learning_rate", "Adam lr 0.3 -> 1e-3"),
    "adam_lr_too_high_fit": _broken(
        adam_lr_too_high_fit, "plateau", "adam_too_high_fit",
        "SO: Keras classifier with Adam(lr=0.5) loss jumps around and never decreases, fine at 1e-3",
        "learning_rate", "Adam lr 0.5 -> 1e-3"),
    "lr_jump_after_warmup": _broken(
        lr_jump_after_warmup, "divergence", "schedule_jump",
        "SO: loss explodes right at a PiecewiseConstantDecay boundary (the schedule raises the lr)",
        "learning_rate", "PiecewiseConstantDecay values [0.05, 5.0] -> [0.05, 0.005]"),
    # bad_batch
    "spike_train": _broken(
        spike_train, "spike", "bad_shard_periodic",
        "GitHub/SO: periodic loss spikes from a bad data shard (targets in another unit)",
        "bad_batch", "the shard's targets in the right unit"),
    "bad_batch_outlier_inputs": _broken(
        bad_batch_outlier_inputs, "spike", "outlier_input_batch",
        "SO: a sudden loss spike in the middle of training that recovers (one batch of outliers)",
        "bad_batch", "the outlier batch filtered out"),
    "bad_batch_corrupt_chunk": _broken(
        bad_batch_corrupt_chunk, "spike", "corrupt_chunk_each_epoch",
        "SO #47824598: Why does my training loss have regular spikes? (once per pass, one batch out of scale)",
        "bad_batch", "the corrupt chunk's targets repaired"),
    # output_mismatch
    "frozen_softmax_bce": _broken(
        frozen_softmax_bce, "plateau", "softmax_width1",
        "SO: Dense(1, activation='softmax') with binary_crossentropy, accuracy stuck at 50%",
        "output_mismatch", "softmax -> sigmoid output"),
    "frozen_cce_width1": _broken(
        frozen_cce_width1, "plateau", "cce_width1",
        "SO: categorical_crossentropy with one output unit, loss 0.0000 from the first epoch",
        "output_mismatch", "softmax + categorical_crossentropy -> sigmoid + binary_crossentropy"),
    "frozen_relu_output": _broken(
        frozen_relu_output, "plateau", "relu_output_negative_targets",
        "SO: regression with relu on the output layer, loss never changes",
        "output_mismatch", "relu -> linear output"),
    "sigmoid_output_regression": _broken(
        sigmoid_output_regression, "plateau", "bounded_output_sigmoid",
        "SO: regression with sigmoid output and targets >1, loss stuck at a large value",
        "output_mismatch", "sigmoid -> linear output"),
    "tanh_output_targets": _broken(
        tanh_output_targets, "plateau", "bounded_output_tanh",
        "SO: Keras regression with tanh output layer, predictions never exceed 1, loss stuck",
        "output_mismatch", "tanh -> linear output"),
    # unknown: no cause id applies
    "shuffled_labels": _broken(
        shuffled_labels, "plateau", "no_signal_labels",
        "SO: loss stuck at 2.30 whatever the model, labels misaligned with the images",
        "unknown", "the real labels"),
    "random_targets": _broken(
        random_targets, "plateau", "no_signal_targets",
        "SO: regression loss does not decrease below the target variance (targets shuffled in a merge)",
        "unknown", "the real targets"),
    "constant_inputs": _broken(
        constant_inputs, "plateau", "no_signal_inputs",
        "SO: model predicts the same class for every input, every input row identical after preprocessing",
        "unknown", "the real inputs"),
    # healthy
    "ok_noisy_small_batch": CorpusRun(
        ok_noisy_small_batch, None, "healthy_noisy",
        "control: noisy small-batch SGD"),
    "ok_slow_descent": CorpusRun(
        ok_slow_descent, None, "healthy_slow",
        "control: slow steady descent at a tiny learning rate"),
    "ok_deep_linear_saddle": CorpusRun(
        ok_deep_linear_saddle, None, "healthy_delayed",
        "control: deep linear net from small init, long flat stretch then a sudden drop (Saxe et al.)"),
    "ok_warmup_decay": CorpusRun(
        ok_warmup_decay, None, "healthy_schedule",
        "control: linear warm-up then inverse-sqrt decay"),
    "ok_large_first_loss": CorpusRun(
        ok_large_first_loss, None, "healthy_fast_start",
        "control: a huge first loss that falls fast"),
    "ok_summed_mse_adam": CorpusRun(
        ok_summed_mse_adam, None, "healthy_summed_adam",
        "control: summed loss under Adam (scale invariant)"),
    "ok_nan_in_discarded_branch": CorpusRun(
        ok_nan_in_discarded_branch, None, "healthy_where_nan",
        "control: NaN only in the discarded tf.where branch, finite gradients"),
    "ok_noise_floor": CorpusRun(
        ok_noise_floor, None, "healthy_noise_floor",
        "control: regression converging to its noise floor"),
    "ok_near_zero_loss": CorpusRun(
        ok_near_zero_loss, None, "healthy_near_zero",
        "control: classifier reaching loss 1e-5 and below"),
    "ok_cosine_restarts": CorpusRun(
        ok_cosine_restarts, None, "healthy_schedule",
        "control: cosine decay with warm restarts"),
    "ok_momentum_oscillation": CorpusRun(
        ok_momentum_oscillation, None, "healthy_momentum",
        "control: heavy momentum ringing but converging"),
    "ok_keras_fit": CorpusRun(
        ok_keras_fit, None, "healthy_fit",
        "control: plain Keras fit with StabilityCallback"),
}

BROKEN = {k: v for k, v in RUNS.items() if v.expect is not None}
HEALTHY = {k: v for k, v in RUNS.items() if v.expect is None}


# Rough training seconds of the slow runs on a 2-core CPU (one thread), to
# split the work between workers; the others take about _COST_DEFAULT.
_COST = {"adam_epsilon_exact_fit": 12.0, "adam_epsilon_exact_fit-fixed": 8.0,
         "exploding_relu_rnn-fixed": 5.0, "exploding_linear_rnn_fit": 8.0,
         "exploding_linear_rnn_fit-fixed": 8.0,
         "spike_train": 5.0, "spike_train-fixed": 5.0, "blowup_then_stall": 5.0,
         "blowup_then_stall-fixed": 5.0, "ok_cosine_restarts": 5.0,
         "ok_deep_linear_saddle": 5.0, "ok_noisy_small_batch": 5.0}
_COST_DEFAULT = 3.0
FIXED = "-fixed"


def _targets(names, fixed):
    """The run directories to train: each name, and its contrast if asked."""
    out = []
    for name in names:
        out.append(name)
        if fixed and RUNS[name].expect is not None:
            out.append(name + FIXED)
    return out


def train_one(logdir, target, seed=0):
    """Trains one target ("name" or "name-fixed") into logdir/target."""
    fix = target.endswith(FIXED)
    name = target[:-len(FIXED)] if fix else target
    RUNS[name].train(os.path.join(str(logdir), target), seed=seed, fix=fix)


def _split(targets, jobs):
    """Longest first onto the least loaded of `jobs` lists."""
    loads = [[0.0, []] for _ in range(jobs)]
    for t in sorted(targets, key=lambda t: -_COST.get(t, _COST_DEFAULT)):
        slot = min(loads, key=lambda s: s[0])
        slot[0] += _COST.get(t, _COST_DEFAULT)
        slot[1].append(t)
    return [s[1] for s in loads if s[1]]


def train_all(logdir, names=None, seed=0, log=None, fixed=False, jobs=1):
    """Trains `names` (default all) into logdir/<name>, and with `fixed` each
    broken run's contrast (fix=True) into logdir/<name>-fixed.

    `jobs` > 1 trains in that many worker processes (tests/scripts/
    train_corpus.py, one TF thread each). Returns {run directory: seconds}.
    """
    import time  # pylint: disable=import-outside-toplevel

    targets = _targets(names or list(RUNS), fixed)
    if jobs > 1:
        return _train_parallel(logdir, targets, seed, log, jobs)
    times = {}
    for target in targets:
        t = time.perf_counter()
        train_one(logdir, target, seed=seed)
        times[target] = time.perf_counter() - t
        if log:
            log(f"{target}: {times[target]:.1f}s")
    return times


def _train_parallel(logdir, targets, seed, log, jobs):
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts",
                          "train_corpus.py")
    env = dict(os.environ, TB_STABILITY_THREADS="1")
    workers = []
    for part in _split(targets, jobs):
        err = tempfile.TemporaryFile()
        cmd = [sys.executable, script, str(logdir), "--only", ",".join(part),
               "--seed", str(seed), "--no-report", "--targets"]
        workers.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                         env=env, text=True), err))
    times, failed = {}, []
    for proc, err in workers:
        for line in proc.stdout:
            name, sep, secs = line.strip().rpartition(": ")
            if sep and secs.endswith("s") and name in targets:
                times[name] = float(secs[:-1])
                if log:
                    log(line.rstrip())
        if proc.wait() != 0:
            err.seek(0)
            failed.append(f"worker exit {proc.returncode}:\n"
                          + err.read().decode(errors="replace")[-4000:])
        err.close()
    if failed:
        raise RuntimeError("corpus worker failed: " + "\n".join(failed))
    return times
