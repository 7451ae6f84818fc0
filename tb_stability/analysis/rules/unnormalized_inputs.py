"""unnormalized_inputs: the inputs are in raw units, not standardised.

Mechanism: inputs in raw units (pixels 0-255, one feature in other units)
make the first layer's pre-activations and gradients huge: the first
update overshoots, ReLUs die, and the loss pins at ln C or goes NaN.

Evidence, from the first per-step detail row:

- the input scale: for a dense (or conv) layer dL/dW = xᵀδ and
  dL/db = Σδ, so ‖dW‖/‖db‖ is about ‖x‖, and divided by √fan-in it
  estimates the RMS input value (about 1 when standardised). Over
  `INPUT_RMS_LIMIT` it counts, but alone it can mislead (the bias gradient
  cancels when the residuals have zero mean), so the confidence is high
  only with an overshoot on the first updates: the input kernel's first
  update ratio over `FIRST_UPDATE_RATIO`, or a first loss over
  `CHANCE_FACTOR` times chance level ln C (and not a summed loss);
- one input feature out of scale: its gradient row in the input kernel is
  more than `FEATURE_ROW_RATIO` times the median row (the reliable signal
  when only one feature is unscaled).

An anomaly long after the start (past `LATE_STEP` and `LATE_FRACTION` of
the run) is less likely this cause: the inputs were always so. Not a
plateau: a stall is the lasting damage of the first overshoot, however
late the loss stopped creeping (the units it killed stay dead).
"""

import math
from typing import List, Optional, Tuple

import numpy as np

from tb_stability.analysis import causes as C
from tb_stability.analysis.context import Cause, Context, make_cause
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import fmt, nanmedian, summed_first_loss
from tb_stability.metadata import STAT

# Estimated RMS input value (‖dW‖/‖db‖/√fan-in; standardised inputs give
# about 1) above which the inputs count as unscaled.
INPUT_RMS_LIMIT = 20
# Overshoot: the input kernel's first update/weight ratio above this
# (usual: about 1e-3), or the first loss above this many times ln C.
FIRST_UPDATE_RATIO = 1e-2
CHANCE_FACTOR = 10
# Confidence of the scale estimate with an overshoot, and without one.
OVERSHOOT_CONFIDENCE = 0.9
ESTIMATE_ONLY_CONFIDENCE = 0.35
# One feature's gradient row over the median row (x) that names it, and
# the confidence it gives.
FEATURE_ROW_RATIO = 1e3
FEATURE_CONFIDENCE = 0.85
# An anomaly after max(LATE_STEP, LATE_FRACTION * the last step) is late:
# its confidence is multiplied by LATE_FACTOR.
LATE_STEP = 500
LATE_FRACTION = 0.1
LATE_FACTOR = 0.6


def _overshoot(ctx: Context, detail: np.ndarray, variable: str) -> List[str]:
    """The signs of an overshoot on the first updates, as clauses (maybe none)."""
    k = ctx.input_index
    overshoot = []
    upd = detail[k, STAT["update_ratio"]]
    if np.isfinite(upd) and upd > FIRST_UPDATE_RATIO:
        overshoot.append(f"the first update moved {variable} by "
                         f"{fmt(upd)} of its norm (usual: about 1e-3)")
    loss0 = ctx.loss[0]
    if ctx.classes and ctx.classes >= 2 and np.isfinite(loss0) \
            and loss0 > CHANCE_FACTOR * math.log(ctx.classes) and not summed_first_loss(ctx):
        overshoot.append(f"the first loss is {fmt(loss0)}, "
                         f"{fmt(loss0 / math.log(ctx.classes))}x "
                         f"chance level ln {ctx.classes}")
    return overshoot


def _input_scale(ctx: Context, step0: int, detail: np.ndarray,
                 variable: str) -> Tuple[List[str], float]:
    """(evidence, confidence) of the input-scale estimate ([], 0.0) if it does not count)."""
    k = ctx.input_index
    shape = ctx.variables[k]["shape"] if k < len(ctx.variables) else None
    if ctx.input_bias is None or not shape:
        return [], 0.0
    g_w = detail[k, STAT["grad_norm"]]
    g_b = detail[ctx.input_bias, STAT["grad_norm"]]
    fan_in = int(np.prod(shape[:-1]))
    if not (g_b > 0 and np.isfinite(g_w) and fan_in > 0):
        return [], 0.0
    rms = g_w / g_b / math.sqrt(fan_in)
    if not rms > INPUT_RMS_LIMIT:
        return [], 0.0
    evidence = [f"At step {step0}, ||dW||/||db|| of {variable} is "
                f"{fmt(g_w / g_b)}: inputs of RMS about {fmt(rms)} over "
                f"{fan_in} inputs (standardised inputs give about 1)."]
    overshoot = _overshoot(ctx, detail, variable)
    if not overshoot:
        return evidence, ESTIMATE_ONLY_CONFIDENCE
    evidence.append("Overshoot at the start: " + "; ".join(overshoot) + ".")
    return evidence, OVERSHOOT_CONFIDENCE


def _feature_row(ctx: Context, variable: str) -> Optional[str]:
    """The sentence naming an input feature out of scale, or None."""
    rows_steps, rows = ctx.run.input_rows_steps, ctx.run.input_rows
    if not (len(rows_steps) and rows.shape[1] > 1):
        return None
    r = rows[0]
    med = nanmedian(r[r > 0]) if np.any(r > 0) else float("nan")
    if not (np.isfinite(med) and med > 0 and np.nanmax(r) / med > FEATURE_ROW_RATIO):
        return None
    feature = int(np.nanargmax(r))
    return (f"Input feature {feature}: its gradient row in {variable} is "
            f"{fmt(np.nanmax(r) / med)}x the median row at step "
            f"{int(rows_steps[0])}: that feature is out of scale.")


def check(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The unnormalized_inputs cause of anomaly `a`, or None (see the module doc)."""
    step0, detail = ctx.first_detail()
    if detail is None or ctx.input_index is None:
        return None
    variable = ctx.name(ctx.input_index)
    evidence, confidence = _input_scale(ctx, step0, detail, variable)
    feature = _feature_row(ctx, variable)
    if feature is not None:
        confidence = max(confidence, FEATURE_CONFIDENCE)
        evidence.append(feature)
    if not confidence:
        return None
    if a.kind != "plateau" and a.step > max(LATE_STEP, LATE_FRACTION * ctx.run.steps[-1]):
        confidence *= LATE_FACTOR  # the inputs were always so; this anomaly is late
    return make_cause(C.UNNORMALIZED_INPUTS, confidence, evidence, variable=variable)
