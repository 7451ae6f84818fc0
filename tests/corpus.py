"""A corpus of small real training runs, broken and healthy, for the detector.

Each entry of `RUNS` trains one run into a log directory with tb_stability
(`Monitor` in a custom loop, or `StabilityCallback` under `fit`), on
synthetic data, with fixed seeds (a few seconds each on a 2-core CPU). Every
train function takes `(logdir, seed=0)` and returns the per-step losses it
saw (None under `fit`, where the recorder is the only record).

`expect` is the anomaly kind a person would point at first on the chart
(`detect.Anomaly.kind`: "spike", "divergence", "nonfinite", "plateau",
"instability"), None for a healthy control, which must raise no anomaly.
`family` groups runs of one mechanism; `source` names, in one line, the
family of public reports the run re-creates (the code is our own).

    python tests/scripts/train_corpus.py /tmp/corpus_logs   # one dir per run
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
    train: Callable
    expect: Optional[str]
    family: str
    source: str


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


def regression_dead_relu(logdir, seed=0):
    """Targets around 35 (not centred), SGD(0.01, momentum 0.9): the first
    steps overshoot and kill every ReLU; only the output bias learns, so the
    loss stalls at var(y), the error of predicting the mean, 50x above the
    noise floor. (Chaotic: seeds 0-2 stall, some others reach NaN.)"""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.3, offset=35.0, gain=3.0)
    model = _mlp(10, [32, 32], 1, name="deadreg")
    return _loop(logdir, model, keras.optimizers.SGD(0.01, momentum=0.9), _mse,
                 _batches(rng, x, y, 64), 500)


def imbalanced_prior(logdir, seed=0):
    """5% positives, positive raw-unit features (amounts ~1000) under
    SGD(0.1): the first update kills the hidden ReLUs, the output learns
    the prior and the loss stalls at the label entropy H(0.05) ~ 0.2."""
    rng = _seed(seed)
    n = 4096
    labels = (rng.random(n) < 0.05).astype(np.float32)
    z = rng.normal(size=(n, 16)) + 1.5 * labels[:, None] * (np.arange(16) < 4)
    x = (1000.0 * np.exp(0.5 * z)).astype(np.float32)
    model = _mlp(16, [32], 1, out_activation="sigmoid", name="imbalanced")
    _fit(logdir, model, x, labels[:, None], loss="binary_crossentropy",
         optimizer=keras.optimizers.SGD(0.1), batch=128, epochs=16)


def summed_loss_sgd(logdir, seed=0):
    """Cross-entropy summed over a batch of 64 under SGD(0.05): a 64x step
    kills the ReLUs, the output stays at the prior: loss ~ 64 ln 10 = 147."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    x = 1.0 / (1.0 + np.exp(-2.0 * x))  # intensities in (0, 1)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64], 10, name="summed")

    def loss_fn(logits, yb):
        return tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(yb, logits))
    return _loop(logdir, model, keras.optimizers.SGD(0.05), loss_fn,
                 _batches(rng, x, y, 64), 400)


def blowup_then_stall(logdir, seed=0):
    """Adam with a linear warm-up to a peak lr of 0.3 (far too high): the
    loss falls to ~0.3 in the first tens of steps, blows up as the lr
    grows, the ReLUs die and it settles at ln 10, far above its minimum."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64, 64], 10, name="blowstall")
    return _loop(logdir, model, keras.optimizers.Adam(_Warmup(0.3, 200)), _xent,
                 _batches(rng, x, y, 64), 600)


def chronic_sgd_momentum(logdir, seed=0):
    """SGD(lr 2, momentum 0.9) on a tanh MLP: the loss keeps jumping back far
    above its running minimum for the whole run, without net progress."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64], 10, activation="tanh", name="chronicsgd")
    return _loop(logdir, model, keras.optimizers.SGD(2.0, momentum=0.9), _xent,
                 _batches(rng, x, y, 64), 600)


def chronic_adam(logdir, seed=0):
    """Adam(0.3) on a tanh MLP: chronic instability, no net progress."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64], 10, activation="tanh", name="chronicadam")
    return _loop(logdir, model, keras.optimizers.Adam(0.3), _xent,
                 _batches(rng, x, y, 64), 600)


def frozen_softmax_bce(logdir, seed=0):
    """Dense(1, activation="softmax") and a binary cross-entropy on its
    probabilities: the output is always 1, every gradient is exactly zero,
    the loss is -log(eps) times the batch's share of negatives. (Keras 3's
    compiled binary_crossentropy reads the softmax's logits and trains; the
    tf.keras 2 report, and any loss on the probabilities, is frozen.)"""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 16, 2)
    y = labels[:, None].astype(np.float32)
    model = _mlp(16, [16], 1, out_activation="softmax", name="softmax1")

    def loss_fn(p, yb):
        p = tf.clip_by_value(p, 1e-7, 1.0 - 1e-7)
        return -tf.reduce_mean(yb * tf.math.log(p) + (1.0 - yb) * tf.math.log(1.0 - p))
    return _loop(logdir, model, keras.optimizers.Adam(1e-3), loss_fn,
                 _batches(rng, x, y, 64), 300)


def frozen_cce_width1(logdir, seed=0):
    """categorical_crossentropy over a width-1 softmax with 0/1 labels, under
    fit: log_softmax of one logit is 0, so the loss reads exactly 0 at every
    step (while the weights still move: the op's gradient softmax - y
    assumes the labels sum to 1)."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 1536, 16, 2)
    model = _mlp(16, [16], 1, out_activation="softmax", name="cce1")
    _fit(logdir, model, x, labels[:, None].astype(np.float32),
         loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(1e-3),
         batch=64, epochs=6)


def frozen_relu_output(logdir, seed=0):
    """A regression with a ReLU on its output and mostly negative targets,
    full batch: the output unit dies within a few steps, then the loss is
    constant to every digit and every gradient is zero."""
    rng = _seed(seed)
    x, y = _linear(rng, 512, 8, noise=0.1, offset=-3.0)
    model = _mlp(8, [16], 1, out_activation="relu", name="reluout")
    return _loop(logdir, model, keras.optimizers.Adam(0.01), _mse,
                 lambda step: (x, y), 400)


def silent_nan_masked_loss(logdir, seed=0):
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


def unscaled_inputs_lnc(logdir, seed=0):
    """8x8 "pixels" in 0..255 into a ReLU MLP under SGD(0.01): the first
    update overshoots, the ReLUs die, the loss pins at ln 10."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 64, 10)
    x = np.clip(255.0 * (0.5 + 0.2 * x), 0, 255).astype(np.float32)
    y = _one_hot(labels, 10)
    model = _mlp(64, [64], 10, name="unscaled")
    return _loop(logdir, model, keras.optimizers.SGD(0.01), _xent,
                 _batches(rng, x, y, 64), 600)


def spike_train(logdir, seed=0):
    """One data shard has its targets in the wrong unit (x30): each time a
    batch from it comes (every 120 steps) the loss jumps and recovers."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.1)
    base = _batches(rng, x, y, 64)

    def batches(step):
        xb, yb = base(step)
        if step % 120 == 100:
            yb = 30.0 * yb
        return xb, yb
    model = _mlp(10, [32], 1, name="spiketrain")
    return _loop(logdir, model, keras.optimizers.Adam(3e-3), _mse, batches, 720)


def divergence_sgd_mse(logdir, seed=0):
    """Linear regression, SGD a little past the stability limit 2/lambda_max:
    the error grows ~1.3x per step until it overflows."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.1)
    x[:, 0] *= 3.0  # one stiff direction
    # MSE Hessian 2 E[x x^T]: largest eigenvalue ~ 2 * 9 = 18.
    lam = 2.0 * float(np.linalg.eigvalsh(x.T @ x / len(x)).max())
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(1, name="out")],
                             name="divsgd")
    return _loop(logdir, model, keras.optimizers.SGD(2.3 / lam), _mse,
                 _batches(rng, x, y, 128), 400)


def sigmoid_output_regression(logdir, seed=0):
    """Targets in 10..90 behind a sigmoid output: the output saturates at 1,
    the loss stalls at mean((y - 1)^2)."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=1.0, offset=50.0, gain=15.0)
    model = _mlp(10, [32], 1, out_activation="sigmoid", name="sigreg")
    return _loop(logdir, model, keras.optimizers.Adam(1e-3), _mse,
                 _batches(rng, x, y, 64), 500)


def lr_growing_schedule(logdir, seed=0):
    """ExponentialDecay with decay_rate 1.5 (a growing learning rate): the
    loss falls, then rises without recovering."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64], 10, activation="tanh", name="growlr")
    lr = keras.optimizers.schedules.ExponentialDecay(0.01, 20, 1.5)
    return _loop(logdir, model, keras.optimizers.SGD(lr), _xent,
                 _batches(rng, x, y, 64), 600)


# ---------------------------------------------------------- healthy runs


def ok_noisy_small_batch(logdir, seed=0):
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10, sep=1.0)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64], 10, name="noisy")
    return _loop(logdir, model, keras.optimizers.SGD(0.1), _xent,
                 _batches(rng, x, y, 8), 800)


def ok_slow_descent(logdir, seed=0):
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64], 10, name="slow")
    return _loop(logdir, model, keras.optimizers.SGD(3e-3), _xent,
                 _batches(rng, x, y, 64), 800)


def ok_deep_linear_saddle(logdir, seed=0):
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


def ok_warmup_decay(logdir, seed=0):
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


def ok_large_first_loss(logdir, seed=0):
    """Targets around 300: the first loss is ~1e5 and falls fast to ~1."""
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=1.0, offset=300.0, gain=20.0)
    model = _mlp(10, [32], 1, name="bigfirst")
    return _loop(logdir, model, keras.optimizers.Adam(0.1), _mse,
                 _batches(rng, x, y, 64), 600)


def ok_summed_mse_adam(logdir, seed=0):
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.1, gain=2.0)
    model = _mlp(10, [32], 1, name="summse")

    def loss_fn(pred, yb):
        return tf.reduce_sum(tf.square(pred - yb))
    return _loop(logdir, model, keras.optimizers.Adam(1e-3), loss_fn,
                 _batches(rng, x, y, 128), 600)


def ok_nan_in_discarded_branch(logdir, seed=0):
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


def ok_noise_floor(logdir, seed=0):
    rng = _seed(seed)
    x, y = _linear(rng, 4096, 10, noise=0.5, gain=3.0)
    model = _mlp(10, [32], 1, name="floor")
    return _loop(logdir, model, keras.optimizers.Adam(3e-3), _mse,
                 _batches(rng, x, y, 64), 600)


def ok_near_zero_loss(logdir, seed=0):
    """Separable classes under Adam: the loss goes down to 1e-5 and below."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 16, 4, sep=8.0)
    y = _one_hot(labels, 4)
    model = _mlp(16, [32], 4, name="nearzero")
    return _loop(logdir, model, keras.optimizers.Adam(1e-2), _xent,
                 _batches(rng, x, y, 64), 800)


def ok_cosine_restarts(logdir, seed=0):
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    y = _one_hot(labels, 10)
    model = _mlp(32, [64], 10, name="cosine")
    lr = keras.optimizers.schedules.CosineDecayRestarts(0.3, 150, t_mul=1.5)
    return _loop(logdir, model, keras.optimizers.SGD(lr, momentum=0.9), _xent,
                 _batches(rng, x, y, 64), 900)


def ok_momentum_oscillation(logdir, seed=0):
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


def ok_keras_fit(logdir, seed=0):
    """A plain Keras fit of a small classifier (the callback's path)."""
    rng = _seed(seed)
    x, labels = _blobs(rng, 4096, 32, 10)
    model = _mlp(32, [64], 10, out_activation="softmax", name="fitok")
    _fit(logdir, model, x, _one_hot(labels, 10), loss="categorical_crossentropy",
         optimizer=keras.optimizers.Adam(1e-3), batch=64, epochs=8)


RUNS = {
    # broken
    "regression_dead_relu": CorpusRun(
        regression_dead_relu, "plateau", "stall_constant_prediction",
        "SO: Keras regression loss stuck, every prediction the same value (dead ReLUs)"),
    "imbalanced_prior": CorpusRun(
        imbalanced_prior, "plateau", "stall_label_entropy",
        "SO: binary classifier on imbalanced data stuck at one loss, predicts only the majority class"),
    "summed_loss_sgd": CorpusRun(
        summed_loss_sgd, "plateau", "stall_summed_loss",
        "SO: TF tutorial loss reduce_sum(cross-entropy) stuck / NaN with a larger batch under SGD"),
    "blowup_then_stall": CorpusRun(
        blowup_then_stall, "plateau", "blowup_stall",
        "SO: loss drops at first, jumps, then stays at 2.30 forever (Adam lr too high)"),
    # The loss of these two jumps from step to step but its block medians
    # sit flat, at (Adam) or 3-6x above (SGD) its first steps' level: what
    # the chart shows first is a run that stopped learning. The kind
    # "instability" (returns far above the best) is on planted series in
    # tests/test_stalls.py.
    "chronic_sgd_momentum": CorpusRun(
        chronic_sgd_momentum, "plateau", "noisy_stall_high_lr",
        "SO: loss jumps up and down and never decreases with SGD momentum and a big lr"),
    "chronic_adam": CorpusRun(
        chronic_adam, "plateau", "noisy_stall_high_lr",
        "SO: loss fluctuating wildly with Adam, lr 0.1+, no convergence"),
    "frozen_softmax_bce": CorpusRun(
        frozen_softmax_bce, "plateau", "frozen_output_mismatch",
        "SO: Dense(1, activation='softmax') with binary_crossentropy, accuracy stuck at 50%"),
    "frozen_cce_width1": CorpusRun(
        frozen_cce_width1, "plateau", "frozen_output_mismatch",
        "SO: categorical_crossentropy with one output unit, loss 0.0000 from the first epoch"),
    "frozen_relu_output": CorpusRun(
        frozen_relu_output, "plateau", "frozen_dead_output",
        "SO: regression with relu on the output layer, loss never changes"),
    "silent_nan_masked_loss": CorpusRun(
        silent_nan_masked_loss, "nonfinite", "silent_nan",
        "GitHub TF: tf.where masking of NaN losses still gives NaN gradients (0 * NaN)"),
    "unscaled_inputs_lnc": CorpusRun(
        unscaled_inputs_lnc, "plateau", "stall_ln_c",
        "SO: MLP on raw 0-255 pixels, loss stuck at 2.3026, accuracy 10%"),
    "spike_train": CorpusRun(
        spike_train, "spike", "spike_train",
        "GitHub/SO: periodic loss spikes from a bad data shard (targets in another unit)"),
    "divergence_sgd_mse": CorpusRun(
        divergence_sgd_mse, "divergence", "divergence",
        "SO: linear regression with gradient descent, loss grows to inf then nan (lr too high)"),
    "sigmoid_output_regression": CorpusRun(
        sigmoid_output_regression, "plateau", "stall_output_bound",
        "SO: regression with sigmoid output and targets >1, loss stuck at a large value"),
    "lr_growing_schedule": CorpusRun(
        lr_growing_schedule, "divergence", "divergence",
        "SO: loss decreases then increases steadily (learning-rate schedule that grows)"),
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


def train_all(logdir, names=None, seed=0, log=None):
    """Trains `names` (default all) into logdir/<name>; {name: seconds}."""
    import time  # pylint: disable=import-outside-toplevel

    times = {}
    for name in names or RUNS:
        t = time.perf_counter()
        RUNS[name].train(os.path.join(str(logdir), name), seed=seed)
        times[name] = time.perf_counter() - t
        if log:
            log(f"{name}: {times[name]:.1f}s")
    return times
