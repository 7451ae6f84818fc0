"""Failures without a spike: stalls, frozen training, chronic instability.

All three are judged on block medians of the log10 loss (blocks of 16
points; coarser for long runs, so a run has at most `MAX_BLOCKS` blocks),
which the noise of small-batch SGD does not move much.

* A **stall** (`plateau`, pattern "chance" or "stall") is a stretch that
  runs to the end of the run (or to its first non-finite step) with no
  relative progress: from its first quarter to its last the loss falls by
  less than `STALL_PROGRESS` decades, and its blocks stay within
  `STALL_SPREAD` decades (or `SPREAD_NOISE` times the noise of a block
  median, for a noisy loss). That alone is also what convergence looks like,
  so the level must be one a stuck model sits at: ln C (or B·ln C for a
  loss summed over a batch of B), within `NEVER_LEARNED` of the loss
  before the first update or of ln C (the run never learned), a level
  well above the best the run had reached
  (progress lost, typically after a blow-up), or a level not far below the
  start after a blow-up or with gradients that collapsed, or any level
  where the model gives every input the same output (the spread of its
  predictions over the batch below `CONSTANT_OUTPUT_RTOL` of their size on
  `CONSTANT_OUTPUT_SHARE` of the stretch: it ignores its input, e.g. a
  regression whose hidden units all died, stuck at the error of a constant
  prediction). A stretch at chance that ends because the problem gets
  solved is not an anomaly. A loss too noisy to be flat is a stall too
  when it never learned: over a stretch to the end as long as a stall's,
  no block median `NEVER_LEARNED` below the start (nor below ln C or
  B·ln C for a classifier that started above it), and its last quarter
  not `RISE` above its first (that would be a divergence) — it keeps
  jumping around where it began (a far too large step).
* **Frozen** training (`plateau`, pattern "frozen"): every gradient exactly
  zero, or the loss constant to `FROZEN_RTOL`, for `FROZEN_MIN_STEPS`
  steps; a constant loss only where the run never learned (a converged
  full-batch run is constant too).
* **Chronic instability** (`instability`): the loss keeps returning far
  above the best it had reached: over `WINDOW` blocks, at least
  `HIGH_FRACTION` of them `RISE` decades (and `RISE_NOISE` times the noise
  of a block median: from the spread inside blocks, or from interleaved
  samples of the same steps, `strided_noise`, whichever is larger) above
  the best block before them,
  in at least `RETURNS` separate returns (each after the loss came back
  within half that of its best), while the best improves by less
  than `NET_PROGRESS` decades. Steps inside spikes and divergences already
  found are left out, so a train of spikes is its spikes.
"""

import math
import warnings

import numpy as np

from tb_stability.analysis.anomaly import INSTABILITY, PLATEAU, Anomaly

BLOCK = 16
MAX_BLOCKS = 512  # long runs are judged on coarser blocks
STALL_MIN_STEPS = 160
STALL_MIN_FRACTION = 0.2  # of the finite run
# A run shorter than STALL_MIN_STEPS has a stall only pinned at chance
# (ln C or B·ln C: the level says it learned nothing), over this many steps.
SHORT_STALL_STEPS = 64
STALL_PROGRESS = 0.02  # decades gained from the first quarter to the last
STALL_SPREAD = 0.1  # decades: the 2-98 % range of a stall's block medians,
SPREAD_NOISE = 6.0  # ... or this many times the noise of a block median
CHANCE_TOL = 0.02  # relative distance to ln C (or B·ln C)
NEVER_LEARNED = 0.15  # decades below the first loss: still near the start
TREND_MIN = 0.01  # decades a never-learned stall's second half may fall, at most
TREND_SIGMAS = 3.0  # ... or fewer standard errors of that fall (one-sided p ~ 0.001)
LOST = 0.3  # decades above the best block before: progress lost
BARELY_LEARNED = 0.5  # decades below the first loss, with a blow-up or a collapse
BLOW_UP = 1.0  # decades above the first loss: a blow-up before the stall
GRAD_COLLAPSE = 1e-2  # the stall's median gradient norm / the early maximum
CONSTANT_OUTPUT_RTOL = 1e-6  # prediction spread over the batch / its size
CONSTANT_OUTPUT_SHARE = 0.9  # of the stretch's measured rows
FROZEN_MIN_STEPS = 50
FROZEN_RTOL = 1e-6
WINDOW = 16  # blocks an instability is judged over
RISE = 0.5  # decades above the best so far: a return,
RISE_NOISE = 5.0  # ... and this many times the noise of a block median
HIGH_FRACTION = 0.25
RETURNS = 3
NET_PROGRESS = 0.1  # decades the best may improve over a window of instability


def _nanmedian(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmedian(x)) if len(x) else float("nan")


def block_medians(y, stop):
    """(block medians of y[:stop] [k], block size in points, noise).

    noise: the standard deviation of a block median that the step-to-step
    noise alone gives (from the median absolute deviation inside blocks).
    """
    k16 = -(-stop // BLOCK)
    size = BLOCK * max(1, -(-k16 // MAX_BLOCKS))
    k = -(-stop // size)
    padded = np.full(k * size, np.nan)
    padded[:stop] = y[:stop]
    blocks = padded.reshape(k, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(blocks, axis=1)
        mad = np.nanmedian(np.abs(blocks - med[:, None]), axis=1)
        noise = 1.2533 * 1.4826 * float(np.nanmedian(mad)) / math.sqrt(size)
    return med, size, noise if math.isfinite(noise) else 0.0


def strided_noise(y, stop, size):
    """The standard deviation of a block median over `size` steps, from the steps' own mix.

    In each stretch of `size` blocks, the medians of its `size` interleaved
    samples (every `size`-th step, each offset once) see the same trend and
    the same stretches of high or low loss, so their spread is what the
    draw of the batches alone gives, whatever the shape of its distribution
    (a mix of clean batches and batches holding a mislabelled example puts
    a block's median on either mode). The standard deviation of those
    medians (not a robust one: a median that sits on the rarer mode is the
    noise looked for), median over the stretches; 0 where no stretch is
    full.
    """
    span = size * size
    full = stop // span
    if full == 0:
        return 0.0
    spreads = []
    for j in range(full):
        chunk = np.asarray(y[j * span:(j + 1) * span], np.float64).reshape(size, size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(chunk, axis=0)  # column c: steps c, c + size, ...
            med = med[np.isfinite(med)]
            if len(med) >= size // 2:
                spreads.append(float(np.std(med)))
    return float(np.median(spreads)) if spreads else 0.0


def start_level(y, stop):
    """The loss before training moved it (log10).

    The lower of the first finite value and the median of the first block.
    """
    ok = np.flatnonzero(np.isfinite(y[:stop]))
    if not len(ok):
        return float("nan")
    return min(float(y[ok[0]]), _nanmedian(y[:min(BLOCK, stop)]))


def constant_output(pred_spread, lo, hi):
    """Whether the predictions were the same for every input over rows [lo, hi).

    `pred_spread`: [n] of (max - min) / max(1, |mean|) of the predictions
    over each step's batch, NaN where not measured; True when at least
    `CONSTANT_OUTPUT_SHARE` of the measured rows (and at least one) are
    below `CONSTANT_OUTPUT_RTOL`, and the predictions varied over a batch
    before `lo` (a batch of one example, or a planted table, never varies:
    no sign of anything).
    """
    if pred_spread is None:
        return False
    full = np.asarray(pred_spread, np.float64)
    if not np.any(full[:lo] > CONSTANT_OUTPUT_RTOL):
        return False
    x = full[lo:hi]
    x = x[np.isfinite(x)]
    return bool(len(x) and np.mean(x <= CONSTANT_OUTPUT_RTOL) >= CONSTANT_OUTPUT_SHARE)


def constant_suffix(pred_spread, stop, min_rows):
    """The first row of the stretch to `stop` where the output is constant, or None.

    The stretch after the last measured row whose predictions varied; it
    must hold `min_rows` rows or more. None when they never varied.
    """
    if pred_spread is None:
        return None
    x = np.asarray(pred_spread, np.float64)[:stop]
    measured = np.isfinite(x)
    if not measured.any():
        return None
    varied = np.flatnonzero(measured & (x > CONSTANT_OUTPUT_RTOL))
    if not len(varied):
        return None  # never varied: a batch of one example, not a dead model
    first = int(varied[-1]) + 1
    return first if stop - first >= min_rows else None


def _stuck(level, row, y, med, j, size, *, start, chance_levels, grad_norm,
           blown_up, pred_spread=None):
    """(pattern, why) when a flat stretch at `level` from block `j` is stuck.

    None when the level is one a converging run reaches (see the module doc).
    """
    value = 10.0 ** level
    for c in chance_levels:
        if abs(value - c) < CHANCE_TOL * c:
            return "chance"
    if level >= start - NEVER_LEARNED:
        return "stall"
    if chance_levels and level >= math.log10(chance_levels[0]) - NEVER_LEARNED:
        return "stall"  # a classifier barely below chance: it learned nothing much
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        best = np.nanmin(med[:j]) if j > 0 else np.nan
    if np.isfinite(best) and level - best >= LOST:
        return "stall"
    if constant_output(pred_spread, row, len(y)):
        return "stall"
    if level >= start - BARELY_LEARNED:
        if blown_up:
            return "stall"
        if grad_norm is not None and row > 0:
            g = np.asarray(grad_norm, np.float64)
            early = np.nanmax(g[:min(row, 4 * BLOCK)]) if np.any(np.isfinite(g[:row])) else np.nan
            during = _nanmedian(g[row:])
            if np.isfinite(early) and early > 0 and during < GRAD_COLLAPSE * early:
                return "stall"
    return None


def _sorted_quantile(x, q):
    """Quantile `q` of the sorted array `x`, as np.percentile's default.

    np.percentile's own overhead dominates on a few dozen values.
    """
    pos = q * (len(x) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(x) - 1)
    return float(x[lo] + (x[hi] - x[lo]) * (pos - lo))


def _flat_start(med, min_blocks, spread_limit):
    """The first block of the longest flat suffix of `med`, or None.

    Flat: at least `min_blocks` long, no progress from its first quarter to
    its last, its blocks within `spread_limit`.
    """
    k = len(med)
    finite = np.isfinite(med)
    found = None
    for j in range(k - min_blocks, -1, -1):
        if finite[j:].sum() < min_blocks // 2:
            continue
        q = max(2, (k - j) // 4)
        head, tail = med[j:j + q], med[k - q:]
        head, tail = np.sort(head[np.isfinite(head)]), np.sort(tail[np.isfinite(tail)])
        if not len(head) or not len(tail):
            continue
        if _sorted_quantile(head, 0.5) - _sorted_quantile(tail, 0.5) >= STALL_PROGRESS:
            continue
        suf = np.sort(med[j:][finite[j:]])
        if _sorted_quantile(suf, 0.98) - _sorted_quantile(suf, 0.02) <= spread_limit:
            found = j
    return found


def _falling(med):
    """Whether the block medians `med` fall steadily.

    A least-squares line through them drops by at least `TREND_MIN` decades
    over the stretch and by `TREND_SIGMAS` standard errors of that drop
    (slow progress, which the quarter medians of a noisy loss can miss).
    """
    t = np.flatnonzero(np.isfinite(med))
    if len(t) < 4:
        return False
    v = med[t]
    tc = t - t.mean()
    slope = float(np.dot(tc, v - v.mean()) / np.dot(tc, tc))
    resid = v - v.mean() - slope * tc
    se = math.sqrt(float(np.dot(resid, resid)) / (len(t) - 2) / float(np.dot(tc, tc)))
    drop = -slope * (t[-1] - t[0])
    return drop >= TREND_MIN and drop >= TREND_SIGMAS * se * (t[-1] - t[0])


def flat_onset(y):
    """(row, level) where the loss `y` (log10) stopped moving, or None.

    The start of the flat suffix of `y`, at least `STALL_MIN_STEPS` long,
    by the stall's test of flatness alone (no judgement of the level: a
    converged run is flat too). The recorder keeps per-variable rows there,
    since a plateau is only known, from the whole run, once its onset is
    long past.
    """
    stop = len(y)
    if stop < STALL_MIN_STEPS:
        return None
    med, size, noise = block_medians(y, stop)
    min_blocks = -(-STALL_MIN_STEPS // size)
    if len(med) < min_blocks or not np.isfinite(med[-1]):
        return None
    j = _flat_start(med, min_blocks, max(STALL_SPREAD, SPREAD_NOISE * noise))
    if j is None:
        return None
    return j * size, _nanmedian(med[j:])


def stall(steps, y, stop, *, classes=None, batch_size=None, grad_norm=None,
          pred_spread=None):
    """The stall that runs to row `stop` (exclusive), as a list of 0 or 1."""
    short = stop < STALL_MIN_STEPS
    if stop < max(SHORT_STALL_STEPS if short else STALL_MIN_STEPS, 2 * BLOCK):
        return []
    med, size, noise = block_medians(y, stop)
    spread_limit = max(STALL_SPREAD, SPREAD_NOISE * noise)
    k = len(med)
    min_steps = SHORT_STALL_STEPS if short else STALL_MIN_STEPS
    min_blocks = max(-(-min_steps // size), math.ceil(STALL_MIN_FRACTION * k), 4)
    if k < min_blocks or not np.isfinite(med[-1]):
        return []
    found = _flat_start(med, min_blocks, spread_limit)
    if found is None:
        return [] if short else _never_learned(steps, y, stop, med, size, min_blocks,
                                               classes=classes, batch_size=batch_size)
    j = found
    level = _nanmedian(med[j:])
    # The onset: past the blocks of the stretch off its level (the last of
    # the descent, or of the progress before a blow-up).
    while j < k - min_blocks and not abs(med[j] - level) <= spread_limit / 2:
        j += 1
    row = j * size
    start = start_level(y, stop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        peak_before = np.nanmax(y[:row]) if row > 0 else np.nan
    chance_levels = _chance_levels(classes, batch_size, stop)
    pattern = _stuck(level, row, y, med, j, size, start=start,
                     chance_levels=chance_levels, grad_norm=grad_norm,
                     blown_up=bool(np.isfinite(peak_before) and peak_before - start >= BLOW_UP),
                     pred_spread=pred_spread)
    if short and pattern != "chance":
        return []
    if pattern is None:
        first = constant_suffix(pred_spread, stop, min_blocks * size)
        if first is None or first < row - size:
            return []
        pattern, row = "stall", first  # stuck since its output stopped depending on x
    # The onset: the first row near the level, from the block before on.
    tol = max(math.log10(1 + CHANCE_TOL), STALL_SPREAD / 2)
    lo = max(row - size, 0)
    with np.errstate(invalid="ignore"):
        near = np.flatnonzero(np.abs(y[lo:row + size] - level) <= tol)
    first = lo + int(near[0]) if len(near) else row
    end = None if stop >= len(y) else stop
    return [Anomaly(
        kind=PLATEAU, step=int(steps[first]), peak_step=int(steps[first]),
        end_step=None if end is None else int(steps[end]),
        severity=float((stop - first) / len(y)), baseline=float(10.0 ** level),
        peak_value=float(10.0 ** y[first]) if np.isfinite(y[first]) else float("nan"),
        pattern=pattern,
    )]


def _chance_levels(classes, batch_size, stop):
    """The loss levels at chance: ln C and, with a batch B > 1, B·ln C."""
    levels = []
    if classes and classes >= 2:
        levels.append(math.log(classes))
        if batch_size is not None:
            b = _nanmedian(np.asarray(batch_size, np.float64)[:stop])
            if np.isfinite(b) and b > 1:
                levels.append(b * math.log(classes))
    return levels


def _never_learned(steps, y, stop, med, size, min_blocks, *, classes, batch_size):
    """The stall of a noisy loss that never got below where it began (0 or 1)."""
    start = start_level(y, stop)
    if not np.isfinite(start):
        return []
    floor = start
    for c in _chance_levels(classes, batch_size, stop):
        # A classifier that started above chance and sits around it.
        if math.log10(c) < floor and abs(math.log10(c) - _nanmedian(med)) <= NEVER_LEARNED:
            floor = math.log10(c)
    k = len(med)
    with np.errstate(invalid="ignore"):
        below = np.flatnonzero(med < floor - NEVER_LEARNED)
    j = int(below[-1]) + 1 if len(below) else 0
    if k - j < min_blocks or np.isfinite(med[j:]).sum() < min_blocks // 2:
        return []
    q = max(2, (k - j) // 4)
    change = _nanmedian(med[k - q:]) - _nanmedian(med[j:j + q])
    if change > RISE:
        return []  # rising: a divergence, not a loss jumping where it began
    if _falling(med[j + (k - j) // 2:]):
        return []  # still falling over its second half: slow progress, not stuck
    row = j * size
    first = row + int(np.argmax(np.isfinite(y[row:stop]))) if row < stop else row
    end = None if stop >= len(y) else stop
    level = _nanmedian(med[j:])
    return [Anomaly(
        kind=PLATEAU, step=int(steps[first]), peak_step=int(steps[first]),
        end_step=None if end is None else int(steps[end]),
        severity=float((stop - first) / len(y)), baseline=float(10.0 ** level),
        peak_value=float(10.0 ** y[first]) if np.isfinite(y[first]) else float("nan"),
        pattern="stall",
    )]


def _runs(mask, min_len):
    """[(start, stop)] of the runs of True in `mask` at least `min_len` long."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2]) if b - a >= min_len]


def frozen(steps, loss, y, stop, grad_norm=None):
    """Stretches where nothing moves (module doc), up to row `stop`."""
    loss = np.asarray(loss, np.float64)[:stop]
    if stop < 10:
        return []
    min_len = min(FROZEN_MIN_STEPS, stop)
    start = start_level(y, stop)
    zero = np.zeros(stop, bool)
    if grad_norm is not None:
        g = np.asarray(grad_norm, np.float64)[:stop]
        zero = (g == 0.0) & (loss != 0.0)
    with np.errstate(invalid="ignore"):
        same = np.abs(np.diff(loss)) <= FROZEN_RTOL * np.abs(loss[1:])
    const = np.concatenate([[False], same])
    const[:-1] |= same  # both steps of a constant pair
    with np.errstate(invalid="ignore"):
        const &= ~(y[:stop] < start - NEVER_LEARNED)
    found = []
    for a, b in _runs(zero | const, min_len)[:3]:
        end = None if b >= len(steps) else b
        found.append(Anomaly(
            kind=PLATEAU, step=int(steps[a]), peak_step=int(steps[a]),
            end_step=None if end is None else int(steps[end]),
            severity=float((b - a) / len(steps)), baseline=float(loss[a]),
            peak_value=float(loss[a]), pattern="frozen",
        ))
    return found


def instability(steps, loss, y, stop, masked=None):
    """Chronic instability up to row `stop` (module doc), as a list."""
    yy = np.array(y[:stop], np.float64)
    if masked is not None:
        yy[masked[:stop]] = np.nan
    med, size, noise = block_medians(yy, stop)
    noise = max(noise, strided_noise(yy, stop, size))
    rise = max(RISE, RISE_NOISE * noise)
    k = len(med)
    if k < WINDOW + 2:
        return []
    # The best level so far, on a 3-block running median (one lucky block
    # of a noisy run does not set it).
    pad = np.concatenate([[np.nan], med, [np.nan]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        smooth = np.nanmedian(np.lib.stride_tricks.sliding_window_view(pad, 3), axis=1)
    best = np.fmin.accumulate(np.where(np.isfinite(smooth), smooth, np.inf))
    best_before = np.concatenate([[np.inf], best[:-1]])
    with np.errstate(invalid="ignore"):
        excess = med - best_before
        high = np.isfinite(excess) & (excess >= rise)
    # A return starts a run of high blocks after the loss came back near
    # its best (within rise / 2): hovering at the threshold is one return,
    # and so is the tail of a spike already found.
    low = np.isfinite(excess) & (excess < rise / 2)
    back = np.zeros(k, bool)
    came_back = True
    for j in range(k):
        if not np.isfinite(med[j]):
            came_back = False  # inside a spike: its tail is not a return
        elif high[j] and came_back:
            back[j], came_back = True, False
        elif low[j]:
            came_back = True
    bad = np.zeros(k, bool)
    for s in range(1, k - WINDOW + 1):
        w = slice(s, s + WINDOW)
        finite = np.isfinite(med[w]).sum()
        if finite < WINDOW // 2:
            continue
        h = high[w]
        returns = int(back[w][1:].sum() + h[0])
        progress = best_before[s] - best[s + WINDOW - 1]
        if h.sum() >= HIGH_FRACTION * finite and returns >= RETURNS \
                and np.isfinite(best_before[s]) and progress < NET_PROGRESS:
            bad[w] = True
    found = []
    for a, b in _runs(bad, WINDOW):
        hi = np.flatnonzero(high[a:b])
        a = a + int(hi[0]) if len(hi) else a
        first, last = a * size, min(b * size, stop)
        seg = yy[first:last]
        peak = first + int(np.nanargmax(seg)) if np.any(np.isfinite(seg)) else first
        end = None if b >= k - 1 and stop >= len(steps) else min(last, len(steps) - 1)
        found.append(Anomaly(
            kind=INSTABILITY, step=int(steps[first]), peak_step=int(steps[peak]),
            end_step=None if end is None else int(steps[end]),
            severity=float(np.nanmax(excess[a:b])), baseline=float(10.0 ** best_before[a]),
            peak_value=float(np.asarray(loss, np.float64)[peak]),
        ))
    return found
