"""Finds anomalies in a loss curve (pure NumPy).

Kinds: `spike` (a jump that recovers), `divergence` (a rise that does not),
`nonfinite` (NaN/Inf in the loss, gradients, weights or moments), `plateau`
(stuck at chance level ln C).

Everything is judged in log10 space, so it holds on losses from 1e-14 to
1e4, against a robust local baseline: the median of the previous 8 blocks of
16 steps (about 128 steps) with a MAD-based scale. A point is anomalous when
it is more than 6 robust standard deviations *and* a factor of 10 above the
baseline: the noise of small-batch SGD and a fast early descent (the
baseline lags above a falling loss) never qualify.
"""

import dataclasses
import math
import warnings
from typing import List, Optional

import numpy as np

BLOCK = 16  # steps per block of the baseline
BLOCKS = 8  # previous blocks the baseline looks at (~128 steps)
MIN_DECADES = 1.0  # a spike is at least 10x its baseline
Z = 6.0  # ... and 6 robust standard deviations
MIN_SCALE = 0.02  # decades: floor of the robust scale
RECOVERED = math.log10(3.0)  # back within 3x of the baseline: recovered
ONSET = math.log10(2.0)  # onset: the first step 2x above the baseline
PLATEAU_TOL = 0.02  # relative distance of a block median to ln C: pinned
PLATEAU_MIN_STEPS = 100
MAX_NONFINITE = 20  # nonfinite anomalies reported per run, at most


@dataclasses.dataclass(frozen=True)
class Anomaly:
    """One anomaly of a run's loss curve.

    Attributes:
      kind: "spike", "divergence", "nonfinite" or "plateau".
      step: onset step.
      peak_step: step of the worst value (the onset for nonfinite/plateau).
      end_step: first step back to normal; None while unrecovered.
      severity: decades above the baseline (spike, divergence); number of
        non-finite steps (nonfinite); fraction of the run (plateau).
      baseline: loss level before the onset (NaN when not applicable).
      peak_value: the loss at the peak step.
    """

    kind: str
    step: int
    peak_step: int
    end_step: Optional[int]
    severity: float
    baseline: float
    peak_value: float


def _log10(loss):
    loss = np.asarray(loss, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(np.isfinite(loss) & (loss > 0), np.log10(np.abs(loss)), np.nan)
    return y


def baseline(y):
    """(baseline [n], scale [n]) in log10 units; NaN where none exists yet."""
    n = len(y)
    k = -(-n // BLOCK)
    padded = np.full(k * BLOCK, np.nan)
    padded[:n] = y
    blocks = padded.reshape(k, BLOCK)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(blocks, axis=1)
        mad = np.nanmedian(np.abs(blocks - med[:, None]), axis=1) * 1.4826
        if k > BLOCKS:
            win_med = np.lib.stride_tricks.sliding_window_view(med, BLOCKS)
            win_mad = np.lib.stride_tricks.sliding_window_view(mad, BLOCKS)
            base_k = np.full(k, np.nan)
            scale_k = np.full(k, np.nan)
            base_k[BLOCKS:] = np.nanmedian(win_med, axis=1)[:-1]
            scale_k[BLOCKS:] = np.nanmedian(win_mad, axis=1)[:-1]
        else:
            base_k = np.full(k, np.nan)
            scale_k = np.full(k, np.nan)
    # Before a full history exists, use the blocks seen so far (from 2 on).
    for j in range(2, min(k, BLOCKS)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            base_k[j] = np.nanmedian(med[:j])
            scale_k[j] = np.nanmedian(mad[:j])
    scale_k = np.maximum(np.nan_to_num(scale_k, nan=MIN_SCALE), MIN_SCALE)
    return np.repeat(base_k, BLOCK)[:n], np.repeat(scale_k, BLOCK)[:n]


def _excursions(steps, loss, y, base, scale, stop_at=None):
    """Spikes and divergences: excursions far above the baseline."""
    n = len(y)
    limit = np.maximum(Z * scale, MIN_DECADES)
    with np.errstate(invalid="ignore"):
        hot = np.flatnonzero((y - base) > limit)
    if stop_at is not None:
        hot = hot[hot < stop_at]
    found = []
    i = 0
    floor = 0  # an onset never reaches back into the previous excursion
    while i < len(hot):
        first = int(hot[i])
        b, s = base[first], scale[first]
        back = max(ONSET, 2 * s)
        onset = first
        while onset > floor and np.isfinite(y[onset - 1]) and y[onset - 1] - b > back \
                and first - onset < 4 * BLOCK * BLOCKS:
            onset -= 1
        # The excursion ends at the first step back within 3x of b.
        rec = max(RECOVERED, 3 * s)
        tail = y[first:]
        end_rel = np.flatnonzero(np.isfinite(tail) & (tail - b <= rec))
        end = first + int(end_rel[0]) if len(end_rel) else None
        if stop_at is not None and end is not None and end >= stop_at:
            end = None
        stop = end if end is not None else (stop_at if stop_at is not None else n)
        seg = y[onset:stop]
        peak = onset + int(np.nanargmax(seg)) if np.any(np.isfinite(seg)) else first
        found.append(Anomaly(
            kind="spike" if end is not None else "divergence",
            step=int(steps[onset]), peak_step=int(steps[peak]),
            end_step=None if end is None else int(steps[end]),
            severity=float(y[peak] - b), baseline=float(10 ** b),
            peak_value=float(loss[peak]),
        ))
        if end is None:
            break
        floor = end + 1
        i = int(np.searchsorted(hot, end))
    return found


def _nonfinite(steps, loss, nonfinite_count, skipped=None):
    bad = ~np.isfinite(np.asarray(loss, np.float64))
    if nonfinite_count is not None:
        counts = np.nan_to_num(np.asarray(nonfinite_count, np.float64), nan=0.0)
        bad |= counts > 0
    if skipped is not None:
        bad &= ~skipped
    idx = np.flatnonzero(bad)
    found = []
    start = 0
    while start < len(idx) and len(found) < MAX_NONFINITE:
        stop = start
        while stop + 1 < len(idx) and idx[stop + 1] == idx[stop] + 1:
            stop += 1
        first, last = int(idx[start]), int(idx[stop])
        end = last + 1 if last + 1 < len(steps) else None
        found.append(Anomaly(
            kind="nonfinite", step=int(steps[first]), peak_step=int(steps[first]),
            end_step=None if end is None else int(steps[end]),
            severity=float(last - first + 1), baseline=float("nan"),
            peak_value=float(loss[first]),
        ))
        start = stop + 1
    return found


def _plateau(steps, loss, classes):
    """The longest stretch whose 16-step block medians sit at ln C."""
    if not classes or classes < 2:
        return []
    level = math.log(classes)
    loss = np.asarray(loss, np.float64)
    n = len(loss)
    k = -(-n // BLOCK)
    padded = np.full(k * BLOCK, np.nan)
    padded[:n] = loss
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(padded.reshape(k, BLOCK), axis=1)
    with np.errstate(invalid="ignore"):
        pinned = np.abs(med - level) < PLATEAU_TOL * level
    if not pinned.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], pinned.astype(np.int8), [0]])))
    starts, stops = edges[0::2], edges[1::2]
    j = int(np.argmax(stops - starts))
    first, stop = int(starts[j]) * BLOCK, min(int(stops[j]) * BLOCK, n)
    # Refine the onset to the first step of the block near the level.
    near = np.flatnonzero(np.abs(loss[first:stop] - level) < 2 * PLATEAU_TOL * level)
    if len(near):
        first += int(near[0])
    while first > 0 and abs(loss[first - 1] - level) < 2 * PLATEAU_TOL * level:
        first -= 1
    if stop - first < max(PLATEAU_MIN_STEPS, 0.2 * n):
        return []
    end = stop if stop < n else None
    return [Anomaly(
        kind="plateau", step=int(steps[first]), peak_step=int(steps[first]),
        end_step=None if end is None else int(steps[end]),
        severity=float((stop - first) / n), baseline=level,
        peak_value=float(loss[first]),
    )]


def detect_anomalies(steps, loss, *, nonfinite=None, classes=None,
           skipped=None) -> List[Anomaly]:
    """All anomalies of one loss curve, sorted by onset step.

    Arguments:
      steps: int [n], sorted (need not be contiguous: downsampled input is
        fine, blocks are then counted in points).
      loss: float [n], the loss per step.
      nonfinite: optional [n] count of non-finite values per step (the
        writer's `nonfinite` column).
      classes: optional number of classes C: a long stretch pinned at
        ln C is a plateau.
      skipped: optional bool [n]: steps a LossScaleOptimizer skipped on
        purpose (not anomalies).
    """
    steps = np.asarray(steps, np.int64)
    loss = np.asarray(loss, np.float64)
    if len(steps) == 0:
        return []
    y = _log10(loss)
    base, scale = baseline(y)
    found = _nonfinite(steps, loss, nonfinite, skipped)
    # Past the first non-finite step a run is broken: no spikes after it.
    first_bad = None
    if found:
        first_bad = int(np.searchsorted(steps, found[0].step))
    found += _excursions(steps, loss, y, base, scale, stop_at=first_bad)
    found += _plateau(steps, loss, classes)
    return sorted(found, key=lambda a: (a.step, a.kind))
