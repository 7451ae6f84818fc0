"""Measurements the cause rules share (pure NumPy).

Small functions over one run's aligned arrays (`events.series.RunData`)
that more than one rule needs: number formatting for evidence sentences,
NaN-tolerant medians, the last measured row before a step, gradient jumps,
the precursor level of RMS(g²/v̂), the first step where one layer's
gradient jumped alone, and whether the first loss is a summed one.
"""

import math
import warnings
from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np

from tb_stability.metadata import STAT, layer_of

if TYPE_CHECKING:  # pragma: no cover
    from tb_stability.analysis.context import Context

# Rows (steps) before a peak where a leading signal may start.
LEAD_WINDOW = 32

# rms_precursor_level: the rows of history it looks back over, the fewest
# measured rows it needs (else the level is 1.0), and the quantile of the
# history (weighted by how long each measurement stood) that is the level.
PRECURSOR_HISTORY = 1000
PRECURSOR_MIN_ROWS = 50
PRECURSOR_QUANTILE = 0.99

# single_layer_jump: detail rows before the lead window it reads (to have a
# history), the rows that make the history (their median is the level),
# how far above its level one tensor's gradient norm must jump (x), and how
# little the other layers' median tensor may move meanwhile (x).
JUMP_HISTORY_EXTRA = 16
JUMP_HISTORY_ROWS = 8
JUMP_MIN_TENSORS = 3
ALONE_JUMP = 100.0
OTHERS_MAX_JUMP = 3.0

# summed_first_loss: how close (relative) the first loss must be to B·ln C.
SUMMED_TOLERANCE = 0.1
# summed_beyond_examples: how far above the largest per-example error the
# batch allows the first loss must be (x).
SUMMED_BOUND_FACTOR = 2.0


def fmt(x) -> str:
    """A number for an evidence sentence.

    4 significant digits, or 2 in exponent form outside [1e-3, 1e4);
    `nan`/`inf` as Python writes them.
    """
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.2g}"
    return f"{x:.4g}"


def nanmedian(x) -> float:
    """The median of the non-NaN values of `x`, NaN (no warning) if none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmedian(x)) if len(x) else float("nan")


def last_finite(x: np.ndarray, i: int, back: int = 64) -> Optional[int]:
    """The last row at or before `i` where `x` is finite.

    At most `back` rows before `i`: a recorder computing its statistics
    every few steps leaves NaN between them. None when there is none.
    """
    lo = max(0, i - back)
    ok = np.flatnonzero(np.isfinite(x[lo:i + 1]))
    return int(lo + ok[-1]) if len(ok) else None


def grad_jump(grad: np.ndarray, i: int, before: int, window: int) -> Optional[float]:
    """How many times its recent median `grad[i]` is.

    The median is over the finite values in the `window` rows before row
    `before`. None when either is missing.
    """
    past = grad[max(0, before - window):before]
    past = past[np.isfinite(past)]
    if not len(past) or not np.isfinite(grad[i]):
        return None
    return float(grad[i] / max(float(np.median(past)), 1e-30))


def rms_precursor_level(rms: np.ndarray, lo: int, history: int = PRECURSOR_HISTORY) -> float:
    """The level RMS(g²/v̂) must exceed to count as a precursor at rows from `lo` on.

    1.0, or its own 99th percentile over the `history` rows before when it
    has often been above 1 anyway (late in a long Adam run a small tensor's
    ratio wanders above 1 without consequence).
    """
    past = rms[max(0, lo - history):lo]
    # A recorder with stats_every > 1 measures every few rows, and every row
    # around anomalies: each measured value stands for the rows up to the
    # next one, or the excursions would weigh more than they last.
    rows = np.flatnonzero(np.isfinite(past))
    if len(rows) < PRECURSOR_MIN_ROWS:
        return 1.0
    weight = np.diff(np.append(rows, len(past)))
    values = past[rows]
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weight[order])
    k = int(np.searchsorted(cum, PRECURSOR_QUANTILE * cum[-1]))
    return max(1.0, float(values[order][min(k, len(order) - 1)]))


def single_layer_jump(ctx: "Context", peak_step: int,
                      last_step: int) -> Optional[Tuple[int, int, float, float]]:
    """The first step where one layer's gradient norm jumped alone.

    Searches the detail rows up to `last_step` (inclusive) for one tensor
    whose gradient norm jumped more than `ALONE_JUMP` times its recent level
    while the median tensor of the *other* layers (`metadata.layer_of`)
    moved less than `OTHERS_MAX_JUMP` times.

    Returns:
      (step, variable index, its jump, the others' median jump), or None.
    """
    run = ctx.run
    steps_d, det = run.detail_between(peak_step - LEAD_WINDOW - JUMP_HISTORY_EXTRA, last_step)
    if len(steps_d) < JUMP_HISTORY_ROWS + 1 or det.shape[1] < JUMP_MIN_TENSORS:
        return None
    g = det[:, :, STAT["grad_norm"]]
    hist = np.nanmedian(g[:JUMP_HISTORY_ROWS], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = g / np.maximum(hist, 1e-30)
    layers = [layer_of(ctx.name(k)) for k in range(g.shape[1])]
    for t in range(JUMP_HISTORY_ROWS, len(steps_d)):
        jumped = np.flatnonzero(rel[t] > ALONE_JUMP)
        if not len(jumped):
            continue
        k = int(jumped[np.argmax(rel[t, jumped])])
        others = [j for j in range(g.shape[1]) if layers[j] != layers[k]]
        if not others:
            continue
        med = float(np.nanmedian(rel[t, others]))
        if med < OTHERS_MAX_JUMP:
            return int(steps_d[t]), k, float(rel[t, k]), med
    return None


def summed_first_loss(ctx: "Context") -> bool:
    """Whether the first loss is B·ln C: a loss summed over the batch.

    Needs C >= 2 classes (the last kernel's width), a batch size B > 1 and
    a finite first loss within `SUMMED_TOLERANCE` of B·ln C.
    """
    batch, loss0 = ctx.run.col("batch_size")[0], ctx.loss[0]
    if not (ctx.classes and ctx.classes >= 2 and np.isfinite(batch) and batch > 1
            and np.isfinite(loss0)):
        return False
    expected = batch * math.log(ctx.classes)
    return abs(loss0 - expected) <= SUMMED_TOLERANCE * expected


def summed_beyond_examples(ctx: "Context") -> Optional[Tuple[float, float]]:
    """(first loss, bound) when the first loss is more than any example's error.

    A mean of squared (or absolute) errors is at most the largest one. The
    largest error any example of the first measured batch allows is
    max(|target_max - pred_min|, |pred_max - target_min|); a first loss
    over `SUMMED_BOUND_FACTOR` times max(that², that) is no mean: it is a
    sum over the batch. None without the data statistics, when the
    bound holds, or for class labels (a cross-entropy term is not bounded
    by the label's distance).
    """
    if ctx.targets_are_labels():
        return None
    cols = [ctx.column(n) for n in ("target_min", "target_max", "pred_min", "pred_max")]
    ok = np.isfinite(ctx.loss) & np.all([np.isfinite(c) for c in cols], axis=0)
    rows = np.flatnonzero(ok)
    if not len(rows):
        return None
    i = int(rows[0])
    t_min, t_max, p_min, p_max = (float(c[i]) for c in cols)
    worst = max(abs(t_max - p_min), abs(p_max - t_min))
    bound = SUMMED_BOUND_FACTOR * max(worst * worst, worst)
    loss0 = float(ctx.loss[i])
    return (loss0, bound) if bound > 0 and loss0 > bound else None


def summed_reduction(ctx: "Context") -> bool:
    """Whether the recorded Keras loss sums over the batch (reduction "sum")."""
    loss = (ctx.model or {}).get("loss") or {}
    return isinstance(loss, dict) and loss.get("reduction") == "sum"


def summed_loss_signs(ctx: "Context") -> bool:
    """Any sign that the loss is summed over the batch (the three above)."""
    return bool(summed_first_loss(ctx) or summed_reduction(ctx)
                or summed_beyond_examples(ctx))
