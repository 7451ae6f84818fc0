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

Direct evidence first: where the recorder measured the data (the step's
input and target batches: `input_nonfinite`, `target_nonfinite`, and the
per-feature non-finite counts of the inputs), non-finite data within
`DATA_ROWS` rows before the onset is `nonfinite_input`
(`DATA_CONFIDENCE`, naming the features), for any nonfinite anomaly,
also one whose loss is non-finite; the backward pass is then not where
the NaN was born (`nonfinite_gradient` drops to `GRADIENT_FROM_DATA_CONFIDENCE`).
Mechanism check: where the data was measured and finite, the indirect
signs above are not the inputs': only the input kernel's gradient
non-finite is then `nonfinite_gradient` (born in the first layer's
backward pass), and silent weights without data NaN is not named here.

Overflow: float32 holds at most 3.4e38. When, in the `OVERFLOW_ROWS`
rows up to the onset, the loss or the global gradient norm had risen
`OVERFLOW_DECADES` above the untrained model's (their first rows), the
run was blowing up, and gradients, weights and moments that large
overflow: the NaN/Inf is that blow-up's consequence, not an op of the
backward pass nor the data. The indirect evidence of both rules then
drops to `OVERFLOW_CONFIDENCE` and says so (what blew the loss up is the
cause: the other rules judge it); direct evidence from non-finite data
stays.

Thresholds: counts above 0; at most `MAX_FEATURES_SHOWN` features named.
"""

from typing import List, Optional, Tuple

import numpy as np

from tb_stability.analysis import causes as C
from tb_stability.analysis.context import Cause, Context, make_cause
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import fmt
from tb_stability.metadata import INPUT_COLUMNS, STAT

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
# Direct evidence: non-finite inputs or targets within this many rows
# before the onset; the confidences with it.
DATA_ROWS = 2
DATA_CONFIDENCE = 0.9
GRADIENT_FROM_DATA_CONFIDENCE = 0.25
# Overflow after a blow-up: the rows before the onset looked at, the rise
# (decades above the untrained model's loss, or above the first gradient
# norms) that makes it one, and the confidence left to the indirect evidence.
OVERFLOW_ROWS = 32
OVERFLOW_DECADES = 6.0
OVERFLOW_CONFIDENCE = 0.3
# The first rows: the untrained model's loss and gradient norm.
FIRST_ROWS = 8


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


def _log_rise(values: np.ndarray, reference: float) -> Tuple[float, Optional[int]]:
    """(decades the largest finite positive value is above `reference`, its row)."""
    ok = np.isfinite(values) & (values > 0)
    if not ok.any() or not np.isfinite(reference) or reference <= 0:
        return -np.inf, None
    k = int(np.argmax(np.where(ok, values, -np.inf)))
    return float(np.log10(values[k] / reference)), k


def overflow(ctx: Context, i: int) -> Optional[str]:
    """The sentence saying the run was blowing up into row `i`, or None.

    See the module doc: the loss or the global gradient norm in the
    `OVERFLOW_ROWS` rows up to `i` at least `OVERFLOW_DECADES` above the
    untrained model's.
    """
    lo = max(0, i - OVERFLOW_ROWS)
    for name, values in (("loss", ctx.loss), ("global gradient norm", ctx.column("grad_norm"))):
        head = values[:FIRST_ROWS][np.isfinite(values[:FIRST_ROWS]) & (values[:FIRST_ROWS] > 0)]
        first = float(np.median(head)) if len(head) else float("nan")
        rise, k = _log_rise(values[lo:i + 1], first)
        if rise >= OVERFLOW_DECADES:
            what, value = name, values[lo + k]
            break
    else:
        return None
    return (f"The {what} had grown to {fmt(value)} by step "
            f"{int(ctx.run.steps[lo + k])}, {fmt(value / first)}x the untrained "
            f"model's ({fmt(first)}): values that large overflow float32 (at most "
            f"3.4e38), so the NaN/Inf is that blow-up's consequence; its cause "
            f"is what blew the loss up.")


def check_gradient(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The nonfinite_gradient cause of anomaly `a`, or None (see the module doc)."""
    i, detail, bad, only_input = _bad_grads(ctx, a)
    if not bad:
        return None
    data = ctx.data_nonfinite(max(0, i - DATA_ROWS), i)
    variable = ctx.name(bad[-1])  # nearest the loss in backprop order
    evidence = [
        f"The loss was finite ({fmt(ctx.loss[i])}) at step {a.step} but "
        f"{len(bad)} gradient tensor(s) were not; the first in backprop "
        f"order is {variable} ({int(detail[bad[-1], STAT['grad_nonfinite']])} "
        f"non-finite entries)."]
    confidence = GRADIENT_ONLY_INPUT_CONFIDENCE if only_input else GRADIENT_CONFIDENCE
    blown = overflow(ctx, i)
    if data == 0:
        confidence = GRADIENT_CONFIDENCE
        if blown is None:
            evidence.append("The step's inputs and targets were finite: the NaN/Inf "
                            "was born in the backward pass.")
    elif data is not None:
        confidence = GRADIENT_FROM_DATA_CONFIDENCE
    if blown is not None:
        confidence = min(confidence, OVERFLOW_CONFIDENCE)
        evidence.append(blown)
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


def _data_features(ctx: Context, lo: int, hi: int) -> List[int]:
    """Input features with non-finite entries in rows [lo, hi] (per-feature statistics)."""
    run = ctx.run
    steps, stats = getattr(run, "inputs_steps", None), getattr(run, "inputs", None)
    if steps is None or stats is None or not len(steps) or stats.ndim != 3:
        return []
    if "nonfinite" not in INPUT_COLUMNS:
        return []
    first, last = int(run.steps[lo]), int(run.steps[hi])
    k = (steps >= first) & (steps <= last)
    if not k.any():
        return []
    counts = np.nansum(stats[k, :, INPUT_COLUMNS.index("nonfinite")], axis=0)
    return [int(f) for f in np.flatnonzero(counts > 0)]


def _from_data(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """nonfinite_input from the data statistics, or None."""
    i = ctx.idx(a.step)
    lo = max(0, i - DATA_ROWS)
    if not ctx.data_nonfinite(lo, i):
        return None
    inputs = ctx.column("input_nonfinite")[lo:i + 1]
    targets = ctx.column("target_nonfinite")[lo:i + 1]
    where = []
    if np.nansum(inputs) > 0:
        where.append(f"{int(np.nanmax(inputs))} non-finite input value(s)")
    if np.nansum(targets) > 0:
        where.append(f"{int(np.nanmax(targets))} non-finite target value(s)")
    j = lo + int(np.argmax(np.nan_to_num(inputs) + np.nan_to_num(targets) > 0))
    evidence = [f"The batch of step {int(ctx.run.steps[j])} held "
                f"{' and '.join(where)}; the first non-finite value of the run "
                f"came with it (step {a.step})."]
    features = _data_features(ctx, lo, i)
    variable = ctx.name(ctx.input_index) if ctx.input_index is not None else None
    if features:
        shown = ", ".join(str(f) for f in features[:MAX_FEATURES_SHOWN])
        evidence.append(f"Non-finite input feature(s) {shown} in that batch.")
    return make_cause(C.NONFINITE_INPUT, DATA_CONFIDENCE, evidence, variable=variable)


def check_input(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The nonfinite_input cause of anomaly `a`, or None (see the module doc)."""
    if a.kind != "nonfinite":
        return None
    direct = _from_data(ctx, a)
    if direct is not None:
        return direct
    i, detail, bad, only_input = _bad_grads(ctx, a)
    if detail is None or ctx.data_nonfinite(max(0, i - DATA_ROWS), i) == 0:
        return None  # the data was measured and finite
    blown = overflow(ctx, i)
    if only_input:
        variable = ctx.name(ctx.input_index)
        evidence = [f"Silent NaN: the loss stayed finite ({fmt(ctx.loss[i])}) at "
                    f"step {a.step} while only the first layer's gradient, "
                    f"{variable}, was non-finite: its gradient, the inputs times "
                    f"the error sent back from the layer, carried NaN/Inf from "
                    f"the inputs."]
        evidence += _input_features(ctx, a.step, variable)
        if blown is not None:
            return make_cause(C.NONFINITE_INPUT, OVERFLOW_CONFIDENCE,
                              evidence + [blown], variable=variable)
        return make_cause(C.NONFINITE_INPUT, INPUT_GRADIENT_CONFIDENCE, evidence,
                          variable=variable)
    if bad:
        return None
    weights = np.flatnonzero((detail[:, STAT["weight_nonfinite"]] > 0)
                             | (detail[:, STAT["moment_nonfinite"]] > 0))
    if not len(weights):
        return None
    variable = ctx.name(int(weights[0]))
    evidence = [f"Silent NaN: weights or optimizer moments of {variable} became "
                f"non-finite at step {a.step} while the loss stayed finite "
                f"({fmt(ctx.loss[i])})."]
    if blown is not None:
        return make_cause(C.NONFINITE_INPUT, OVERFLOW_CONFIDENCE, evidence + [blown],
                          variable=variable)
    return make_cause(C.NONFINITE_INPUT, SILENT_WEIGHTS_CONFIDENCE, evidence,
                      variable=variable)
