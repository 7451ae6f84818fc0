"""learning_rate: the step is too large for the surface.

Mechanism: the learning rate is too large for the loss surface:
oscillation, overshoot, or a schedule that jumps (the end of a warm-up, a
restart). It is everyone's default guess, so it is only asserted with
evidence.

Evidence for a spike, a divergence or a non-finite loss, any of

- the learning rate rose more than `LR_RISE` times over the
  `LR_LOOKBACK_ROWS` rows before the onset (`LR_RISE_CONFIDENCE`);
- the median update/weight ratio ‖Δw‖/‖w‖ over the `evidence.LEAD_WINDOW`
  rows before the onset above `LARGE_UPDATE_RATIO` (usual: about 1e-3),
  past the first `MIN_STEP` steps where large updates are normal
  (`LARGE_UPDATE_CONFIDENCE`);
- under an optimizer without Adam's moments and a constant learning rate,
  the loss grew by a near-constant factor per step (at least
  `GEOMETRIC_MIN_FACTOR` per step over `GEOMETRIC_MIN_ROWS` rows or more,
  a straight line in log space: R² at least `GEOMETRIC_MIN_R2`): the
  step is past the surface's stability limit, lr·λ > 2 along the
  steepest direction (`GEOMETRIC_CONFIDENCE`). Under Adam a geometric rise
  is `adam_epsilon`'s signal, not this one. For a non-finite loss the rise
  is the one that ran into it: the loss rising on every row up to the
  last finite one, for at least `OVERFLOW_MIN_ROWS` rows and
  `OVERFLOW_MIN_DECADES` decades (a loss that grew into overflow, each
  step amplifying the last one's error; it may accelerate).

Evidence for a stall (`plateau`, not frozen) or an `instability`, either of

- a blow-up before it: the loss rose at least `BLOWUP_RISE` times above
  its best so far, and the learning rate rose more than `LR_RISE` times
  over the rows before the first such blow-up (`BLOWUP_LR_CONFIDENCE`) or
  the update/weight ratio before it was above `LARGE_UPDATE_RATIO`
  (`BLOWUP_UPDATE_CONFIDENCE`); for an instability, not a blow-up the
  loss later fell far below (the run learned past it). What killed the
  units ranks above the dead units themselves (`dead_units`);
- the loss jumping from step to step while it makes no progress (the
  standard deviation of its log over the anomaly at least `NOISY_LOG_STD`,
  a step-to-step swing of about 30%, where a stuck model's batch noise
  moves it by a few percent) with update/weight ratios above
  `LARGE_UPDATE_RATIO` (`NOISY_CONFIDENCE`); not with batches of fewer
  than `NOISY_MIN_BATCH` examples, whose own noise swings the loss so.

The update/weight ratio is the recorded one; for plain SGD where it was
not measured, lr/(1-momentum)·‖g‖/‖w‖ stands in for it.
"""

import warnings
from typing import Optional, Tuple

import numpy as np

from tb_stability.analysis import causes as C
from tb_stability.analysis.context import Cause, Context, make_cause
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import LEAD_WINDOW, fmt

# The learning rate at the onset over its value this many rows before (x).
LR_LOOKBACK_ROWS = 50
LR_RISE = 1.5
LR_RISE_CONFIDENCE = 0.65
# The median update/weight ratio before the onset above this (a ratio),
# at a step after MIN_STEP.
LARGE_UPDATE_RATIO = 1e-2
MIN_STEP = 100
LARGE_UPDATE_CONFIDENCE = 0.45
# A geometric rise: per-step factor, rows, and how well a straight line
# fits log10(loss) (its R²).
GEOMETRIC_MIN_FACTOR = 1.05
GEOMETRIC_MIN_ROWS = 8
GEOMETRIC_MIN_R2 = 0.9
GEOMETRIC_CONFIDENCE = 0.55
# A non-finite loss after a geometric rise: the rows looked back over, the
# fewest rows of the rise, and how many decades it must climb.
OVERFLOW_LOOKBACK_ROWS = 64
OVERFLOW_MIN_ROWS = 4
OVERFLOW_MIN_DECADES = 3.0
# Stalls and instability: a blow-up before them (x above the best so far).
BLOWUP_RISE = 3.0
BLOWUP_LR_CONFIDENCE = 0.7
BLOWUP_UPDATE_CONFIDENCE = 0.7
# ... above this many times the median |step-to-step change| of ln(loss)
# up to the anomaly (over at least BLOWUP_NOISE_ROWS changes; fewer: no bar).
BLOWUP_NOISE = 3.0
BLOWUP_NOISE_ROWS = 3
BLOWUP_SMOOTH = 5
# ... a noisy stall: std of ln(loss) over the anomaly.
NOISY_LOG_STD = 0.25
NOISY_CONFIDENCE = 0.6
# ... not with batches under this size: their own noise swings the loss.
NOISY_MIN_BATCH = 16


def check(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The learning_rate cause of anomaly `a`, or None (see the module doc)."""
    if a.kind in ("plateau", "instability"):
        return _stalled(ctx, a)
    run = ctx.run
    i0 = ctx.idx(a.step)
    evidence, confidence = [], 0.0
    rise = _lr_rise(ctx, i0)
    if rise is not None:
        evidence.append(f"The learning rate rose from {fmt(rise[0])} to "
                        f"{fmt(rise[1])} just before step {a.step}.")
        confidence = LR_RISE_CONFIDENCE
    upd = update_ratio(ctx, max(1, i0 - LEAD_WINDOW), i0)
    if upd is not None and int(run.steps[i0]) > MIN_STEP and upd > LARGE_UPDATE_RATIO:
        evidence.append(f"Update/weight ratio before it: {fmt(upd)} "
                        f"(usual: about 1e-3).")
        confidence = max(confidence, LARGE_UPDATE_CONFIDENCE)
    if not run.is_adam and rise is None:
        growth = geometric_rise(ctx, a)
        if growth is not None:
            factor, first, last = growth
            evidence.append(
                f"The loss grew by {'a near-constant ' if a.kind != 'nonfinite' else ''}"
                f"x{factor:.3g} per step from step "
                f"{first} to {last} at a constant learning rate of "
                f"{fmt(run.col('learning_rate')[i0])}: the step is past the "
                f"stability limit of the surface (the learning rate times its "
                f"sharpest curvature is above 2).")
            confidence = max(confidence, GEOMETRIC_CONFIDENCE)
    if not evidence:
        return None
    return make_cause(C.LEARNING_RATE, confidence, evidence)


def _lr_rise(ctx: Context, i: int) -> Optional[Tuple[float, float]]:
    """(lr before, lr at row i) when it rose over `LR_RISE` x, else None."""
    lr = ctx.run.col("learning_rate")
    lo = max(0, i - LR_LOOKBACK_ROWS)
    if i > 0 and np.isfinite(lr[lo]) and lr[lo] > 0 and lr[i] > LR_RISE * lr[lo]:
        return float(lr[lo]), float(lr[i])
    return None


def update_ratio(ctx: Context, lo: int, hi: int) -> Optional[float]:
    """The median update/weight ratio over rows [lo, hi), or None.

    The recorded one where measured; for an optimizer without Adam's
    moments, lr/(1-momentum)·‖g‖/‖w‖ where it was not.
    """
    run = ctx.run
    upd = run.col("update_ratio")[lo:hi]
    upd = upd[np.isfinite(upd)]
    if len(upd):
        return float(np.median(upd))
    if run.is_adam:
        return None
    momentum = float(run.optimizer.get("momentum", 0.0) or 0.0)
    lr = run.col("learning_rate")[lo:hi] / max(1.0 - momentum, 1e-3)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = lr * run.col("grad_norm")[lo:hi] / run.col("weight_norm")[lo:hi]
    est = est[np.isfinite(est)]
    return float(np.median(est)) if len(est) else None


def geometric_rise(ctx: Context, a: Anomaly) -> Optional[Tuple[float, int, int]]:
    """(factor per step, first step, last step) of a geometric rise from the onset.

    The rise runs from the onset to the last finite loss up to the peak;
    it is geometric when a straight line fits log10(loss) with an R² of
    `GEOMETRIC_MIN_R2` or more and a slope of at least
    `GEOMETRIC_MIN_FACTOR` per step, over `GEOMETRIC_MIN_ROWS` rows or more.
    """
    run = ctx.run
    i0, ip = ctx.idx(a.step), ctx.idx(a.peak_step)
    if a.kind == "nonfinite":  # the rise that ran into it
        return _overflow_rise(ctx, i0)
    loss = ctx.loss[i0:ip + 1]
    steps = run.steps[i0:ip + 1].astype(np.float64)
    ok = np.isfinite(loss) & (loss > 0)
    if ok.sum() < GEOMETRIC_MIN_ROWS:
        return None
    x, y = steps[ok], np.log10(loss[ok])
    slope, intercept = np.polyfit(x, y, 1)
    if slope < np.log10(GEOMETRIC_MIN_FACTOR):
        return None
    total = float(np.sum((y - y.mean()) ** 2))
    residual = float(np.sum((y - (slope * x + intercept)) ** 2))
    if total <= 0 or 1.0 - residual / total < GEOMETRIC_MIN_R2:
        return None
    lr = run.col("learning_rate")[i0:ip + 1]
    lr = lr[np.isfinite(lr)]
    if len(lr) and lr.max() > LR_RISE * lr.min():
        return None  # a schedule moved the step: not one constant lr
    return float(10.0 ** slope), int(x[0]), int(x[-1])


def _overflow_rise(ctx: Context, i0: int) -> Optional[Tuple[float, int, int]]:
    """(mean factor per step, first step, last step) of the run-up to row i0's overflow."""
    run = ctx.run
    lo = max(0, i0 - OVERFLOW_LOOKBACK_ROWS)
    before = ctx.loss[lo:i0]
    finite = np.flatnonzero(np.isfinite(before) & (before > 0))
    if not len(finite):
        return None
    last = lo + int(finite[-1])
    first = last
    while first > lo and np.isfinite(ctx.loss[first - 1]) and \
            0 < ctx.loss[first - 1] < ctx.loss[first]:
        first -= 1
    if last - first + 1 < OVERFLOW_MIN_ROWS:
        return None
    decades = float(np.log10(ctx.loss[last] / ctx.loss[first]))
    if decades < OVERFLOW_MIN_DECADES:
        return None
    lr = run.col("learning_rate")[first:last + 1]
    lr = lr[np.isfinite(lr)]
    if len(lr) and lr.max() > LR_RISE * lr.min():
        return None
    steps = int(run.steps[last] - run.steps[first])
    return float(10.0 ** (decades / max(steps, 1))), int(run.steps[first]), int(run.steps[last])


def _stalled(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The learning_rate cause of a stall or an instability, or None."""
    if a.pattern == "frozen":
        return None
    run = ctx.run
    i0 = ctx.idx(a.step)
    evidence, confidence = [], 0.0
    blowup = _blowup_before(ctx, i0, past=a.kind == "instability")
    if blowup is not None:
        j, best, high = blowup
        step = int(run.steps[j])
        rise = _lr_rise(ctx, j)
        upd = update_ratio(ctx, max(1, j - LEAD_WINDOW), j)
        if rise is not None:
            evidence.append(f"The learning rate rose from {fmt(rise[0])} to "
                            f"{fmt(rise[1])} just before the loss blew up from "
                            f"{fmt(best)} to {fmt(high)} at step {step}.")
            confidence = BLOWUP_LR_CONFIDENCE
        elif upd is not None and upd > LARGE_UPDATE_RATIO:
            evidence.append(f"The loss blew up from {fmt(best)} to {fmt(high)} at "
                            f"step {step} after updates of {fmt(upd)} of the weights "
                            f"per step (usual: about 1e-3).")
            confidence = BLOWUP_UPDATE_CONFIDENCE
    loss = ctx.loss[i0:]
    loss = loss[np.isfinite(loss) & (loss > 0)]
    upd = update_ratio(ctx, i0, len(ctx.loss))
    if len(loss) >= 2 and upd is not None and upd > LARGE_UPDATE_RATIO and not _small_batch(
            ctx, i0, len(ctx.loss)):
        spread = float(np.std(np.log(loss)))
        if spread >= NOISY_LOG_STD:
            evidence.append(
                f"The loss jumps by about {100 * (np.exp(spread) - 1):.0f}% from step "
                f"to step without progress, with updates of {fmt(upd)} of the "
                f"weights per step (usual: about 1e-3).")
            confidence = max(confidence, NOISY_CONFIDENCE)
    if not evidence:
        return None
    return make_cause(C.LEARNING_RATE, confidence, evidence)


def _blowup_before(ctx: Context, i0: int, past: bool = False
                   ) -> Optional[Tuple[int, float, float]]:
    """(row, best before, high) of the first blow-up up to row i0, or None.

    A blow-up is the loss at least `BLOWUP_RISE` times the best level
    before it (the running minimum of its median over `BLOWUP_SMOOTH` rows;
    non-finite values count as a blow-up above any level), and
    `BLOWUP_NOISE` times the loss's usual step-to-step swing (a batch of 2
    swings the loss 3x from step to step: not a blow-up; with batches under
    `NOISY_MIN_BATCH` examples the running median itself must rise so).
    The first one is what killed the units; later ones are its aftermath.
    With `past` (an instability), a blow-up the loss later got far below
    (its best level, up to row i0, `BLOWUP_RISE` times under the level it
    blew up from) is not one: the run learned past it, and what
    destabilised it later is something else. Not for a stall: what a
    blow-up killed may leave a model that still learns a constant (the
    targets' mean) down to the plateau.
    """
    loss = ctx.loss[:i0 + 1]
    if len(loss) < 2:
        return None
    finite = np.where(np.isfinite(loss), loss, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ln = np.log(np.where(np.isfinite(loss) & (loss > 0), loss, np.nan))
        # The best so far, of the loss's running median over BLOWUP_SMOOTH
        # rows (one lucky batch is no level to blow up from) ...
        runs = [np.nanmedian(ln[max(0, i - BLOWUP_SMOOTH + 1):i + 1]) for i in range(len(ln))]
        level = np.exp(np.where(np.isfinite(runs), runs, np.inf))
        best = np.minimum.accumulate(level)
        prev_best = np.concatenate([[np.inf], best[:-1]])
        ratio = np.where(prev_best > 0, finite / prev_best, np.inf)
        ratio[~np.isfinite(prev_best)] = 0.0
        # ... and the loss's own step-to-step swing (the median |change| of
        # ln(loss) up to the anomaly): a blow-up rises BLOWUP_NOISE times above it.
        swing = np.abs(np.diff(ln))
        swing = swing[np.isfinite(swing)]
        noise = float(np.median(swing)) if len(swing) >= BLOWUP_NOISE_ROWS else 0.0
        if _small_batch(ctx, 0, i0):
            # A batch of a few examples: one outlier example moves its loss
            # 40x; the blow-up must lift the loss's running median too.
            ratio = np.minimum(ratio, level / prev_best)
        hits = np.flatnonzero((ratio >= BLOWUP_RISE) & (np.log(ratio) >= BLOWUP_NOISE * noise))
        if past:  # not a blow-up the run then learned far past
            hits = hits[best[-1] * BLOWUP_RISE >= prev_best[hits]]
    if not len(hits):
        return None
    j = int(hits[0])
    return j, float(prev_best[j]), float(finite[j])


def _small_batch(ctx: Context, lo: int, hi: int) -> bool:
    """Whether the recorded batch size over rows [lo, hi] is under NOISY_MIN_BATCH."""
    batch = ctx.column("batch_size")[lo:hi + 1]
    return bool(np.isfinite(batch).any() and np.nanmedian(batch) < NOISY_MIN_BATCH)

