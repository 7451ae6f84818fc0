"""bad_batch: one bad batch (corrupt labels, outliers) made a one-step jump.

Mechanism: a single batch produces a jump of the loss and of the gradient
while the optimizer state was healthy; the loss recovers within a few
steps.

Evidence: a `spike` that recovered within `MAX_SPIKE_STEPS` steps, with
the global gradient norm at the peak at least `MIN_GRAD_JUMP` times its
median over the `GRAD_HISTORY_ROWS` rows before, of which at least
`MIN_HISTORY_ROWS` finite (a spike in the first steps has no healthy
state to stand out from). Supporting: at least
`TOGETHER_SHARE` of the tensors' gradient norms jumped more than
`TENSOR_JUMP` times at once (the batch, not one layer). Against it: one
layer's gradient jumped alone before the peak
(`evidence.single_layer_jump`: `exploding_gradient`'s sign), or an Adam
precursor (RMS(g²/v̂) above its precursor level in the
`evidence.LEAD_WINDOW` rows before the peak); and, where the data was
measured, a batch like the others (its targets within their usual range,
no non-finite input, each input feature within its usual range) while a
prediction left its usual range by more than `PRED_OUT_OF_RANGE` times
the usual width: the model, not the batch, made the spike (what an
earlier overshoot left in the weights; `MODEL_MADE_CONFIDENCE`).
"""

from typing import List, Optional

import numpy as np

from tb_stability.analysis import causes as C
from tb_stability.analysis.context import Cause, Context, make_cause
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import (
    LEAD_WINDOW,
    fmt,
    grad_jump,
    rms_precursor_level,
    single_layer_jump,
)
from tb_stability.metadata import INPUT_COLUMNS, STAT

# The spike must be back within this many steps of its onset.
MAX_SPIKE_STEPS = 5
# The global gradient norm at the peak over its median in the rows before (x).
GRAD_HISTORY_ROWS = 32
MIN_HISTORY_ROWS = 8
MIN_GRAD_JUMP = 10
# Confidence of the isolated spike with its gradient jump.
CONFIDENCE = 0.6
# At least this share of the tensors jumping more than TENSOR_JUMP times
# from the step before (x) at the peak raises it to TOGETHER_CONFIDENCE.
TENSOR_JUMP = 5
TOGETHER_SHARE = 0.5
TOGETHER_CONFIDENCE = 0.75
# Subtracted when one layer's gradient jumped alone before, and again
# when an Adam precursor led.
ONE_LAYER_PENALTY = 0.2
PRECURSOR_PENALTY = 0.2
# A normal batch with one prediction far out of range: the rows the usual
# ranges come from, how far beyond them (in usual widths) a prediction
# must go, and the confidence left.
USUAL_ROWS = 32
PRED_OUT_OF_RANGE = 10.0
MODEL_MADE_CONFIDENCE = 0.25


def _together(ctx: Context, a: Anomaly) -> Optional[str]:
    """The sentence of most tensors' gradient norms jumping together at the peak, or None."""
    run = ctx.run
    now, prev = run.detail_at(a.peak_step), run.detail_at(a.peak_step - 1)
    if now is None or prev is None:
        return None
    jump = now[:, STAT["grad_norm"]] / np.maximum(prev[:, STAT["grad_norm"]], 1e-30)
    share = float(np.mean(jump > TENSOR_JUMP))
    if not share >= TOGETHER_SHARE:
        return None
    return (f"{share:.0%} of the tensors' gradient norms jumped "
            f"more than {TENSOR_JUMP}x together: the batch, not one layer.")


def _against(ctx: Context, a: Anomaly, ip: int, confidence: float,
             evidence: List[str]) -> float:
    """`confidence` less the penalty of each sign against a bad batch (sentences to `evidence`)."""
    jump = single_layer_jump(ctx, a.peak_step, a.peak_step - 1)
    if jump is not None:
        confidence -= ONE_LAYER_PENALTY  # one layer led: not the batch alone
        evidence.append(f"But {ctx.name(jump[1])}'s gradient jumped alone "
                        f"{a.peak_step - jump[0]} steps before.")
    rms = ctx.run.col("rms_ratio_max")
    lo = max(0, ip - LEAD_WINDOW)
    level = rms_precursor_level(rms, lo)
    if np.any(rms[lo:ip] > level):
        confidence -= PRECURSOR_PENALTY  # an Adam precursor: maybe not the batch alone
    elif np.any(np.isfinite(rms[lo:ip])):
        evidence.append(f"No Adam precursor: RMS(g²/v̂), the size of the "
                        f"gradient against Adam's running average of its square, stayed below "
                        f"{fmt(level)}{' (its usual range)' if level > 1 else ''} "
                        f"before it.")
    return confidence


def _beyond(value_lo, value_hi, lo, hi, width):
    """How far [value_lo, value_hi] reaches beyond [lo, hi], in `width`s."""
    out = max(lo - value_lo, value_hi - hi, 0.0)
    return out / max(width, 1e-12)


def _model_made(ctx: Context, a: Anomaly, ip: int) -> Optional[str]:
    """The sentence when a normal batch got one far-off prediction, else None."""
    cols = {k: ctx.column(k) for k in ("target_min", "target_max", "pred_min",
                                         "pred_max", "input_nonfinite")}
    lo = max(0, ip - USUAL_ROWS)
    usual = {k: c[lo:ip] for k, c in cols.items()}
    if not all(np.isfinite(c[ip]) for c in cols.values()) or not all(
            np.isfinite(u).any() for u in usual.values()):
        return None  # not measured: no judgement
    if cols["input_nonfinite"][ip] > 0:
        return None
    t_lo, t_hi = np.nanmin(usual["target_min"]), np.nanmax(usual["target_max"])
    t_width = t_hi - t_lo
    if _beyond(cols["target_min"][ip], cols["target_max"][ip], t_lo, t_hi, t_width) > 0.5:
        return None  # the targets were off: the batch
    if not _inputs_usual(ctx, a.peak_step, lo, ip):
        return None
    p_lo, p_hi = np.nanmin(usual["pred_min"]), np.nanmax(usual["pred_max"])
    width = max(p_hi - p_lo, t_width)
    far = _beyond(cols["pred_min"][ip], cols["pred_max"][ip], p_lo, p_hi, width)
    if far < PRED_OUT_OF_RANGE:
        return None
    off = cols["pred_min"][ip] if p_lo - cols["pred_min"][ip] > 0 else cols["pred_max"][ip]
    return (f"But the batch of step {a.peak_step} was like the others (targets "
            f"{fmt(cols['target_min'][ip])} to {fmt(cols['target_max'][ip])}, inputs in "
            f"their usual range) while a prediction reached {fmt(off)}, "
            f"{fmt(far)} usual widths out: the model, not the batch, made the spike.")


def _inputs_usual(ctx: Context, step: int, lo: int, ip: int) -> bool:
    """Whether each input feature's range at `step` stayed near its usual one.

    True when the inputs' per-feature statistics were not kept (only the
    targets and the non-finite count are then judged).
    """
    run = ctx.run
    now = run.inputs_at(step) if hasattr(run, "inputs_at") else None
    if now is None:
        return True
    steps = run.inputs_steps
    first, last = int(run.steps[lo]), int(run.steps[ip])
    k = (steps >= first) & (steps < last)
    if not k.any():
        return True
    i_min, i_max = INPUT_COLUMNS.index("min"), INPUT_COLUMNS.index("max")
    u_lo = np.nanmin(run.inputs[k][:, :, i_min], axis=0)
    u_hi = np.nanmax(run.inputs[k][:, :, i_max], axis=0)
    width = np.maximum(u_hi - u_lo, 1e-12)
    with np.errstate(invalid="ignore"):
        out = np.maximum(u_lo - now[:, i_min], now[:, i_max] - u_hi) / width
    return not bool(np.nanmax(out) > 0.5) if np.isfinite(out).any() else True


def check(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The bad_batch cause of anomaly `a`, or None (see the module doc)."""
    if a.kind != "spike" or a.end_step is None:
        return None
    if a.end_step - a.step > MAX_SPIKE_STEPS:
        return None
    ip = ctx.idx(a.peak_step)
    g = ctx.run.col("grad_norm")
    if np.isfinite(g[max(0, ip - GRAD_HISTORY_ROWS):ip]).sum() < MIN_HISTORY_ROWS:
        return None
    ratio = grad_jump(g, ip, ip, GRAD_HISTORY_ROWS)
    if ratio is None or ratio < MIN_GRAD_JUMP:
        return None
    evidence = [f"An isolated spike: up at step {a.step}, recovered at step "
                f"{a.end_step}; the gradient norm jumped to {fmt(g[ip])}, "
                f"{fmt(ratio)}x its median over the previous steps, at the "
                f"same step."]
    confidence = CONFIDENCE
    together = _together(ctx, a)
    if together is not None:
        evidence.append(together)
        confidence = TOGETHER_CONFIDENCE
    confidence = _against(ctx, a, ip, confidence, evidence)
    model_made = _model_made(ctx, a, ip)
    if model_made is not None:
        evidence.append(model_made)
        confidence = min(confidence, MODEL_MADE_CONFIDENCE)
    return make_cause(C.BAD_BATCH, confidence, evidence)

