"""Anomaly detection on planted series (pure NumPy)."""

import math

import numpy as np
import pytest

from tb_stability.analysis.detect import detect_anomalies


def _noisy(n, level=0.5, sigma=0.35, seed=0, learned=True):
    """Noise around `level`; `learned`: after a descent from 10x `level` over
    the first steps (a loss flat from its first step is a stall)."""
    rng = np.random.default_rng(seed)
    loss = level * np.exp(rng.normal(0, sigma, size=n))
    if learned:
        head = min(200, n // 10)
        loss[:head] *= np.logspace(1, 0, head)
    return loss


def test_small_batch_sgd_noise_is_not_an_anomaly():
    for seed in range(5):
        loss = _noisy(20000, sigma=0.5, seed=seed)
        assert detect_anomalies(np.arange(20000), loss) == [], seed


def test_fast_early_descent_is_not_an_anomaly():
    rng = np.random.default_rng(1)
    n = 3000
    loss = np.logspace(4, -11, n) * np.exp(rng.normal(0, 0.2, n))
    assert detect_anomalies(np.arange(n), loss) == []


@pytest.mark.parametrize("level", [1e-11, 1e-3, 1.0, 1e4])
def test_spikes_at_random_steps_found_exactly(level):
    rng = np.random.default_rng()
    n = 5000
    loss = _noisy(n, level=level, sigma=0.2, seed=int(rng.integers(1 << 30)))
    planted = sorted(rng.choice(np.arange(300, n - 50, 200), size=5, replace=False))
    for s in planted:
        loss[s] *= 1000.0
    found = detect_anomalies(np.arange(n), loss)
    assert [a.kind for a in found] == ["spike"] * 5
    assert [a.peak_step for a in found] == planted
    assert all(a.step == a.peak_step and a.end_step == a.peak_step + 1 for a in found)
    assert all(2.5 < a.severity < 3.5 for a in found)  # ~3 decades


def test_nan_at_step_zero():
    loss = _noisy(100)
    loss[0] = np.nan
    (a,) = detect_anomalies(np.arange(100), loss)
    assert (a.kind, a.step, a.end_step) == ("nonfinite", 0, 1)


def test_nan_that_never_recovers_stops_the_search():
    loss = _noisy(1000)
    loss[600:] = np.nan
    loss[300] *= 1e4  # a spike before: still found
    found = detect_anomalies(np.arange(1000), loss)
    assert [(a.kind, a.step, a.end_step) for a in found] == [
        ("spike", 300, 301), ("nonfinite", 600, None)]


def test_silent_nonfinite_from_the_count_column():
    loss = _noisy(200)
    count = np.zeros(200)
    count[120:] = 64  # weights went NaN, the loss stayed finite
    (a,) = detect_anomalies(np.arange(200), loss, nonfinite=count)
    assert (a.kind, a.step) == ("nonfinite", 120)


def test_divergence_does_not_recover():
    n = 3000
    loss = _noisy(n, level=1e-12, sigma=0.3)
    loss[2000:] *= np.exp(0.05 * np.arange(n - 2000)).clip(max=1e9)
    found = detect_anomalies(np.arange(n), loss)
    assert [a.kind for a in found] == ["divergence"]
    assert 2000 <= found[0].step <= 2100 and found[0].end_step is None


def test_plateau_at_ln_c():
    rng = np.random.default_rng(3)
    n = 1500
    loss = np.concatenate([np.linspace(180, 3, 10),
                           math.log(10) + rng.normal(0, 5e-4, n - 10)])
    (a,) = detect_anomalies(np.arange(n), loss, classes=10)
    assert (a.kind, a.step, a.end_step) == ("plateau", 10, None)
    assert a.severity > 0.9
    assert a.pattern == "chance"
    # ln 2 != ln 10: not at chance, but stuck above it (worse than the prior).
    (b,) = detect_anomalies(np.arange(n), loss, classes=2)
    assert (b.kind, b.pattern, b.step) == ("plateau", "stall", 10)


def test_downsampled_input_keeps_its_steps():
    """Sparse steps (every 10th, as a sampled series) still give exact steps."""
    n = 4000
    loss = _noisy(n, sigma=0.2)
    loss[2470] *= 1e3
    steps = np.arange(n) * 10
    (a,) = detect_anomalies(steps, loss)
    assert a.peak_step == 24700


def test_skipped_loss_scale_steps_are_not_anomalies():
    loss = _noisy(300)
    count = np.zeros(300)
    count[[50, 51, 200]] = 7  # overflowed gradients, skipped on purpose
    skipped = count > 0
    assert detect_anomalies(np.arange(300), loss, nonfinite=count, skipped=skipped) == []
    assert len(detect_anomalies(np.arange(300), loss, nonfinite=count)) == 2


def test_empty_and_tiny_inputs():
    assert detect_anomalies([], []) == []
    assert detect_anomalies([0, 1, 2], [1.0, 1.0, 1.0]) == []


def _train(seed, n=6000):
    """A train of spikes riding on each other's decaying tails, in log10.

    Level anywhere from 1e-14 to 1e4, noise of 0.01-0.15 decades, sometimes
    a slow descent; each spike rises 2-7 decades (100x and more) over 1-14
    steps and decays exponentially; the next starts once the tail has fallen
    below a quarter of its height (a person sees two spikes), often long
    before it is back at the level. The run learned first: a descent by a
    decade over its first 200 steps. Returns (steps, loss, peak steps).
    """
    rng = np.random.default_rng(seed)
    y = rng.uniform(-14, 4) + rng.normal(0, rng.uniform(0.01, 0.15), n)
    y[:200] += np.linspace(1, 0, 200)
    if rng.random() < 0.5:
        y -= np.linspace(0, rng.uniform(0, 1.5), n)
    t, peaks = int(rng.integers(300, 600)), []
    idx = np.arange(n)
    for _ in range(int(rng.integers(1, 12))):
        height, rise, tau = rng.uniform(2, 7), int(rng.integers(1, 15)), rng.uniform(5, 60)
        rel = idx - t
        bump = np.where(rel < rise, height * (rel + 1) / rise,
                        height * np.exp(-(rel - rise + 1) / tau))
        y += np.where(rel >= 0, bump, 0.0)
        peaks.append(t + rise - 1)
        t += int(rise + tau * rng.uniform(1.5, 4.0)) + int(rng.integers(10, 40))
        if t > n - 200:
            break
    return idx, 10.0 ** y, peaks


@pytest.mark.parametrize("seed", range(40))
def test_every_spike_of_a_train_is_its_own_anomaly(seed):
    steps, loss, peaks = _train(seed)
    found = detect_anomalies(steps, loss)
    assert len(found) == len(peaks), ([(a.step, a.peak_step) for a in found], peaks)
    for a, peak in zip(found, peaks):
        assert a.kind == "spike"
        assert a.step <= peak + 1 and peak < a.end_step, (a, peak)


@pytest.mark.parametrize("seed", range(10))
def test_a_first_rise_that_runs_into_a_divergence_is_its_onset(seed):
    """Adam's blow-up from a tiny loss: a first bump 10x over the level falls
    back to hover 2-4x above it, then the loss grows geometrically. One
    anomaly: a divergence from the first rise."""
    rng = np.random.default_rng(seed)
    n, rise_at = 3000, 2000
    y = np.log10(2e-14) + rng.normal(0, 0.06, n)
    rel = np.arange(n) - rise_at
    bump = np.clip(1 - np.abs(rel - 8) / 8, 0, None) * 0.8  # peaks ~1 decade up
    hover = np.where(rel > 0, 0.45, 0.0)  # ~3x above, not settled
    runaway = np.where(rel > 60, (rel - 60) * 0.02, 0.0)  # then 10x per 50 steps
    loss = 10.0 ** (y + bump + hover + runaway)
    found = detect_anomalies(np.arange(n), loss)
    assert [a.kind for a in found] == ["divergence"], found
    assert rise_at - 2 <= found[0].step <= rise_at + 10


@pytest.mark.parametrize("seed", range(5))
def test_one_step_spike_then_its_damage_are_two_anomalies(seed):
    """A bad batch late in an Adam run: one step 1e7x up, back the next
    step, then the loss climbs 3-50x for hundreds of steps (the moments
    hold the batch's gradient). The spike ends the step after its peak; the
    damage is an anomaly of its own."""
    rng = np.random.default_rng(seed)
    n, at = 5000, int(rng.integers(1000, 4000))
    loss = _noisy(n, level=0.02, sigma=0.3, seed=seed)
    loss[at] = 1e5
    rise = np.minimum(np.arange(n - at - 1) / 20.0, 1.0) * np.exp(-np.arange(n - at - 1) / 400.0)
    loss[at + 1:] *= 10.0 ** (1.5 * rise)
    loss[at + 1:at + 3] = [0.02 * 1.5, 0.02 * 3.2]  # back, then already rising
    found = detect_anomalies(np.arange(n), loss)
    assert (found[0].kind, found[0].peak_step, found[0].end_step) == ("spike", at, at + 1)
    assert len(found) >= 2 and found[1].step > at


@pytest.mark.parametrize("seed", range(5))
def test_a_blow_up_in_the_first_steps_is_found(seed):
    """Before any baseline exists (the first 2 blocks) the first loss is the
    reference: a rise 100x above it is a spike, or a divergence."""
    rng = np.random.default_rng(seed)
    n = 400
    at = int(rng.integers(1, 20))
    loss = 2.3 * np.exp(-np.arange(n) / 200) * np.exp(0.05 * rng.normal(size=n))
    spiky = loss.copy()
    spiky[at:at + 3] = [50.0, 1e4, 300.0]
    found = detect_anomalies(np.arange(n), spiky)
    assert [(a.kind, a.peak_step) for a in found] == [("spike", at + 1)], found
    diverged = loss.copy()
    diverged[at:] = 1e4 * np.exp(0.05 * rng.normal(size=n - at))
    found = detect_anomalies(np.arange(n), diverged)
    assert [a.kind for a in found] == ["divergence"] and found[0].step <= at + 1, found


def test_a_run_up_from_the_first_steps_into_nan_is_one_anomaly():
    n = 60
    loss = np.full(n, np.nan)
    loss[:4] = [5.0, 2.6e3, 4e12, 2.6e36]
    found = detect_anomalies(np.arange(n), loss)
    assert [(a.kind, a.step) for a in found] == [("nonfinite", 4)], found


@pytest.mark.parametrize("seed", range(5))
def test_a_loss_falling_fast_from_a_large_start_is_quiet(seed):
    rng = np.random.default_rng(seed)
    steps = np.arange(400)
    loss = 100 * np.exp(-steps / 3) + 0.01 * np.exp(2 * rng.normal(size=400))
    assert detect_anomalies(steps, loss) == []


@pytest.mark.parametrize("seed", range(5))
def test_rounding_remnants_of_a_loss_at_exactly_zero_are_no_spikes(seed):
    """A fit to exactly zero (float32's floor): most steps 0, a few 1e-9 to
    1e-6 (one example's rounding remnant), far below the first loss."""
    rng = np.random.default_rng(seed)
    n = 300
    loss = np.zeros(n)
    loss[:4] = [5.0, 2.5, 11.0, 0.3]
    remnant = rng.random(n) < 0.2
    loss[4:][remnant[4:]] = 10.0 ** rng.uniform(-9, -5.5, remnant[4:].sum())
    assert detect_anomalies(np.arange(n), loss) == []
    # A real blow-up from there still counts.
    loss[200:203] = [0.5, 3.0, 0.0]
    assert [a.kind for a in detect_anomalies(np.arange(n), loss)] == ["spike"]


@pytest.mark.parametrize("seed", range(3))
def test_a_loss_nan_on_most_batches_is_one_anomaly(seed):
    """float16 underflow: from step 50 the loss is NaN on most batches, with
    a finite one now and then (a batch where nothing underflowed): one
    storm, one anomaly. NaN steps far apart stay anomalies of their own."""
    rng = np.random.default_rng(seed)
    n = 256
    loss = 0.6 * np.exp(rng.normal(0, 0.05, n))
    storm = np.arange(50, n)
    loss[storm[rng.random(len(storm)) < 0.85]] = np.nan
    loss[50] = np.nan
    found = detect_anomalies(np.arange(n), loss)
    assert [(a.kind, a.step) for a in found] == [("nonfinite", 50)], found
    apart = 2.0 * np.exp(-np.arange(1000) / 300 + rng.normal(0, 0.05, 1000))
    apart[[200, 500, 800]] = np.nan
    found = detect_anomalies(np.arange(1000), apart)
    assert [(a.kind, a.step) for a in found] == [("nonfinite", t) for t in (200, 500, 800)]



def _mislabelled_mix(n, seed, batch=8, wrong=0.02):
    """Per-batch cross-entropy near zero loss with a few wrong labels: most
    batches sit near 0.02; one holding k wrong labels adds k * ln(1 / p) /
    batch, with ln(1 / p) spread over three decades (a heavy tail: about 6 %
    of the steps 10x to 300x the median), after a descent from 10x."""
    rng = np.random.default_rng(seed)
    k = rng.binomial(batch, wrong, n)
    loss = 0.02 * np.exp(rng.normal(0, 0.3, n))
    loss += k * 10 ** rng.uniform(-1.5, 1.5, n) / batch
    loss[:200] *= np.logspace(1, 0, 200)
    return loss


@pytest.mark.parametrize("seed", range(4))
def test_a_heavy_tailed_noise_band_is_no_train_of_spikes(seed):
    """Small batches near zero loss with mislabelled examples: 10x to 300x
    steps are the band's everyday tail, not spikes (once the band has a
    history: 8 blocks); a step far above the band still is one, at its step."""
    n = 3000
    loss = _mislabelled_mix(n, seed)
    y = np.log10(loss[300:])
    assert np.mean(y > np.median(y) + 1) > 0.03  # the tail a 10x rule would flag
    late = [a for a in detect_anomalies(np.arange(n), loss) if a.step >= 128]
    assert late == []
    planted = loss.copy()
    planted[2000] = 1e2 * loss.max()
    found = [a for a in detect_anomalies(np.arange(n), planted) if a.step >= 128]
    assert [(a.kind, a.peak_step) for a in found] == [("spike", 2000)]


@pytest.mark.parametrize("every", [40, 100])
def test_a_regular_comb_of_spikes_is_not_the_noise_band(every):
    """The same tall spike every few blocks, far above a quiet band, is a
    spike each time however often it comes (a gap of decades separates it
    from the band, where a heavy tail thins out continuously)."""
    n = 3000
    loss = _noisy(n, sigma=0.2, seed=every)
    at = np.arange(300, 2900, every)
    loss[at] *= 100.0
    found = detect_anomalies(np.arange(n), loss)
    assert [a.peak_step for a in found] == list(at)


@pytest.mark.parametrize("seed", range(3))
def test_a_blow_up_coming_back_down_when_the_run_ends_is_a_spike(seed):
    """A rise of 8 decades, then a geometric fall that the run's end cuts
    2 decades short of the baseline: a spike still recovering (no end step),
    not a divergence. The same rise that stays up, or comes back only a
    little and stops falling, is a divergence."""
    n = 1600
    base = _noisy(n, level=1e-10, sigma=0.2, seed=seed)
    rise = np.arange(60)
    def planted(after):
        loss = base.copy()
        loss[1000:1060] *= 10 ** (8 * rise / 60)
        loss[1060:] *= 10 ** after(np.arange(n - 1060))
        return detect_anomalies(np.arange(n), loss)
    (a,) = planted(lambda t: 8 - 6 * t / (n - 1060))  # falling: 2 decades left
    assert (a.kind, a.pattern, a.end_step) == ("spike", "recovering", None)
    assert 1000 - 16 <= a.step <= 1060 and 1040 <= a.peak_step <= 1070
    (a,) = planted(lambda t: 8 + 0 * t)
    assert a.kind == "divergence"
    # 2 decades back, then flat: a divergence (and the stall it left)
    assert planted(lambda t: 8 - np.minimum(t, 50) * 2 / 50)[0].kind == "divergence"


@pytest.mark.parametrize("seed", range(3))
def test_a_slow_divergence_is_found(seed):
    """The loss climbs from its best to 40x it over the last 1,000 steps,
    never 10x above the recent baseline (the baseline climbs with it): a
    divergence from where the climb began; the same run without the climb
    has no anomaly."""
    n = 2000
    loss = _noisy(n, level=0.5, sigma=0.3, seed=seed)
    climbing = loss.copy()
    climbing[1000:] *= np.logspace(0, 1.6, 1000)
    found = detect_anomalies(np.arange(n), climbing)
    assert [(a.kind, a.pattern) for a in found] == [("divergence", "slow")], found
    assert 1000 <= found[0].step <= 1400 and found[0].end_step is None
    assert detect_anomalies(np.arange(n), loss) == []
