"""Finds anomalies in a loss curve (pure NumPy).

Kinds (`anomaly.KINDS`): `spike` (a jump that recovers), `divergence` (a
rise that does not), `nonfinite` (NaN/Inf in the loss, gradients, weights or
moments; "silent" while the loss is finite), and the failures without a
spike of `stalls`: `plateau` (stuck until the end: at chance, stalled at
another level, or frozen) and `instability` (the loss keeps returning far
above its best).

Spikes and divergences:
Everything is judged in log10 space, so it holds on losses from 1e-14 to
1e4, against a robust local baseline: the median of the previous 8 blocks of
16 steps (about 128 steps) with a MAD-based scale. A point is anomalous when
it is more than 6 robust standard deviations *and* a factor of 10 above the
baseline: the noise of small-batch SGD and a fast early descent (the
baseline lags above a falling loss) never qualify.

One blow-up is one anomaly: a first rise that settles only to hover above
its level before running away is the divergence's onset. Every spike of a
train is its own anomaly: the baseline is computed a second time without
the excursions (their tails would inflate its scale and hide the next
spike), and an excursion whose envelope falls by half its height and rises
10x again is split there.
"""

import dataclasses
import math
import warnings
from typing import List

import numpy as np

from tb_stability.analysis import stalls
from tb_stability.analysis.anomaly import Anomaly

BLOCK = 16  # steps per block of the baseline
BLOCKS = 8  # previous blocks the baseline looks at (~128 steps)
MIN_DECADES = 1.0  # a spike is at least 10x its baseline
Z = 6.0  # ... and 6 robust standard deviations
MIN_SCALE = 0.02  # decades: floor of the robust scale
RECOVERED = math.log10(3.0)  # back within 3x of the baseline: recovered
ONSET = math.log10(2.0)  # onset: the first step 2x above the baseline
# An unrecovered excursion whose loss, when the run ends, fell half its
# height from its peak and is still falling is a spike coming back down.
RECOVERING_SHARE = 0.5
MAX_NONFINITE = 20  # nonfinite anomalies reported per run, at most
NONFINITE_GAP = BLOCK  # rows: non-finite steps closer than this are one anomaly
ENVELOPE = 9  # steps of the running maximum a spike train is split on
QUIET_PASSES = 4  # baselines recomputed without the excursions, at most
TRAIN_DROP = 0.5  # a spike of a train ends once its envelope fell half its height
ONE_STEP_DROP = 0.8  # a one-step spike: 80 % of its height gone the next step
BAND_BLOCKS = 4 * BLOCKS  # blocks the noise band's height is judged over
BAND_RANK = 4  # ... its height: the 4th highest of them (one block in 8)
TOP_MARGIN = math.log10(3.0)  # a spike is 3x above the height of the noise band
# Before the baseline exists (the first 2 blocks) the reference is the
# first loss, the untrained model's: an excursion there rises 100x above it.
EARLY_DECADES = 2.0
# A loss exactly zero on at least half the previous BLOCK * BLOCKS steps sits
# at float's floor: its positive values are rounding remnants, and a rise
# counts only up to FLOOR_MATERIAL decades below the first loss.
FLOOR_ZEROS = 0.5
FLOOR_MATERIAL = -3.0


def log10_loss(loss):
    """log10 of the loss, NaN where it is not finite or not positive."""
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


def band_height(y):
    """[n]: how far the noise band reaches above its median before each row (log10).

    Per block, its maximum above its own median (a trend across blocks
    does not count); of the previous BAND_BLOCKS blocks (of the blocks so
    far before a full history exists), the BAND_RANK-th highest (the
    highest of fewer than BLOCKS, the second of fewer than 3 * BLOCKS):
    the height the noisiest steps of this run reach in one block of 8.
    Where the sorted heights from the median block's up to it jump by
    MIN_DECADES, the band ends below that gap (a comb of tall spikes, not
    a tail of the band). An excursion lifts the blocks it is in only. NaN
    before 2 blocks.
    """
    n = len(y)
    k = -(-n // BLOCK)
    padded = np.full(k * BLOCK, np.nan)
    padded[:n] = y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        blocks = padded.reshape(k, BLOCK)
        tops = np.nanmax(blocks, axis=1) - np.nanmedian(blocks, axis=1)
    tops = np.where(np.isfinite(tops), tops, -np.inf)
    top_k = np.full(k, np.nan)
    for j in range(2, k):
        window = np.sort(tops[max(0, j - BAND_BLOCKS):j])
        rank = 1 if len(window) < BLOCKS else max(2, min(BAND_RANK, len(window) // BLOCKS))
        # A tail, not a comb: the heights from the median block's up to it
        # leave no gap of a decade (discrete spikes far above the rest of
        # the band are spikes, however regular: the band ends below the gap).
        upper = window[min(len(window) // 2, len(window) - rank):len(window) - rank + 1]
        upper = upper[np.isfinite(upper)]
        if len(upper) == 0:
            continue
        gaps = np.flatnonzero(np.diff(upper) >= MIN_DECADES)
        top_k[j] = upper[gaps[0]] if len(gaps) else upper[-1]
    return np.repeat(top_k, BLOCK)[:n]


def _early(y, base, scale):
    """(base, scale, early [n]): the first rows' reference filled in.

    The rows before the first baseline (`baseline` needs 2 blocks) get the
    first finite loss as their baseline, at the floor scale; `early` marks
    them (their limit is `EARLY_DECADES`). A loss that falls from its start,
    however fast and noisily, never rises 100x above it; one that does blew
    up before any history could show it.
    """
    has = np.isfinite(base)
    upto = int(np.argmax(has)) if has.any() else len(y)
    early = np.zeros(len(y), bool)
    finite = np.flatnonzero(np.isfinite(y[:upto]))
    if len(finite):
        early[finite[0]:upto] = True
        base = base.copy()
        scale = scale.copy()
        base[early] = y[finite[0]]
        scale[early] = MIN_SCALE
    return base, scale, early


def _at_floor(loss):
    """Bool [n]: rows whose previous BLOCK * BLOCKS losses are mostly exactly 0."""
    zero = np.asarray(loss, np.float64) == 0.0
    if not zero.any():
        return zero
    span = BLOCK * BLOCKS
    count = np.concatenate([[0], np.cumsum(zero)])
    idx = np.arange(len(zero))
    lo = np.maximum(idx - span, 0)
    seen = np.maximum(idx - lo, 1)
    return (count[idx] - count[lo]) / seen >= FLOOR_ZEROS


def _recovered_at(y, b, first, rec):
    """The first step from `first` on where the loss is back near `b`.

    Back near: within `rec` (log10) of `b` on that step and then settled,
    the median of the next block within `rec` too (one low point in a tail
    that swings by a decade from step to step is not a recovery). A short
    spike, back within `rec` for two steps within ENVELOPE steps of its
    peak, or a one-step spike (its peak the step before, `ONE_STEP_DROP`
    of its height, in decades, gone, even if not yet back within `rec`),
    has recovered even if the loss rises again right after (a bad batch,
    then the damage it did to the weights and moments: two anomalies).
    None if the loss never recovers.
    """
    tail = np.where(np.isfinite(y[first:]), y[first:], -np.inf)
    highest = np.maximum.accumulate(tail)  # the peak so far, from `first` on
    prev = np.concatenate([[-np.inf], tail[:-1]])
    one_step = (prev >= highest) & (highest - tail >= ONE_STEP_DROP * (highest - b))
    for k in np.flatnonzero((tail - b <= rec) | one_step):
        i = first + int(k)
        after = y[i + 1:i + 1 + BLOCK]
        after = after[np.isfinite(after)]
        if len(after) == 0 or np.median(after) - b <= rec:
            return i
        # A short spike: its peak within the last ENVELOPE steps, and the
        # loss stays back the step after, or it fell from the peak by
        # ONE_STEP_DROP of its height in one step (a one-step spike; what
        # follows is its damage, an anomaly of its own).
        if tail[max(k - ENVELOPE, 0):k + 1].max() >= highest[k] and (
                y[i + 1] - b <= rec
                or (k >= 1 and tail[k - 1] >= highest[k]
                    and highest[k] - y[i] >= ONE_STEP_DROP * (highest[k] - b))):
            return i
    return None


def _envelope(seg):
    """(`seg` with NaN as -inf, its running maximum over ENVELOPE steps)."""
    seg = np.where(np.isfinite(seg), seg, -np.inf)
    pad = np.concatenate([np.full(ENVELOPE - 1, -np.inf), seg])
    return seg, np.lib.stride_tricks.sliding_window_view(pad, ENVELOPE).max(axis=1)


def train_onsets(y, onset, stop, b, high):
    """Onsets of the spikes inside one excursion [onset, stop).

    Judged on the loss's running maximum (`_envelope`: the tail of a spike
    swings by a decade from step to step, its envelope does not). A new
    spike starts where the envelope, after falling below the current
    spike's peak by TRAIN_DROP of its height above `b` (and at least
    MIN_DECADES), rises again by MIN_DECADES from its trough, to above
    `high` (the excursion's detection level). The onset is the first step
    of that rise more than ONSET above the trough.
    """
    starts = [onset]
    seg, env = _envelope(y[onset:stop])
    peak, trough, trough_k = -np.inf, None, None
    for k, v in enumerate(env):
        if not np.isfinite(v):
            continue
        if trough is None:
            if v > peak:
                peak = v
            elif peak - v >= max(MIN_DECADES, TRAIN_DROP * (peak - b)):
                trough, trough_k = v, k
        elif v < trough:
            trough, trough_k = v, k
        elif v - trough >= MIN_DECADES and seg[k] > high:
            rise = k
            while rise > trough_k + 1 and seg[rise - 1] - trough > ONSET:
                rise -= 1
            starts.append(onset + rise)
            peak, trough = v, None
    return starts


def _settled_rise(y, floor, first):
    """Whether a rise just after a recovery is a new excursion.

    The tail of a recovered spike still wanders: within 2 blocks of the
    recovery at `floor`, a new excursion must rise MIN_DECADES above the
    lowest loss since then.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        settled = np.nanmin(y[max(floor - 1, 0):first + 1])
    return bool(y[first] - settled >= MIN_DECADES)


def _hovered(steps, y, spike, onset, floor):
    """Whether the loss hovered above `spike`'s baseline until `onset`.

    True when the onset reaches back to the spike's end (`floor`: every
    step between was over 2x above the level), or the median from the
    spike's end to `onset` stays more than ONSET above the baseline: the
    spike never settled, so a divergence from `onset` is the same blow-up,
    and the spike its first rise. Never for a one-step spike, back the step
    after its peak: that was one batch, and what rises after it is its
    damage, an anomaly of its own.
    """
    if spike.end_step - spike.peak_step <= 1:
        return False  # a one-step spike (a batch), back the step after its peak
    e = int(np.searchsorted(steps, spike.end_step))
    if onset <= max(e, floor):
        return True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        between = np.nanmedian(y[e:onset])
    return not between - math.log10(spike.baseline) <= ONSET


def _excursions(steps, loss, y, base, scale, stop_at=None, early=None, band=None):
    """Spikes and divergences: excursions far above the baseline.

    An excursion starts at a step over `max(Z * scale, MIN_DECADES)` above
    the baseline, its onset reaching back over the steps 2x above it, and
    ends where the loss is back within 3x and stays (`_recovered_at`); one
    that never recovers is a divergence. A divergence that follows a spike
    before the loss settled takes the spike as its onset (one blow-up, one
    anomaly); inside an excursion every re-rise of a train is a spike of its
    own (`train_onsets`). On the `early` rows (`_early`) the limit is
    `EARLY_DECADES` above the first loss. Where the loss's noise band is
    heavy-tailed (`band_height`: small batches near zero loss, a few hard
    or mislabelled examples), the limit is also `TOP_MARGIN` above the
    band's height: a spike stands out of the band, it is not its tallest
    steps.
    """
    n = len(y)
    limit = np.maximum(Z * scale, MIN_DECADES)
    if band is not None:
        limit = np.fmax(limit, band + TOP_MARGIN)
    if early is not None:
        limit = np.where(early, np.maximum(limit, EARLY_DECADES), limit)
    with np.errstate(invalid="ignore"):
        over = (y - base) > limit
    zeros = _at_floor(loss)
    if zeros.any():
        finite = np.flatnonzero(np.isfinite(y))
        start = y[finite[0]] if len(finite) else np.nan
        with np.errstate(invalid="ignore"):
            over &= ~(zeros & (y < start + FLOOR_MATERIAL))
    hot = np.flatnonzero(over)
    if stop_at is not None:
        hot = hot[hot < stop_at]
    found = []
    i = 0
    floor = 0  # an onset never reaches back into the previous excursion
    while i < len(hot):
        first = int(hot[i])
        if found and first - floor < 2 * BLOCK and not _settled_rise(y, floor, first):
            i += 1
            continue
        b, s = base[first], scale[first]
        onset = _onset(y, first, b, max(ONSET, 2 * s), floor)
        end = _recovered_at(y, b, first, max(RECOVERED, 3 * s))
        if stop_at is not None and end is not None and end >= stop_at:
            end = None
        stop = end if end is not None else (stop_at if stop_at is not None else n)
        starts = train_onsets(y, onset, stop, b, b + limit[first])
        if end is None and len(starts) == 1 and found and found[-1].end_step is not None \
                and _hovered(steps, y, found[-1], onset, floor):
            spike = found.pop()
            starts = [int(np.searchsorted(steps, spike.step))]
            b = math.log10(spike.baseline)
        segments = _segments(steps, loss, y, starts, stop, end, b)
        if end is None and _wandering(segments):
            segments = [_instability(steps, loss, y, starts[0], stop, b)]
        elif end is None and stop == n and segments[-1].kind == "divergence":
            segments[-1] = _recovering(steps, loss, y, segments[-1], b)
        found += segments
        if end is None:
            break
        floor = end + 1
        i = int(np.searchsorted(hot, end))
    return found


def _wandering(segments):
    """Whether an excursion that never recovers is chronic instability.

    Split into at least `stalls.RETURNS` rises, and its later rises no
    higher than MIN_DECADES above its first: the loss keeps bouncing at a
    level far above its baseline instead of running away.
    """
    if len(segments) < stalls.RETURNS:
        return False
    first = segments[0].severity
    late = segments[len(segments) // 2:]
    return max(a.severity for a in late) < first + MIN_DECADES


def _recovering(steps, loss, y, a, b):
    """Divergence `a`, or the spike it is when the run ended while the loss came back.

    Coming back: the last block's median at least RECOVERING_SHARE of the
    excursion's height (in decades, and MIN_DECADES) below its highest
    point, and still falling, ONSET below the block 3 blocks before it
    (at least 4 blocks after the highest point). Such a
    spike has no end step yet (pattern "recovering").
    """
    lo = int(np.searchsorted(steps, a.step))
    seg = y[lo:]
    finite = np.flatnonzero(np.isfinite(seg))
    if len(finite) < 3 * BLOCK:
        return a
    top = int(np.nanargmax(seg))
    if len(seg) - top < 4 * BLOCK:
        return a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        last = np.nanmedian(seg[-BLOCK:])
        before = np.nanmedian(seg[-4 * BLOCK:-3 * BLOCK])
    height = seg[top] - b
    fell = seg[top] - last
    if not (fell >= max(RECOVERING_SHARE * height, MIN_DECADES) and before - last >= ONSET):
        return a
    return dataclasses.replace(a, kind="spike", pattern="recovering",
                               peak_step=int(steps[lo + top]), severity=float(height),
                               peak_value=float(loss[lo + top]))


def _creep(steps, loss, y, excursions):
    """`excursions`, with the slow divergence the run ended in, if any.

    A rise that no step of it is 10x above the recent baseline (the
    baseline climbs with it), judged on block medians (spikes left out),
    on a 3-block running median: the last 2 blocks' median is at least
    MIN_DECADES above the best level before them, and still rising, ONSET
    above the level halfway from the rise's onset (the last block within
    ONSET of that best) to the end, at least 4 blocks later. Spikes after
    that onset are part of its rise, and a spike the loss hovered above
    until it is its first rise (`_hovered`). Its pattern is "slow". Not
    where the loss is exactly
    0 on some of the last 2 blocks' steps: at float's floor, its positive
    values are rounding remnants.
    """
    n = len(y)
    med, size, _ = stalls.block_medians(_masked(steps, y, excursions), n)
    k = len(med)
    if k < 8:
        return excursions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pad = np.concatenate([[np.nan], med, [np.nan]])
        smooth = np.nanmedian(np.lib.stride_tricks.sliding_window_view(pad, 3), axis=1)
        final = np.nanmedian(y[(k - 2) * size:])
    head = smooth[:k - 2]
    if not np.isfinite(head).any() or not np.isfinite(final):
        return excursions
    j_best = int(np.nanargmin(head))
    best = head[j_best]
    if final - best < MIN_DECADES:
        return excursions
    if np.any(np.asarray(loss[(k - 2) * size:], np.float64) == 0.0):
        return excursions  # a loss exactly 0 on some batches: rounding remnants
    near = np.flatnonzero(head[j_best:] <= best + ONSET)
    j0 = j_best + int(near[-1]) + 1
    mid = smooth[(j0 + k) // 2]
    if k - j0 < 4 or not (np.isfinite(mid) and final - mid >= ONSET):
        return excursions
    onset = j0 * size
    found = list(excursions)
    inside = [a for a in found if a.step >= steps[onset]]
    if inside:  # spikes of its rise are the rise
        found = [a for a in found if a not in inside]
    earlier = [a for a in found if a.end_step is not None and a.step < steps[onset]]
    if earlier and _hovered(steps, y, earlier[-1], onset, 0):
        spike = earlier[-1]
        found.remove(spike)
        onset = int(np.searchsorted(steps, spike.step))
        best = math.log10(spike.baseline)
    seg = y[onset:]
    with np.errstate(invalid="ignore"):
        peak = onset + int(np.flatnonzero(seg >= np.nanmax(seg) - RECOVERED)[0])
    found.append(Anomaly(
        kind="divergence", step=int(steps[onset]), peak_step=int(steps[peak]),
        end_step=None, severity=float(y[peak] - best), baseline=float(10 ** best),
        peak_value=float(loss[peak]), pattern="slow"))
    return sorted(found, key=lambda a: a.step)


def _instability(steps, loss, y, lo, stop, b):
    """The unrecovered excursion [lo, stop) as one `instability` anomaly."""
    seg = y[lo:stop]
    peak = lo + int(np.nanargmax(seg))
    return Anomaly(
        kind="instability", step=int(steps[lo]), peak_step=int(steps[peak]),
        end_step=None, severity=float(y[peak] - b), baseline=float(10 ** b),
        peak_value=float(loss[peak]),
    )


def _onset(y, first, b, back, floor):
    """The onset of an excursion first seen at `first`.

    The first step of the run of steps more than `back` above `b` that ends
    at `first` (at most 4 baseline spans earlier, never before `floor`).
    """
    onset = first
    while onset > floor and np.isfinite(y[onset - 1]) and y[onset - 1] - b > back \
            and first - onset < 4 * BLOCK * BLOCKS:
        onset -= 1
    return onset


def _segments(steps, loss, y, starts, stop, end, b):
    """One Anomaly per spike of an excursion split at `starts`.

    Every spike but the last ends where the next one starts; the last ends
    at `end` (None: a divergence).
    """
    found = []
    bounds = starts[1:] + [stop]
    for k, (lo, hi) in enumerate(zip(starts, bounds)):
        seg_end = end if k == len(starts) - 1 else hi
        seg = y[lo:hi]
        peak = lo + int(np.nanargmax(seg)) if np.any(np.isfinite(seg)) else lo
        if seg_end is None and np.isfinite(y[peak]):
            # A divergence's peak: the top of its first rise, the first step
            # within RECOVERED of the worst (a loss that then wanders near
            # its worst would put the worst anywhere).
            with np.errstate(invalid="ignore"):
                peak = lo + int(np.flatnonzero(seg >= y[peak] - RECOVERED)[0])
        found.append(Anomaly(
            kind="spike" if seg_end is not None else "divergence",
            step=int(steps[lo]), peak_step=int(steps[peak]),
            end_step=None if seg_end is None else int(steps[seg_end]),
            severity=float(y[peak] - b), baseline=float(10 ** b),
            peak_value=float(loss[peak]),
        ))
    return found


def _masked(steps, y, excursions):
    """`y` with the rows of `excursions` (onset to end) set to NaN."""
    quiet = y.copy()
    for a in excursions:
        lo = int(np.searchsorted(steps, a.step))
        hi = len(y) if a.end_step is None else int(np.searchsorted(steps, a.end_step))
        quiet[lo:hi] = np.nan
    return quiet


def _quiet_baseline(steps, y, excursions):
    """The baseline again, from the steps outside `excursions`.

    A spike's tail inflates the robust scale of the blocks it falls in, and
    with it the detection limit, which would hide the next spike of a train.
    Where no unmasked block is in the history, the last baseline before
    carries on.
    """
    base, scale = baseline(_masked(steps, y, excursions))
    ok = np.isfinite(base)
    if ok.any() and not ok.all():
        last = np.maximum.accumulate(np.where(ok, np.arange(len(base)), -1))
        has = last >= 0
        base = np.where(has, base[np.maximum(last, 0)], np.nan)
        scale = np.where(has, scale[np.maximum(last, 0)], scale)
    return base, scale


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
        # One storm, one anomaly: runs of non-finite rows fewer than
        # NONFINITE_GAP finite rows apart (a loss NaN on most batches) merge.
        stop = start
        while stop + 1 < len(idx) and idx[stop + 1] - idx[stop] <= NONFINITE_GAP:
            stop += 1
        first, last = int(idx[start]), int(idx[stop])
        end = last + 1 if last + 1 < len(steps) else None
        found.append(Anomaly(
            kind="nonfinite", step=int(steps[first]), peak_step=int(steps[first]),
            end_step=None if end is None else int(steps[end]),
            severity=float(stop - start + 1), baseline=float("nan"),
            peak_value=float(loss[first]),
            pattern="loss" if not np.isfinite(loss[first]) else "silent",
        ))
        start = stop + 1
    return found


def _guarded_away(steps, loss, nonfinite_count, guard_skipped, anomaly):
    """Whether the guard skipped the update of every non-finite row of it."""
    if guard_skipped is None or anomaly.end_step is None:
        return False
    lo = int(np.searchsorted(steps, anomaly.step))
    hi = int(np.searchsorted(steps, anomaly.end_step))
    bad = ~np.isfinite(np.asarray(loss[lo:hi], np.float64))
    if nonfinite_count is not None:
        bad |= np.nan_to_num(np.asarray(nonfinite_count[lo:hi], np.float64)) > 0
    return bool(bad.any() and np.all(np.asarray(guard_skipped[lo:hi])[bad]))


def _rows_of(steps, anomalies, n, tail=0):
    """Bool [n]: the rows inside `anomalies`, and `tail` rows after each.

    Inside: from the onset to the end (or to the end of the run).
    """
    mask = np.zeros(n, bool)
    for a in anomalies:
        lo = int(np.searchsorted(steps, a.step))
        hi = n if a.end_step is None else int(np.searchsorted(steps, a.end_step)) + tail
        mask[lo:hi] = True
    return mask


def detect_anomalies(steps, loss, *, nonfinite=None, classes=None,
                     skipped=None, grad_norm=None, batch_size=None,
                     pred_spread=None, guard_skipped=None) -> List[Anomaly]:
    """All anomalies of one loss curve, sorted by onset step.

    Arguments:
      steps: int [n], sorted (need not be contiguous: downsampled input is
        fine, blocks are then counted in points).
      loss: float [n], the loss per step.
      nonfinite: optional [n] count of non-finite values per step (the
        writer's `nonfinite` column).
      classes: optional number of classes C: a stall at ln C (or B·ln C)
        is a plateau at chance.
      skipped: optional bool [n]: steps a LossScaleOptimizer skipped on
        purpose (not anomalies).
      grad_norm: optional [n] global gradient norm: exactly zero is frozen
        training; a collapse supports a stall.
      batch_size: optional [n] batch size (B·ln C is chance for a summed
        loss).
      pred_spread: optional [n] spread of the predictions over each step's
        batch, relative to their size (`stalls.constant_output`): a model
        giving every input the same output is stuck at any level.
      guard_skipped: optional bool [n]: steps whose update the update guard
        skipped (`guard_skip` 1). They stay anomalies (a NaN batch is still
        one), but a non-finite stretch whose every step was skipped did not
        break the run: spikes and stalls after it are still looked for.
    """
    steps = np.asarray(steps, np.int64)
    loss = np.asarray(loss, np.float64)
    n = len(steps)
    if n == 0:
        return []
    y = log10_loss(loss)
    base, scale, early = _early(y, *baseline(y))
    band = band_height(y)
    found = _nonfinite(steps, loss, nonfinite, skipped)
    # Past the first non-finite step a run is broken: no spikes after it.
    first_bad = None
    breaking = [a for a in found
                if not _guarded_away(steps, loss, nonfinite, guard_skipped, a)]
    if breaking:
        first_bad = int(np.searchsorted(steps, breaking[0].step))
    excursions = _excursions(steps, loss, y, base, scale, stop_at=first_bad, early=early,
                             band=band)
    # The noise band without what stood out of it at first: masking what
    # only the quiet baselines find would hide how noisy the run is.
    band = band_height(_masked(steps, y, excursions))
    for _ in range(QUIET_PASSES):
        # Again, against a baseline the excursions found do not inflate: a
        # spike's tail masked out of it is longer once it is judged against
        # the level before the spike, so this repeats until nothing changes.
        if not excursions:
            break
        base, scale, early = _early(y, *_quiet_baseline(steps, y, excursions))
        again = _excursions(steps, loss, y, base, scale, stop_at=first_bad, early=early,
                            band=band)
        if again == excursions:
            break
        excursions = again
    if first_bad is not None:
        # A blow-up from the first steps that runs straight (within a block)
        # into the first non-finite loss is that anomaly's run-up, not one
        # of its own; a divergence seen growing for longer is one.
        excursions = [a for a in excursions if not (
            a.end_step is None and early[int(np.searchsorted(steps, a.step))]
            and first_bad - int(np.searchsorted(steps, a.step)) <= BLOCK)]
    stop = n if first_bad is None else first_bad
    if first_bad is None and not any(a.end_step is None for a in excursions):
        excursions = _creep(steps, loss, y, excursions)
    found += excursions
    diverged = [a for a in excursions if a.end_step is None]
    frozen = stalls.frozen(steps, loss, y, stop, grad_norm)
    found += frozen
    for a in stalls.stall(steps, y, stop, classes=classes, batch_size=batch_size,
                          grad_norm=grad_norm, pred_spread=pred_spread):
        # One failure, one anomaly: not inside a divergence (unless the loss
        # came back down from its peak, to stay stuck), nor inside a frozen
        # stretch.
        if any(d.step <= a.step and (d.kind == "instability" or a.step <= d.peak_step or
                                     math.log10(d.peak_value / a.baseline) < MIN_DECADES)
               for d in diverged):
            continue
        if any(f.end_step is None or f.end_step > a.step for f in frozen):
            continue
        # A stall that a spike near its start interrupts (a blow-up in the
        # first steps, then nothing learned) starts where the spike ended.
        for e in excursions:
            if e.end_step is not None and a.step <= e.step < a.step + 2 * BLOCK \
                    and e.end_step > a.step:
                a = dataclasses.replace(a, step=e.end_step, peak_step=e.end_step)
        found.append(a)
    if not diverged:
        found += stalls.instability(steps, loss, y, stop,
                                    masked=_rows_of(steps, excursions, n, tail=2 * BLOCK))
    return sorted(found, key=lambda a: (a.step, a.kind))
