"""Failures without a spike, on planted series (pure NumPy): stalls at any
level, frozen training, chronic instability, and the healthy curves that
look like them (converged, slow descent, a stretch at chance then solved)."""

import math

import numpy as np
import pytest

from tb_stability.analysis.detect import detect_anomalies


def _descent(n, start, end, seed, sigma=0.1, decay=300.0):
    """A loss falling from `start` towards `end` (exponentially, in log
    space, time constant `decay`), with multiplicative noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = math.log10(end) + (math.log10(start) - math.log10(end)) * np.exp(-t / decay)
    return 10.0 ** (y + rng.normal(0, sigma / math.log(10), n))


def _kinds(found):
    return [(a.kind, a.pattern) for a in found]


@pytest.mark.parametrize("seed", range(5))
def test_converged_run_is_not_a_stall(seed):
    loss = _descent(3000, 2.3, 0.05, seed)
    assert detect_anomalies(np.arange(3000), loss, classes=10) == []


@pytest.mark.parametrize("seed", range(5))
def test_slow_steady_descent_is_not_a_stall(seed):
    loss = _descent(3000, 2.3, 0.3, seed, decay=3000.0)
    assert detect_anomalies(np.arange(3000), loss, classes=10) == []


@pytest.mark.parametrize("seed", range(5))
def test_chance_then_solved_is_not_a_plateau(seed):
    """A long stretch at ln 2 (a saddle), then the problem gets solved."""
    rng = np.random.default_rng(seed)
    n = 3000
    loss = math.log(2) * np.exp(rng.normal(0, 0.02, n))
    loss[1200:] = _descent(n - 1200, math.log(2), 0.01, seed, decay=100.0)
    assert detect_anomalies(np.arange(n), loss, classes=2) == []


@pytest.mark.parametrize("seed", range(5))
def test_stall_at_chance_to_the_end(seed):
    loss = _descent(2000, 2.3, math.log(10), seed, sigma=0.01, decay=20.0)
    loss[:5] = 1e3  # the first updates overshot
    found = detect_anomalies(np.arange(2000), loss, classes=10)
    assert _kinds(found) == [("plateau", "chance")]
    assert found[0].step < 200 and found[0].end_step is None


@pytest.mark.parametrize("seed", range(5))
def test_summed_loss_stalled_at_batch_times_ln_c(seed):
    level = 64 * math.log(10)
    loss = _descent(1500, 5 * level, level, seed, sigma=0.02, decay=10.0)
    found = detect_anomalies(np.arange(1500), loss, classes=10,
                             batch_size=np.full(1500, 64.0))
    assert _kinds(found) == [("plateau", "chance")]


@pytest.mark.parametrize("seed", range(5))
def test_never_learned_is_a_stall(seed):
    """A regression stuck at its constant-prediction error from the start."""
    loss = _descent(2000, 1.0, 0.98, seed, sigma=0.08)
    found = detect_anomalies(np.arange(2000), loss)
    assert _kinds(found) == [("plateau", "stall")]
    assert found[0].step < 300


@pytest.mark.parametrize("seed", range(5))
def test_early_blow_up_then_stall(seed):
    """The loss reaches 0.1, an overshoot kills the units at step 400, and it
    sits at the constant-prediction error (1.0) ever after."""
    n = 3000
    loss = _descent(n, 1.0, 0.1, seed, decay=80.0)
    rng = np.random.default_rng(seed)
    loss[400:410] = 10.0 ** np.linspace(1, 4, 10)
    loss[410:] = np.exp(rng.normal(0, 0.05, n - 410))
    found = detect_anomalies(np.arange(n), loss)
    kinds = _kinds(found)
    assert ("plateau", "stall") in kinds, kinds
    plateau = found[kinds.index(("plateau", "stall"))]
    assert 400 <= plateau.step <= 480 and plateau.end_step is None


@pytest.mark.parametrize("seed", range(5))
def test_blow_up_in_the_first_steps_then_stall(seed):
    """No baseline exists yet at step 3: the blow-up is judged against the
    first loss (a spike), and the stall after it is an anomaly of its own."""
    n = 1500
    rng = np.random.default_rng(seed)
    loss = 0.9 * np.exp(rng.normal(0, 0.05, n))
    loss[0] = 1.0
    loss[1:6] = 10.0 ** np.arange(1, 6)
    found = detect_anomalies(np.arange(n), loss)
    assert _kinds(found) == [("spike", ""), ("plateau", "stall")], found
    assert found[0].peak_step == 5 and found[1].step >= found[0].end_step


def test_zero_gradients_are_frozen():
    n = 600
    rng = np.random.default_rng(0)
    loss = 7.9 + rng.normal(0, 0.3, n)  # per-batch label fractions vary
    found = detect_anomalies(np.arange(n), loss, grad_norm=np.zeros(n))
    assert _kinds(found) == [("plateau", "frozen")]
    assert found[0].step == 0


def test_constant_loss_is_frozen():
    n = 400
    loss = np.full(n, 0.6931472)
    loss[:3] = [0.70, 0.695, 0.6932]
    found = detect_anomalies(np.arange(n), loss, grad_norm=np.full(n, 1e-3))
    assert _kinds(found) == [("plateau", "frozen")]


def test_converged_full_batch_constant_loss_is_not_frozen():
    loss = _descent(2000, 2.0, 1e-3, 0, sigma=0.0, decay=50.0)
    loss[600:] = loss[600]
    assert detect_anomalies(np.arange(2000), loss, grad_norm=np.full(2000, 1e-4)) == []


@pytest.mark.parametrize("seed", range(5))
def test_chronic_instability(seed):
    """Too large a step: after learning to 0.1, from step 800 the loss
    wanders 4-100x above its best (a slow random walk, decades at a time),
    and never gets better."""
    n = 4000
    rng = np.random.default_rng(seed)
    loss = _descent(n, 2.0, 0.1, seed, decay=100.0)
    walk = np.zeros(n)
    for t in range(801, n):
        walk[t] = 0.97 * walk[t - 1] + rng.normal(0, 0.12)
    loss[800:] *= 10.0 ** (np.abs(walk[800:]) * 1.5 + 0.6)
    found = detect_anomalies(np.arange(n), loss)
    assert "instability" in [a.kind for a in found], _kinds(found)
    first = next(a for a in found if a.kind == "instability")
    assert 700 <= first.step <= 1400


@pytest.mark.parametrize("seed", range(5))
def test_small_batch_noise_is_not_instability(seed):
    """Batch-of-4 noise (a factor e per step) around a slow descent."""
    loss = _descent(5000, 2.3, 0.2, seed, sigma=1.0, decay=1000.0)
    assert detect_anomalies(np.arange(5000), loss, classes=10) == []


def test_silent_nonfinite_has_its_pattern():
    n = 300
    loss = _descent(n, 2.0, 0.5, 0)
    counts = np.zeros(n)
    counts[200:] = 32
    found = detect_anomalies(np.arange(n), loss, nonfinite=counts)
    assert _kinds(found) == [("nonfinite", "silent")]
    loss[250] = np.nan
    found = detect_anomalies(np.arange(n), loss)
    assert _kinds(found) == [("nonfinite", "loss")]


def test_a_batch_of_one_is_no_constant_output():
    """Predictions over a batch of one example never vary: no sign of a
    dead model, so a converged run stays quiet; the same run whose
    predictions varied and then stopped is a stall."""
    n = 2000
    loss = _descent(n, 2.0, 1e-2, 0, decay=100.0)
    assert detect_anomalies(np.arange(n), loss, pred_spread=np.zeros(n)) == []
    spread = np.where(np.arange(n) < 600, 0.3, 0.0)
    kinds = [(a.kind, a.pattern) for a in
             detect_anomalies(np.arange(n), loss, pred_spread=spread)]
    assert ("plateau", "stall") in kinds


@pytest.mark.parametrize("seed", range(5))
def test_a_short_run_pinned_at_chance_is_a_plateau(seed):
    """Under STALL_MIN_STEPS (a fit of a few epochs) only a stall at chance
    counts: pinned at ln 10 from step ~10 of 100 is a plateau; the same run
    stuck at another level, or falling slowly, is left alone."""
    rng = np.random.default_rng(seed)
    n = 100
    noise = np.exp(rng.normal(0, 0.002, n))
    loss = math.log(10) * noise
    loss[:10] = np.linspace(3.5, math.log(10), 10)
    found = detect_anomalies(np.arange(n), loss, classes=10)
    assert _kinds(found) == [("plateau", "chance")], found
    assert found[0].step <= 16
    assert detect_anomalies(np.arange(n), 0.7 * loss, classes=10) == []
    falling = 2.3 * np.exp(-np.arange(n) / 60) * noise
    assert detect_anomalies(np.arange(n), falling, classes=10) == []


# Seeds where the flat-stretch test (quarter medians, 0.02 decades) still
# takes the last 160 steps of such a fall, at noise level, for flat.
SLOW_FALL_SEEN_FLAT = {1, 2}


@pytest.mark.parametrize("seed", [
    pytest.param(s, marks=pytest.mark.xfail(
        strict=True, reason="the flat-stretch test misses a slow fall at noise level"))
    if s in SLOW_FALL_SEEN_FLAT else s for s in range(5)])
def test_slow_steady_progress_is_no_stall(seed):
    """A loss that never gets far below its start but falls steadily, a bit
    faster each quarter (means 0.666, 0.649, 0.625, 0.593 over 400 noisy steps:
    a held-out fixed run learning slowly), is learning."""
    rng = np.random.default_rng(seed)
    n = 400
    fit = np.polyfit([50, 150, 250, 350], np.log([0.666, 0.649, 0.625, 0.593]), 2)
    loss = np.exp(np.polyval(fit, np.arange(n)) + rng.normal(0, 0.05, n))
    assert detect_anomalies(np.arange(n), loss, classes=2) == []
    # Without the fall it is a stall that never learned.
    flat = np.exp(math.log(0.67) + rng.normal(0, 0.06, n))
    assert _kinds(detect_anomalies(np.arange(n), flat, classes=2)) == [("plateau", "stall")]


@pytest.mark.parametrize("seed", range(3))
def test_a_bimodal_batch_mix_is_not_instability(seed):
    """Batches of 8 where about half hold a mislabelled example: the loss of
    a step is on one of two modes 6x apart, so a block's median sits on
    either; the blocks alternate, but no stretch returns above its best."""
    rng = np.random.default_rng(seed)
    n = 2000
    dirty = rng.random(n) < 0.45
    loss = np.where(dirty, 0.45, 0.07) * np.exp(rng.normal(0, 0.15, n))
    loss[:200] *= np.logspace(1.2, 0, 200)
    found = detect_anomalies(np.arange(n), loss)
    assert [a for a in found if a.kind == "instability"] == [], found
