"""output_mismatch: the output cannot produce the targets, or the loss does not fit it.

Mechanism: the output layer cannot produce the targets, or the loss does
not fit the output: a softmax over one unit (always 1: the loss is
constant and every gradient through it zero); a categorical cross-entropy
over one unit (log_softmax of one logit is 0); a bounded activation
(sigmoid, tanh, softmax, ReLU) under targets outside its range; a linear
or ReLU output fed to a cross-entropy that expects probabilities; or
probabilities fed to a loss that expects logits. From the first step, the
loss is stuck or non-finite, whatever the learning rate.

Evidence, for a plateau, a non-finite value or an instability (a spike
that recovers had an output able to fit):

- the model's configuration, recorded by the callback (run_info "model":
  the output's activation and width, the loss's class and `from_logits`):
  softmax over one unit (`SOFTMAX_ONE_CONFIDENCE`); categorical
  cross-entropy over one unit (`CCE_ONE_CONFIDENCE`); a cross-entropy on
  probabilities after an unbounded output (`LOGITS_AS_PROBS_CONFIDENCE`);
  `from_logits=True` after a softmax or sigmoid (`PROBS_AS_LOGITS_CONFIDENCE`);
  a bounded activation and targets outside its range by more than
  `RANGE_TOLERANCE` on the recorded steps (`RANGE_CONFIDENCE`);
- the per-step statistics of the targets and the predictions over the
  anomaly, where both are values of one kind (not class labels against
  logits or probabilities: not under a cross-entropy, nor with targets
  that are integral labels from 0 to at most C-1): on at least
  `MIN_ROW_SHARE` of its rows every target lies beyond every prediction
  (the output never reaches them: its range is bounded;
  `BEYOND_CONFIDENCE`), or the prediction is the same for every input (its
  spread below `PINNED_SPREAD` times its scale) further than
  `MEAN_TOLERANCE` of the targets' range from their mean
  (`PINNED_CONFIDENCE`). Not where the recorded output activation is
  unbounded (linear, leaky_relu, ...): that output could reach the
  targets, so the layers below it are what is stuck.

A constant prediction at the targets' mean is not this cause: that is an
output that fits as well as a dead network can (`dead_units`).
"""

from typing import List, Optional, Tuple

import numpy as np

from tb_stability.analysis import causes as C
from tb_stability.analysis.context import CROSS_ENTROPIES, Cause, Context, make_cause
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import fmt

SOFTMAX_ONE_CONFIDENCE = 0.9
CCE_ONE_CONFIDENCE = 0.85
LOGITS_AS_PROBS_CONFIDENCE = 0.8
PROBS_AS_LOGITS_CONFIDENCE = 0.65
RANGE_CONFIDENCE = 0.85
# Targets beyond a bounded activation's range by more than this (absolute).
RANGE_TOLERANCE = 1e-3
# Statistics-only evidence: the share of the anomaly's rows it must hold on.
MIN_ROW_SHARE = 0.9
BEYOND_CONFIDENCE = 0.7
PINNED_SPREAD = 1e-6
PINNED_CONFIDENCE = 0.65
MEAN_TOLERANCE = 0.25

# The range each bounded activation can produce (closed bounds).
RANGES = {
    "sigmoid": (0.0, 1.0), "softmax": (0.0, 1.0), "hard_sigmoid": (0.0, 1.0),
    "tanh": (-1.0, 1.0), "softsign": (-1.0, 1.0), "relu": (0.0, np.inf),
    "relu6": (0.0, 6.0), "softplus": (0.0, np.inf), "exponential": (0.0, np.inf),
    "elu": (-1.0, np.inf), "selu": (-1.7581, np.inf),
}
# Activations without a bound: any target is within their reach.
UNBOUNDED = ("linear", "identity", "leaky_relu")
# Activations whose output is a probability.
PROBABILITY_OUTPUTS = ("softmax", "sigmoid", "hard_sigmoid")
# Losses whose targets are class indices, not values an output must reach.
INDEX_TARGETS = ("sparse_categorical_crossentropy",)


def _config(ctx: Context) -> List[Tuple[float, str]]:
    """(confidence, sentence) of each mismatch the recorded configuration shows."""
    model = ctx.model or {}
    out = model.get("output") or {}
    loss = model.get("loss") or {}
    act = out.get("activation")
    act = act.lower() if isinstance(act, str) else None
    units = out.get("units")
    name = ctx.loss_name()
    logits = loss.get("from_logits") if isinstance(loss, dict) else None
    layer = out.get("layer") or "the output layer"
    found = []
    if act == "softmax" and units == 1:
        found.append((SOFTMAX_ONE_CONFIDENCE,
                      f"{layer} is a softmax over 1 unit: its output is always 1, "
                      f"so the loss cannot change and every gradient through it is "
                      f"zero."))
    if name == "categorical_crossentropy" and units == 1:
        found.append((CCE_ONE_CONFIDENCE,
                      f"categorical_crossentropy over 1 output unit ({layer}): the "
                      f"log-softmax of one logit is 0, whatever the labels."))
    if name in CROSS_ENTROPIES and logits is False and act is not None \
            and act not in PROBABILITY_OUTPUTS:
        found.append((LOGITS_AS_PROBS_CONFIDENCE,
                      f"{name} expects probabilities (from_logits=False) but "
                      f"{layer}'s activation is {act}: values outside (0, 1) are "
                      f"clipped or give the log of a non-positive number."))
    if name in CROSS_ENTROPIES and logits is True and act in PROBABILITY_OUTPUTS:
        found.append((PROBS_AS_LOGITS_CONFIDENCE,
                      f"{name} with from_logits=True after a {act}: the loss reads "
                      f"probabilities as logits and saturates."))
    if act in RANGES and name not in INDEX_TARGETS:
        lo, hi = RANGES[act]
        t_min = np.nanmin(ctx.column("target_min")) if np.isfinite(
            ctx.column("target_min")).any() else np.nan
        t_max = np.nanmax(ctx.column("target_max")) if np.isfinite(
            ctx.column("target_max")).any() else np.nan
        if (np.isfinite(t_min) and t_min < lo - RANGE_TOLERANCE) or (
                np.isfinite(t_max) and t_max > hi + RANGE_TOLERANCE):
            found.append((RANGE_CONFIDENCE,
                          f"{layer}'s {act} can only produce values in "
                          f"[{fmt(lo)}, {fmt(hi)}] but the targets range from "
                          f"{fmt(t_min)} to {fmt(t_max)}."))
    return found


def _unbounded_output(ctx: Context) -> bool:
    """Whether the recorded output activation is one of `UNBOUNDED`.

    Such an output can reach any target: predictions stuck beyond the
    targets, or the same for every input, are then what the layers below
    it send (dead units, weights broken by a blow-up), not a bound.
    """
    act = ((ctx.model or {}).get("output") or {}).get("activation")
    return isinstance(act, str) and act.lower() in UNBOUNDED


def _statistics(ctx: Context, a: Anomaly) -> List[Tuple[float, str]]:
    """(confidence, sentence) of what the targets and predictions show over the anomaly."""
    if ctx.targets_are_labels() or _unbounded_output(ctx):
        return []
    i0 = ctx.idx(a.step)
    cols = {k: ctx.column(k)[i0:] for k in (
        "target_min", "target_max", "target_mean", "pred_min", "pred_max", "pred_mean")}
    ok = np.all([np.isfinite(v) for v in cols.values()], axis=0)
    if ok.sum() < 2:
        return []
    v = {k: c[ok] for k, c in cols.items()}
    found = []
    above = v["target_min"] > v["pred_max"]
    below = v["target_max"] < v["pred_min"]
    for beyond, side in ((above, "above"), (below, "below")):
        if beyond.mean() >= MIN_ROW_SHARE:
            bound = np.median(v["pred_max"] if side == "above" else v["pred_min"])
            found.append((BEYOND_CONFIDENCE,
                          f"From step {a.step} every target is {side} every "
                          f"prediction on {100 * beyond.mean():.0f}% of the steps "
                          f"(predictions stay near {fmt(bound)}, targets average "
                          f"{fmt(np.median(v['target_mean']))}): the output cannot "
                          f"reach the targets."))
    spread = v["pred_max"] - v["pred_min"]
    scale = np.maximum(1.0, np.abs(v["pred_mean"]))
    pinned = spread <= PINNED_SPREAD * scale
    width = float(np.max(v["target_max"]) - np.min(v["target_min"]))
    outside = np.abs(v["target_mean"] - v["pred_mean"]) > MEAN_TOLERANCE * max(width, 1e-12)
    if not found and (pinned & outside).mean() >= MIN_ROW_SHARE:
        found.append((PINNED_CONFIDENCE,
                      f"From step {a.step} the prediction is the same for every "
                      f"input ({fmt(np.median(v['pred_mean']))}) and the targets "
                      f"average {fmt(np.median(v['target_mean']))}: the output is "
                      f"stuck at a bound of its activation."))
    return found


def check(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The output_mismatch cause of anomaly `a`, or None (see the module doc)."""
    if a.kind not in ("plateau", "nonfinite", "instability", "divergence"):
        return None
    found = _config(ctx) + _statistics(ctx, a)
    if not found:
        return None
    found.sort(key=lambda f: -f[0])
    variable = None
    layer = (ctx.model.get("output") or {}).get("layer")
    if layer:
        variable = next((n for n in ctx.names if f"/{layer}/" in f"/{n}"), None)
    if variable is None and ctx.kernels:
        variable = ctx.name(ctx.kernels[-1])
    return make_cause(C.OUTPUT_MISMATCH, found[0][0], [s for _, s in found],
                      variable=variable)
