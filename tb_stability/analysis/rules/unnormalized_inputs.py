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

Direct evidence, where the recorder measured the inputs (per-feature
mean and std of the batch, `RunData.inputs`, first rows): the median
feature's RMS value (√(mean² + std²)) over `INPUT_RMS_LIMIT` (all inputs
raw), or one feature's RMS over `FEATURE_SCALE_RATIO` times the median
feature's and over `INPUT_RMS_LIMIT` (one feature in other units, named).
They replace the gradient-based estimates, with the same confidences: high
with an overshoot on the first updates (or for the feature, an anomaly
that starts early), `MEASURED_ONLY_CONFIDENCE` otherwise. Measured inputs
that are in scale rule the cause out.

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
from tb_stability.metadata import INPUT_COLUMNS, STAT

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
# Features named in the evidence at most.
MAX_FEATURES_SHOWN = 4
# Measured inputs: one feature's RMS over the median feature's (x), and
# the confidence of a measured scale without an overshoot.
FEATURE_SCALE_RATIO = 100.0
MEASURED_ONLY_CONFIDENCE = 0.5
# The rows of measured input statistics read (the first ones).
MEASURED_ROWS = 8

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
    evidence = [f"At step {step0}, the gradient norm of the kernel {variable} "
                f"was {fmt(g_w / g_b)}x its bias's: inputs of root mean square "
                f"about {fmt(rms)} over {fan_in} inputs (standardised inputs "
                f"give about 1)."]
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


def _measured(ctx: Context, a: Anomaly, detail: Optional[np.ndarray],
              variable: Optional[str]) -> Optional[Tuple[List[str], float]]:
    """(evidence, confidence) from the measured input statistics; None if not measured."""
    run = ctx.run
    steps, stats = getattr(run, "inputs_steps", None), getattr(run, "inputs", None)
    if steps is None or stats is None or not len(steps) or stats.ndim != 3 \
            or stats.shape[1] == 0:
        return None
    cols = {name: i for i, name in enumerate(INPUT_COLUMNS)}
    first = stats[:MEASURED_ROWS]
    if _token_ids(ctx, first, cols):
        return None
    rms = np.sqrt(first[:, :, cols["mean"]] ** 2 + first[:, :, cols["std"]] ** 2)
    with np.errstate(all="ignore"):
        rms = np.nanmedian(np.where(np.isfinite(rms), rms, np.nan), axis=0)
    if not np.isfinite(rms).any():
        return None
    median = float(np.nanmedian(rms))
    overshoot = [] if detail is None or ctx.input_index is None else \
        _overshoot(ctx, detail, variable)
    evidence = []
    if median > INPUT_RMS_LIMIT:
        evidence.append(f"The inputs are in raw units: the median feature's root mean square "
                        f"value is {fmt(median)} over the first steps "
                        f"(standardised inputs give about 1).")
        confidence = OVERSHOOT_CONFIDENCE if overshoot else MEASURED_ONLY_CONFIDENCE
    else:
        ratio = rms / max(median, 1e-12)
        out = [int(f) for f in np.flatnonzero((ratio > FEATURE_SCALE_RATIO)
                                              & (rms > INPUT_RMS_LIMIT))]
        if not out:
            return [], 0.0  # measured, and in scale
        shown = ", ".join(f"{f} (RMS {fmt(rms[f])})" for f in out[:MAX_FEATURES_SHOWN])
        evidence.append(f"Input feature(s) {shown} are out of scale: the median "
                        f"feature's RMS is {fmt(median)}.")
        early = a.step <= max(LATE_STEP, LATE_FRACTION * run.steps[-1])
        confidence = FEATURE_CONFIDENCE if (overshoot or early) else MEASURED_ONLY_CONFIDENCE
    if overshoot:
        evidence.append("Overshoot at the start: " + "; ".join(overshoot) + ".")
    return evidence, confidence


def _token_ids(ctx: Context, first: np.ndarray, cols) -> bool:
    """Whether the inputs are indices into an embedding table, not values.

    An embedding table [vocab, dim] has one row per token, not one per
    input feature (a dense kernel's rows are the features): the inputs are
    token ids when that table has another number of rows than there are
    features and the values are integral, non-negative and below it.
    """
    k = ctx.input_index
    if k is None or k >= len(ctx.variables):
        return False
    shape = ctx.variables[k].get("shape") or []
    if len(shape) != 2 or shape[0] == first.shape[1]:
        return False
    rows = shape[0]
    lo, hi = first[:, :, cols["min"]], first[:, :, cols["max"]]
    lo, hi = lo[np.isfinite(lo)], hi[np.isfinite(hi)]
    if not len(lo) or not len(hi):
        return False
    integral = np.all(lo == np.round(lo)) and np.all(hi == np.round(hi))
    return bool(integral and lo.min() >= 0 and rows and hi.max() < rows)


def check(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The unnormalized_inputs cause of anomaly `a`, or None (see the module doc)."""
    step0, detail = ctx.first_detail()
    variable = None if ctx.input_index is None else ctx.name(ctx.input_index)
    measured = _measured(ctx, a, detail, variable)
    if measured is not None:
        evidence, confidence = measured
    elif detail is None or ctx.input_index is None:
        return None
    else:
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
