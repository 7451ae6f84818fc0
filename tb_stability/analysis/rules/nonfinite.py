"""nonfinite_gradient and nonfinite_input: NaN/Inf while the loss is finite.

Both rules read the per-step detail row at the onset of a `nonfinite`
anomaly whose loss is still finite there (a non-finite loss first is
`log_zero`'s case).

nonfinite_gradient. Mechanism: NaN/Inf is born in the backward pass of
one layer while the forward loss is finite (the gradient of sqrt or norm
at 0, 0/0 in a custom op). Evidence: some gradient tensor has non-finite
entries; the one named is the last in the model's order, i.e. the first
in backprop order (nearest the loss). When the only such tensor is the
input layer's kernel the inputs are the likelier source, so the
confidence is lower.

nonfinite_input. Mechanism: NaN/Inf in the input data enters the first
layer and may poison the weights and optimizer state *silently* while the
reported loss stays finite (a ReLU can hide it). Evidence: either only
the input kernel's gradient is non-finite (dL/dW = xᵀδ carries the NaN of
x; the recorded non-finite gradient rows of that kernel name the input
features), or no gradient is non-finite but some weights or Adam moments
are (the first such variable is named).

Thresholds: counts above 0; at most `MAX_FEATURES_SHOWN` features named.
"""

from typing import List, Optional, Tuple

import numpy as np

from tb_stability.analysis import causes as C
from tb_stability.analysis.context import Cause, Context, make_cause
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import fmt
from tb_stability.metadata import STAT

# nonfinite_gradient's confidence: some gradient non-finite, and when only
# the input kernel's is (the inputs are the likelier source).
GRADIENT_CONFIDENCE = 0.8
GRADIENT_ONLY_INPUT_CONFIDENCE = 0.45
# nonfinite_input's confidence: only the input kernel's gradient is
# non-finite, and no gradient is but weights or moments are.
INPUT_GRADIENT_CONFIDENCE = 0.8
SILENT_WEIGHTS_CONFIDENCE = 0.7
# Input features listed in the evidence at most.
MAX_FEATURES_SHOWN = 8


def _nonfinite_detail(ctx: Context, a: Anomaly) -> Tuple[Optional[int], Optional[np.ndarray]]:
    """(row, detail [vars, stats]) at the onset of a nonfinite anomaly with a finite loss."""
    if a.kind != "nonfinite":
        return None, None
    i = ctx.idx(a.step)
    if not np.isfinite(ctx.loss[i]):
        return None, None
    return i, ctx.run.detail_at(a.step)


def _bad_grads(ctx: Context, a: Anomaly):
    """(row, detail, the non-finite gradient tensors, only the input kernel?)."""
    i, detail = _nonfinite_detail(ctx, a)
    if detail is None:
        return None, None, [], False
    bad = [int(k) for k in np.flatnonzero(detail[:, STAT["grad_nonfinite"]] > 0)]
    only_input = bool(bad) and bad == [ctx.input_index]
    return i, detail, bad, only_input


def check_gradient(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The nonfinite_gradient cause of anomaly `a`, or None (see the module doc)."""
    i, detail, bad, only_input = _bad_grads(ctx, a)
    if not bad:
        return None
    variable = ctx.name(bad[-1])  # nearest the loss in backprop order
    evidence = [
        f"The loss was finite ({fmt(ctx.loss[i])}) at step {a.step} but "
        f"{len(bad)} gradient tensor(s) were not; the first in backprop "
        f"order is {variable} ({int(detail[bad[-1], STAT['grad_nonfinite']])} "
        f"non-finite entries)."]
    confidence = GRADIENT_ONLY_INPUT_CONFIDENCE if only_input else GRADIENT_CONFIDENCE
    return make_cause(C.NONFINITE_GRADIENT, confidence, evidence, variable=variable)


def _input_features(ctx: Context, step: int, variable: str) -> List[str]:
    """The sentence naming the input features whose gradient rows are non-finite, if any."""
    rows = ctx.run.input_rows
    j = int(np.searchsorted(ctx.run.input_rows_steps, step))
    if j < len(ctx.run.input_rows_steps) and ctx.run.input_rows_steps[j] == step:
        features = np.flatnonzero(~np.isfinite(rows[j]))
        if 0 < len(features) < rows.shape[1]:
            shown = ", ".join(str(int(f)) for f in features[:MAX_FEATURES_SHOWN])
            return [f"Non-finite gradient rows of {variable}: input feature(s) {shown}."]
    return []


def check_input(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The nonfinite_input cause of anomaly `a`, or None (see the module doc)."""
    i, detail, bad, only_input = _bad_grads(ctx, a)
    if detail is None:
        return None
    if only_input:
        variable = ctx.name(ctx.input_index)
        evidence = [f"Silent NaN: the loss stayed finite ({fmt(ctx.loss[i])}) at "
                    f"step {a.step} while only the first layer's gradient, "
                    f"{variable}, was non-finite: x^T delta carried NaN/Inf from "
                    f"the inputs."]
        evidence += _input_features(ctx, a.step, variable)
        return make_cause(C.NONFINITE_INPUT, INPUT_GRADIENT_CONFIDENCE, evidence,
                          variable=variable)
    if bad:
        return None
    weights = np.flatnonzero((detail[:, STAT["weight_nonfinite"]] > 0)
                             | (detail[:, STAT["moment_nonfinite"]] > 0))
    if not len(weights):
        return None
    variable = ctx.name(int(weights[0]))
    return make_cause(C.NONFINITE_INPUT, SILENT_WEIGHTS_CONFIDENCE, [
        f"Silent NaN: weights or optimizer moments of {variable} became "
        f"non-finite at step {a.step} while the loss stayed finite "
        f"({fmt(ctx.loss[i])})."], variable=variable)
