"""exploding_gradient: one layer's gradient exploded and led the loss.

Mechanism: one layer (often recurrent, or a deep stack) amplifies its
gradient: its gradient norm jumps far above its own recent level while
the other layers' stay put, and the loss follows. The burst may come at
the very first steps and be followed by collapse (the layer saturates).

Evidence: `evidence.single_layer_jump` in the detail rows up to the peak:
one tensor's gradient norm more than `evidence.ALONE_JUMP` (100) times
its recent level while the median tensor of the other layers moved less
than `evidence.OTHERS_MAX_JUMP` (3) times. That variable is named; the
lead is the jump's distance to the peak.

A stall after a burst (a `plateau`, not frozen): in the recorded windows
up to the stall's onset, one kernel's window-max gradient norm was over
`BURST_RATIO` times the median of the other kernels' (and not the input
kernel's, whose burst is the inputs' scale: `unnormalized_inputs`), and
on the stall its window-mean gradient is below `COLLAPSE_RATIO` times that
burst: the layer saturated. That kernel is named (`BURST_CONFIDENCE`,
above `dead_units`: the burst is what killed the units). An exploding
recurrence lifts every layer's gradient with it, so no kernel stands out
of the others: a recurrent kernel (its name says `recurrent`) whose burst
is the largest of all kernels and over `BURST_RATIO` times its own first
recorded gradient, then the same collapse, is that burst too.

A blow-up from the first steps (no recent level to jump from): at the
first recorded step a recurrent kernel's gradient (its name says
`recurrent`: the weights shared across time, whose gradient sums the
terms of every time lag) was over `FIRST_RATIO` times the median of the
other kernels', and the update it took moved those weights by at least
`FIRST_UPDATE` of their norm (or was not measured: lower confidence):
that update lifted the recurrence's gain and the state and the gradients
exploded through the sequence. The
feed-forward look-alike (an output kernel far above the others because
every activation is already huge) is `bad_init`; it is not recurrent.
"""

from typing import Optional

import numpy as np

from tb_stability import metadata
from tb_stability.analysis import causes as C
from tb_stability.analysis.context import Cause, Context, make_cause
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import fmt, single_layer_jump
from tb_stability.metadata import STAT

# Confidence when the jump came before the peak, and at the peak itself
# (no lead: it may as well be the consequence).
LEADING_CONFIDENCE = 0.6
NO_LEAD_CONFIDENCE = 0.5
# A stall after one kernel's burst: its window max over the other kernels'
# median (x), its window mean on the stall below this fraction of the
# burst, and the confidence.
BURST_RATIO = 1e3
COLLAPSE_RATIO = 1e-2
BURST_CONFIDENCE = 0.7
# A blow-up within `FIRST_STEPS` of the start after a recurrent kernel's
# first gradient dominated (x the other kernels' median) and its first
# update moved it by this fraction of its norm; the confidence.
FIRST_STEPS = 16
FIRST_RATIO = 10.0
FIRST_UPDATE = 0.1
FIRST_CONFIDENCE = 0.7
UNMEASURED_CONFIDENCE = 0.6  # the update ratio not recorded (RMSprop, ...)

_MAX = metadata.WINDOW_AGGREGATES.index("max")
_MEAN = metadata.WINDOW_AGGREGATES.index("mean")


def check(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The exploding_gradient cause of anomaly `a`, or None (see the module doc)."""
    if a.kind == "plateau":
        return None if a.pattern == "frozen" else _burst_then_collapse(ctx, a)
    jump = single_layer_jump(ctx, a.peak_step, a.peak_step)
    if jump is None:
        return _first_step_recurrent(ctx, a)
    step, k, rel, med = jump
    lead = int(a.peak_step - step)
    variable = ctx.name(k)
    confidence = NO_LEAD_CONFIDENCE if lead == 0 else LEADING_CONFIDENCE
    return make_cause(C.EXPLODING_GRADIENT, confidence, [
        f"The gradient norm of {variable} jumped {fmt(rel)}x its recent level at "
        f"step {step}, {lead} steps before the peak, while the other layers' "
        f"median tensor moved {fmt(med)}x."],
        variable=variable, lead=lead)


def _burst_then_collapse(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """exploding_gradient for a stall that followed one kernel's burst, or None."""
    run = ctx.run
    kernels = [k for k in ctx.kernels if k != ctx.input_index]
    if len(run.window_steps) == 0 or len(ctx.kernels) < 3 or not kernels:
        return None
    w = min(int(np.searchsorted(run.window_steps, a.step)), len(run.window_steps) - 1)
    peak = np.nanmax(run.window[:w + 1][:, ctx.kernels, STAT["grad_norm"], _MAX], axis=0)
    best, ratio = None, 0.0
    for j, k in enumerate(ctx.kernels):
        if k not in kernels:
            continue
        others = np.delete(peak, j)
        med = float(np.nanmedian(others)) if np.isfinite(others).any() else np.nan
        if np.isfinite(peak[j]) and med > 0 and peak[j] / med > ratio:
            best, ratio = j, float(peak[j] / med)
    against = "the other layers' median"
    if best is None or ratio < BURST_RATIO:
        best, ratio = _recurrent_burst(ctx, peak)
        against = "its first gradient"
        if best is None:
            return None
    k = ctx.kernels[best]
    after = run.window[w:, k, STAT["grad_norm"], _MEAN]
    after = float(np.nanmedian(after)) if np.isfinite(after).any() else np.nan
    if not (np.isfinite(after) and after < COLLAPSE_RATIO * peak[best]):
        return None
    variable = ctx.name(k)
    return make_cause(C.EXPLODING_GRADIENT, BURST_CONFIDENCE, [
        f"The gradient norm of {variable} burst to {fmt(peak[best])}, "
        f"{fmt(ratio)}x {against}, before the stall at step "
        f"{a.step}; on the stall it is {fmt(after)}: the layer saturated and "
        f"the loss stopped improving."], variable=variable)


def _recurrent_burst(ctx: Context, peak: np.ndarray):
    """(index into ctx.kernels, burst over its first gradient) of an exploding recurrence.

    The recurrent kernel with the largest window-max gradient of all
    kernels, over `BURST_RATIO` times its first recorded gradient; (None,
    0.0) when there is none.
    """
    _, row = ctx.first_detail()
    if row is None or not np.isfinite(peak).any():
        return None, 0.0
    top = int(np.nanargmax(peak))
    k = ctx.kernels[top]
    first = row[k, STAT["grad_norm"]]
    if "recurrent" not in (ctx.name(k) or "") or not (np.isfinite(first) and first > 0):
        return None, 0.0
    ratio = float(peak[top] / first)
    return (top, ratio) if ratio >= BURST_RATIO else (None, 0.0)


def _first_step_recurrent(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """exploding_gradient for a blow-up from the first steps, or None.

    Led by a recurrent kernel's first gradient (see the module doc).
    """
    step, row = ctx.first_detail()
    if row is None or a.step - int(ctx.run.steps[0]) > FIRST_STEPS or step > a.step or len(
            ctx.kernels) < 2:
        return None
    g = row[ctx.kernels, STAT["grad_norm"]]
    best, ratio = None, 0.0
    for j, k in enumerate(ctx.kernels):
        name = ctx.name(k) or ""
        others = np.delete(g, j)
        others = others[np.isfinite(others)]
        if "recurrent" not in name.rsplit("/", 1)[-1] or not len(others):
            continue
        med = float(np.median(others))
        if np.isfinite(g[j]) and med > 0 and g[j] / med > ratio:
            best, ratio = k, float(g[j] / med)
    if best is None or ratio < FIRST_RATIO:
        return None
    update = float(row[best, STAT["update_ratio"]])
    if np.isfinite(update) and update < FIRST_UPDATE:
        return None
    moved = (f"its update moved it by {update:.0%} of its norm" if np.isfinite(update)
             else "its update was not measured")
    variable = ctx.name(best)
    return make_cause(
        C.EXPLODING_GRADIENT,
        FIRST_CONFIDENCE if np.isfinite(update) else UNMEASURED_CONFIDENCE, [
            f"At step {step} the gradient norm of the recurrent kernel {variable} was "
            f"{fmt(row[best, STAT['grad_norm']])}, {fmt(ratio)}x the other kernels' median, "
            f"and {moved}: the recurrence's gain grew and the state and gradients "
            f"exploded through the sequence ({a.kind} from step {a.step})."],
        variable=variable, lead=int(a.peak_step - step))
