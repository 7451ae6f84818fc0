"""dead_units: dead or saturated units; the output collapsed to the prior.

Mechanism: the units are dead or saturated (every ReLU negative, sigmoids
pinned): the gradients vanish everywhere and the output collapses to the
class prior, so the loss sits at ln C and the accuracy at 1/C.

Evidence: a `plateau` anomaly at chance (pattern "chance": pinned at
ln C). Supporting: the global gradient norm collapsed (its median on the
plateau below `GRAD_COLLAPSE` times its maximum before), or a kernel whose
window-mean gradient norm is exactly zero in the plateau's window (its
units are dead; that kernel is named), or, where the predictions were
measured, the same prediction for every input over the plateau
(`stalls.constant_output`) near the targets' mean (within
`MEAN_TOLERANCE` of the targets' range): the output layer learned the
mean while the units feeding it are dead (`CONSTANT_OUTPUT_CONFIDENCE`;
a constant prediction beyond the targets is `output_mismatch`). In a
network too shallow for gradients to vanish through its depth (fewer
than `vanishing_gradient.MIN_KERNELS` kernels), a first kernel whose
window-mean gradient is below `SATURATED_RATIO` times the last kernel's
and below `SATURATED_NORM` is a saturated hidden layer
(`SATURATED_CONFIDENCE`, that kernel named). A stall at another level (pattern
"stall") is this cause only with one of the supporting signals; frozen
training (every gradient zero, or a constant loss) is not judged here: a
mismatched output or loss does that too.
"""

import math
from typing import Optional

import numpy as np

from tb_stability import metadata
from tb_stability.analysis import causes as C
from tb_stability.analysis import stalls
from tb_stability.analysis.context import Cause, Context, make_cause
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import fmt, nanmedian
from tb_stability.analysis.rules import vanishing_gradient
from tb_stability.metadata import STAT

# Confidence of a plateau at ln C alone: below `attribute.MIN_CONFIDENCE`,
# a candidate only (shuffled labels or inputs without signal sit there too,
# with healthy units).
PINNED_CONFIDENCE = 0.25
# The median gradient norm on the plateau below this fraction of its
# maximum before it: the gradients collapsed.
GRAD_COLLAPSE = 1e-2
# Confidence with a collapsed gradient, or a kernel whose gradient is zero.
COLLAPSED_CONFIDENCE = 0.65
ZERO_GRADIENT_CONFIDENCE = 0.65
# A constant prediction within this fraction of the targets' range of
# their mean, and its confidence.
MEAN_TOLERANCE = 0.25
CONSTANT_OUTPUT_CONFIDENCE = 0.65
# A saturated hidden layer in a shallow network (see the module doc).
SATURATED_RATIO = 1e-3
SATURATED_NORM = 1e-4
SATURATED_CONFIDENCE = 0.65

_MEAN = metadata.WINDOW_AGGREGATES.index("mean")


def check(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The dead_units cause of anomaly `a`, or None (see the module doc)."""
    if a.kind != "plateau" or a.pattern == "frozen":
        return None
    run = ctx.run
    i = ctx.idx(a.step)
    g = run.col("grad_norm")
    early = np.nanmax(g[:max(i, 1)]) if i > 0 else np.nan
    during = nanmedian(g[i:])
    if a.pattern == "stall":
        evidence = [f"The loss has been stuck at {fmt(a.baseline)} since step "
                    f"{a.step}, with no progress to the end of the run."]
        confidence = 0.0
    else:
        at = f"ln {ctx.classes}"
        if ctx.classes and abs(a.baseline - math.log(ctx.classes)) > 0.05 * math.log(ctx.classes):
            at = f"the batch size times ln {ctx.classes} (a loss summed over the batch)"
        evidence = [f"The loss is pinned at {fmt(a.baseline)}, about {at}, "
                    f"from step {a.step}: the output is the class prior."]
        confidence = PINNED_CONFIDENCE
    if np.isfinite(early) and np.isfinite(during) and during < GRAD_COLLAPSE * early:
        evidence.append(f"The gradient norm collapsed from {fmt(early)} to "
                        f"{fmt(during)} after the first steps.")
        confidence = COLLAPSED_CONFIDENCE
    variable = None
    if len(run.window_steps) and ctx.kernels:
        w = min(int(np.searchsorted(run.window_steps, a.step)), len(run.window_steps) - 1)
        means = run.window[w, ctx.kernels, STAT["grad_norm"], _MEAN]
        zero = [ctx.kernels[j] for j in np.flatnonzero(means == 0.0)]
        if zero:
            variable = ctx.name(zero[0])
            evidence.append(f"The gradient of {variable} is exactly zero: its "
                            f"units are dead.")
            confidence = ZERO_GRADIENT_CONFIDENCE
    saturated = _saturated(ctx, a.step)
    if saturated is not None and variable is None:
        variable, sentence = saturated
        evidence.append(sentence)
        confidence = max(confidence, SATURATED_CONFIDENCE)
    constant = _constant_at_mean(ctx, i)
    if constant is not None:
        evidence.append(constant)
        confidence = max(confidence, CONSTANT_OUTPUT_CONFIDENCE)
    if confidence == 0.0:
        return None
    return make_cause(C.DEAD_UNITS, confidence, evidence, variable=variable)


def _constant_at_mean(ctx: Context, i: int) -> Optional[str]:
    """The sentence when the prediction is constant at the targets' mean from row i."""
    if not stalls.constant_output(ctx.pred_spread(), i, len(ctx.loss)):
        return None
    pred = nanmedian(ctx.column("pred_mean")[i:])
    mean = nanmedian(ctx.column("target_mean")[i:])
    lo, hi = ctx.column("target_min")[i:], ctx.column("target_max")[i:]
    if not (np.isfinite(lo).any() and np.isfinite(hi).any()):
        return None
    width = float(np.nanmax(hi) - np.nanmin(lo))
    if not (np.isfinite(pred) and np.isfinite(mean) and width > 0):
        return None
    if abs(pred - mean) > MEAN_TOLERANCE * width:
        return None
    return (f"Every input gets the same prediction ({fmt(pred)}), the targets' "
            f"mean ({fmt(mean)}): only the output's bias still learns; the units "
            f"feeding it are dead.")


def _saturated(ctx: Context, step: int):
    """(variable, sentence) of a saturated hidden layer in a shallow network, or None."""
    run = ctx.run
    if not (2 <= len(ctx.kernels) < vanishing_gradient.MIN_KERNELS) or not len(run.window_steps):
        return None
    w = min(int(np.searchsorted(run.window_steps, step)), len(run.window_steps) - 1)
    means = run.window[w:, ctx.kernels, STAT["grad_norm"], _MEAN]
    first, last = nanmedian(means[:, 0]), nanmedian(means[:, -1])
    if not (np.isfinite(first) and np.isfinite(last) and last > 0 and first > 0):
        return None
    if first / last >= SATURATED_RATIO or first >= SATURATED_NORM:
        return None
    variable = ctx.name(ctx.kernels[0])
    return variable, (f"The gradient of {variable} is {fmt(first)}, {fmt(first / last)}x "
                      f"the output layer's: its units are saturated and pass no "
                      f"gradient.")
