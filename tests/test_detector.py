"""The online in-graph detector on planted series."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tb_stability import metadata
from tb_stability.record import recorder as _recorder


@pytest.fixture
def detect(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    rec = _recorder.Recorder(None, keras.optimizers.Adam(), model.trainable_variables)
    detector = rec.detector

    @tf.function
    def step(loss, grad, rms, nonfinite):
        state = detector.read()
        outliers = detector.outliers(state, loss, grad)
        flags, state, _ = detector.detect(state, loss, outliers, rms, nonfinite,
                                          tf.constant(True))
        detector.assign(state)
        return flags

    def run(loss, grad=None, rms=None, nonfinite=None):
        n = len(loss)
        grad = np.ones(n) if grad is None else grad
        rms = np.ones(n) if rms is None else rms
        nonfinite = np.zeros(n) if nonfinite is None else nonfinite
        return np.array([
            int(step(*(tf.constant(v[i], tf.float32) for v in (loss, grad, rms, nonfinite))))
            for i in range(n)
        ])

    return run


def test_noisy_small_batch_losses_raise_nothing(detect):
    rng = np.random.default_rng(0)
    loss = 0.5 * np.exp(rng.normal(0, 0.4, size=1500))  # heavy batch noise
    grad = 2.0 * np.exp(rng.normal(0, 0.4, size=1500))
    assert not detect(loss, grad).any()


def test_fast_early_descent_over_fifteen_decades(detect):
    loss = np.logspace(4, -11, 600) * np.exp(np.random.default_rng(1).normal(0, 0.1, 600))
    assert not detect(loss).any()


@pytest.mark.parametrize("level", [1e-10, 1.0, 1e3])
def test_one_step_spike_flagged_at_its_step(detect, level):
    rng = np.random.default_rng()
    k = int(rng.integers(100, 400))
    loss = level * np.exp(rng.normal(0, 0.2, size=500))
    loss[k] *= 100.0
    flags = detect(loss)
    assert list(np.flatnonzero(flags & metadata.FLAG_LOSS_JUMP)) == [k]


def test_gradient_outlier_and_nonfinite(detect):
    n = 200
    grad = np.ones(n)
    grad[150] = 1e4
    loss = np.ones(n)
    loss[180] = np.nan
    flags = detect(loss, grad)
    assert list(np.flatnonzero(flags & metadata.FLAG_GRAD_OUTLIER)) == [150]
    assert list(np.flatnonzero(flags & metadata.FLAG_NONFINITE)) == [180]


def test_nan_at_step_zero(detect):
    flags = detect(np.array([np.nan, 1.0, 1.0]))
    assert flags[0] & metadata.FLAG_NONFINITE and not flags[1:].any()


def test_rms_ratio_needs_two_consecutive_steps(detect):
    rms = np.ones(60)
    rms[20] = 25.0  # one noisy step: not flagged
    rms[40:43] = 25.0  # sustained: flagged from the second step on
    flags = detect(np.ones(60), rms=rms)
    assert list(np.flatnonzero(flags & metadata.FLAG_RMS_RATIO)) == [41, 42]


def test_slow_geometric_rise_flagged_once(detect):
    rng = np.random.default_rng(2)
    base = 1e-13 * np.exp(rng.normal(0, 0.5, size=700))
    rise = np.ones(700)
    rise[400:] = np.exp(0.06 * np.arange(300))  # +6% per step, for good
    flags = detect(base * rise)
    rises = np.flatnonzero(flags & metadata.FLAG_LOSS_RISE)
    assert len(rises) == 1 and 440 < rises[0] < 520, rises
    assert not (flags[:400] & metadata.FLAG_LOSS_JUMP).any()
