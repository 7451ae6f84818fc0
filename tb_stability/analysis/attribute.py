"""Names the likely causes of an anomaly, with evidence (pure NumPy).

One small rule per cause id. A rule checks the cause's *mechanism* on what
the writer recorded and returns a `Cause` (confidence in [0, 1], the layer
where one is implicated, how many steps the leading signal preceded the
peak, evidence sentences with the numbers, the fix) or None. Causes are
ranked by confidence; when nothing reaches `MIN_CONFIDENCE` the answer is
`unknown`: a wrong confident cause is the worst answer.
"""

import dataclasses
import math
import warnings
from typing import List, Optional, Tuple

import numpy as np

from tb_stability.analysis import causes as C
from tb_stability.analysis.detect import Anomaly
from tb_stability.events.series import STAT, RunData

MIN_CONFIDENCE = 0.3
LEAD_WINDOW = 32  # steps before the peak where a leading signal may start


@dataclasses.dataclass(frozen=True)
class Cause:
    cause: str
    confidence: float
    layer: Optional[str]
    lead_steps: Optional[int]
    evidence: List[str]
    fix: str
    sequel_of: Optional[int] = None  # peak step of the anomaly it follows

    def to_json(self):
        out = {
            "cause": self.cause,
            "confidence": round(float(self.confidence), 3),
            "layer": self.layer,
            "lead_steps": self.lead_steps,
            "evidence": list(self.evidence),
            "fix": self.fix,
        }
        if self.sequel_of is not None:
            out["sequel_of"] = self.sequel_of
        return out


def _cause(cid, confidence, evidence, layer=None, lead=None):
    return Cause(cid, float(min(max(confidence, 0.0), 1.0)), layer,
                 None if lead is None else int(lead), evidence, C.FIX[cid])


def _fmt(x):
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.2g}"
    return f"{x:.4g}"


def _nanmedian(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmedian(x)) if len(x) else float("nan")


class Context:
    """What the rules share about one run."""

    def __init__(self, run: RunData):
        self.run = run
        self.loss = run.col("loss")
        self.variables = run.info.get("variables", [])
        self.names = run.variables
        kernels = [i for i, v in enumerate(self.variables) if len(v.get("shape", [])) >= 2]
        self.classes = None
        if kernels:
            last = self.variables[kernels[-1]]["shape"][-1]
            self.classes = int(last) if last and last > 0 else None
        self.kernels = kernels
        name = run.info.get("input_kernel")
        self.input_index = self.names.index(name) if name in self.names else (
            kernels[0] if kernels else None)
        self.input_bias = None
        if self.input_index is not None and self.input_index + 1 < len(self.variables):
            k = self.variables[self.input_index]["shape"]
            b = self.variables[self.input_index + 1]["shape"]
            if len(b) == 1 and b[0] == k[-1]:
                self.input_bias = self.input_index + 1
        first = np.isfinite(self.loss)
        self.initial_loss = _nanmedian(self.loss[:min(len(self.loss), 50)][first[:50]]) \
            if first[:50].any() else float("nan")

    def idx(self, step):
        return self.run.index_of(step)

    def name(self, i):
        return self.names[i] if 0 <= i < len(self.names) else None

    def window_argmax(self, step, stat):
        """The variable with the largest window max of `stat` in the window
        holding `step` (when no per-step detail covers it).
        """
        run = self.run
        if len(run.window_steps) == 0:
            return None
        w = min(int(np.searchsorted(run.window_steps, step)), len(run.window_steps) - 1)
        values = run.window[w, :, STAT[stat], 0].copy()
        sizes = [int(np.prod(v.get("shape", [0]))) for v in self.variables]
        if len(sizes) == len(values) and any(n >= 32 for n in sizes):
            values[[n < 32 for n in sizes]] = np.nan  # noisy small tensors
        if not np.any(np.isfinite(values)):
            return None
        return self.name(int(np.nanargmax(values)))

    def first_detail(self):
        if len(self.run.detail_steps) == 0:
            return None, None
        return int(self.run.detail_steps[0]), self.run.detail[0]


# Rules ---------------------------------------------------------------------

def _summed(ctx):
    """Whether the first loss is B*ln C (a loss summed over the batch)."""
    batch, loss0 = ctx.run.col("batch_size")[0], ctx.loss[0]
    if not (ctx.classes and ctx.classes >= 2 and np.isfinite(batch) and batch > 1
            and np.isfinite(loss0)):
        return False
    expected = batch * math.log(ctx.classes)
    return abs(loss0 - expected) <= 0.1 * expected


def summed_loss(ctx: Context, a: Anomaly):
    run = ctx.run
    if run.is_adam:
        return None  # Adam is scale invariant: a summed loss is not a cause
    if not _summed(ctx):
        return None
    batch, loss0 = run.col("batch_size")[0], ctx.loss[0]
    expected = batch * math.log(ctx.classes)
    evidence = [
        f"The first loss, {_fmt(loss0)}, is B·ln C = {int(batch)} × ln "
        f"{ctx.classes} = {_fmt(expected)}: a loss summed over the batch "
        f"(a mean would start near ln {ctx.classes} = {_fmt(math.log(ctx.classes))}).",
        f"{run.optimizer.get('name', 'The optimizer')} is not scale invariant: "
        f"its step grows with the batch size.",
    ]
    confidence = 0.85
    upd = run.col("update_ratio")[:5]
    upd = upd[np.isfinite(upd)]
    if len(upd) and np.median(upd) > 1e-2:
        evidence.append(f"Update/weight ratio over the first steps: "
                        f"{_fmt(np.median(upd))} (usual: about 1e-3).")
        confidence += 0.05
    return _cause(C.SUMMED_LOSS, confidence, evidence)


def log_zero(ctx: Context, a: Anomaly):
    if a.kind != "nonfinite":
        return None
    i = ctx.idx(a.step)
    if i < 1 or np.isfinite(ctx.loss[i]):
        return None
    prev_bad = ctx.run.col("nonfinite")[i - 1]
    if not np.isfinite(ctx.loss[i - 1]) or (np.isfinite(prev_bad) and prev_bad > 0):
        return None
    k = max(0, i - 5)
    rising = ctx.loss[i - 1] > ctx.loss[k]
    evidence = [f"The loss is the first non-finite quantity: {_fmt(ctx.loss[i])} at "
                f"step {a.step}, while gradients and weights at step "
                f"{a.step - 1} were finite."]
    if rising:
        evidence.append(f"The loss rose from {_fmt(ctx.loss[k])} to "
                        f"{_fmt(ctx.loss[i - 1])} before (saturation).")
    return _cause(C.LOG_ZERO, 0.55 if rising else 0.4, evidence)


def _nonfinite_detail(ctx, a):
    if a.kind != "nonfinite":
        return None, None
    i = ctx.idx(a.step)
    if not np.isfinite(ctx.loss[i]):
        return None, None
    return i, ctx.run.detail_at(a.step)


def _bad_grads(ctx, a):
    """(row index, detail, non-finite gradient tensors, only the input kernel?)."""
    i, detail = _nonfinite_detail(ctx, a)
    if detail is None:
        return None, None, [], False
    bad = [int(k) for k in np.flatnonzero(detail[:, STAT["grad_nonfinite"]] > 0)]
    only_input = bool(bad) and bad == [ctx.input_index]
    return i, detail, bad, only_input


def nonfinite_gradient(ctx: Context, a: Anomaly):
    i, detail, bad, only_input = _bad_grads(ctx, a)
    if not bad:
        return None
    layer = ctx.name(bad[-1])  # nearest the loss in backprop order
    evidence = [
        f"The loss was finite ({_fmt(ctx.loss[i])}) at step {a.step} but "
        f"{len(bad)} gradient tensor(s) were not; the first in backprop "
        f"order is {layer} ({int(detail[bad[-1], STAT['grad_nonfinite']])} "
        f"non-finite entries)."]
    return _cause(C.NONFINITE_GRADIENT, 0.45 if only_input else 0.8, evidence,
                  layer=layer)


def nonfinite_input(ctx: Context, a: Anomaly):
    i, detail, bad, only_input = _bad_grads(ctx, a)
    if detail is None:
        return None
    if only_input:
        layer = ctx.name(ctx.input_index)
        evidence = [f"Silent NaN: the loss stayed finite ({_fmt(ctx.loss[i])}) at "
                    f"step {a.step} while only the first layer's gradient, "
                    f"{layer}, was non-finite: x^T delta carried NaN/Inf from "
                    f"the inputs."]
        rows = ctx.run.input_rows
        j = int(np.searchsorted(ctx.run.input_rows_steps, a.step))
        if j < len(ctx.run.input_rows_steps) and ctx.run.input_rows_steps[j] == a.step:
            features = np.flatnonzero(~np.isfinite(rows[j]))
            if 0 < len(features) < rows.shape[1]:
                shown = ", ".join(str(int(f)) for f in features[:8])
                evidence.append(f"Non-finite gradient rows of {layer}: input "
                                f"feature(s) {shown}.")
        return _cause(C.NONFINITE_INPUT, 0.8, evidence, layer=layer)
    if bad:
        return None
    weights = np.flatnonzero((detail[:, STAT["weight_nonfinite"]] > 0)
                             | (detail[:, STAT["moment_nonfinite"]] > 0))
    if not len(weights):
        return None
    layer = ctx.name(int(weights[0]))
    return _cause(C.NONFINITE_INPUT, 0.7, [
        f"Silent NaN: weights or optimizer moments of {layer} became "
        f"non-finite at step {a.step} while the loss stayed finite "
        f"({_fmt(ctx.loss[i])})."], layer=layer)


def unnormalized_inputs(ctx: Context, a: Anomaly):
    step0, detail = ctx.first_detail()
    k = ctx.input_index
    if detail is None or k is None:
        return None
    evidence, confidence = [], 0.0
    layer = ctx.name(k)
    shape = ctx.variables[k]["shape"] if k < len(ctx.variables) else None
    if ctx.input_bias is not None and shape:
        g_w = detail[k, STAT["grad_norm"]]
        g_b = detail[ctx.input_bias, STAT["grad_norm"]]
        fan_in = int(np.prod(shape[:-1]))
        if g_b > 0 and np.isfinite(g_w) and fan_in > 0:
            # For a dense (or conv) layer dL/dW = x^T delta and dL/db = sum delta,
            # so ||dW|| / ||db|| is about ||x||: divided by sqrt(fan-in) it
            # estimates the RMS input value (about 1 when standardised).
            rms = g_w / g_b / math.sqrt(fan_in)
            if rms > 20:
                evidence.append(
                    f"At step {step0}, ||dW||/||db|| of {layer} is "
                    f"{_fmt(g_w / g_b)}: inputs of RMS about {_fmt(rms)} over "
                    f"{fan_in} inputs (standardised inputs give about 1).")
                # The estimate alone can mislead (the bias gradient cancels
                # when residuals have zero mean): ask for the overshoot that
                # unscaled inputs cause on the first updates.
                overshoot = []
                upd = detail[k, STAT["update_ratio"]]
                if np.isfinite(upd) and upd > 1e-2:
                    overshoot.append(f"the first update moved {layer} by "
                                     f"{_fmt(upd)} of its norm (usual: about 1e-3)")
                loss0 = ctx.loss[0]
                if ctx.classes and ctx.classes >= 2 and np.isfinite(loss0) \
                        and loss0 > 10 * math.log(ctx.classes) and not _summed(ctx):
                    overshoot.append(f"the first loss is {_fmt(loss0)}, "
                                     f"{_fmt(loss0 / math.log(ctx.classes))}x "
                                     f"chance level ln {ctx.classes}")
                if overshoot:
                    evidence.append("Overshoot at the start: " + "; ".join(overshoot) + ".")
                    confidence = 0.9
                else:
                    confidence = 0.35
    rows_steps, rows = ctx.run.input_rows_steps, ctx.run.input_rows
    if len(rows_steps) and rows.shape[1] > 1:
        r = rows[0]
        med = _nanmedian(r[r > 0]) if np.any(r > 0) else float("nan")
        if np.isfinite(med) and med > 0 and np.nanmax(r) / med > 1e3:
            feature = int(np.nanargmax(r))
            confidence = max(confidence, 0.85)
            evidence.append(
                f"Input feature {feature}: its gradient row in {layer} is "
                f"{_fmt(np.nanmax(r) / med)}x the median row at step "
                f"{int(rows_steps[0])}: that feature is out of scale.")
    if not confidence:
        return None
    if a.step > max(500, 0.1 * ctx.run.steps[-1]):
        confidence *= 0.6  # the inputs were always so; this anomaly is late
    return _cause(C.UNNORMALIZED_INPUTS, confidence, evidence, layer=layer)


def dead_units(ctx: Context, a: Anomaly):
    if a.kind != "plateau":
        return None
    run = ctx.run
    i = ctx.idx(a.step)
    g = run.col("grad_norm")
    early = np.nanmax(g[:max(i, 1)]) if i > 0 else np.nan
    during = _nanmedian(g[i:])
    evidence = [f"The loss is pinned at {_fmt(a.peak_value)} ≈ ln {ctx.classes} "
                f"from step {a.step}: the output is the class prior."]
    confidence = 0.45
    if np.isfinite(early) and np.isfinite(during) and during < 1e-2 * early:
        evidence.append(f"The gradient norm collapsed from {_fmt(early)} to "
                        f"{_fmt(during)} after the first steps.")
        confidence = 0.65
    layer = None
    if len(run.window_steps) and ctx.kernels:
        w = min(int(np.searchsorted(run.window_steps, a.step)), len(run.window_steps) - 1)
        means = run.window[w, ctx.kernels, STAT["grad_norm"], 1]
        zero = [ctx.kernels[j] for j in np.flatnonzero(means == 0.0)]
        if zero:
            layer = ctx.name(zero[0])
            evidence.append(f"The gradient of {layer} is exactly zero: its "
                            f"units are dead.")
            confidence = 0.65
    return _cause(C.DEAD_UNITS, confidence, evidence, layer=layer)


def rms_precursor_level(rms: np.ndarray, lo: int, history: int = 1000) -> float:
    """The level RMS(g²/v̂) must exceed to count as a precursor at rows
    from `lo` on: 1.0, or its own 99th percentile over the `history` rows
    before when it has often been above 1 anyway (late in a long Adam run a
    small tensor's ratio wanders above 1 without consequence).
    """
    past = rms[max(0, lo - history):lo]
    # A recorder with stats_every > 1 measures every few rows, and every row
    # around anomalies: each measured value stands for the rows up to the
    # next one, or the excursions would weigh more than they last.
    rows = np.flatnonzero(np.isfinite(past))
    if len(rows) < 50:
        return 1.0
    weight = np.diff(np.append(rows, len(past)))
    values = past[rows]
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weight[order])
    k = int(np.searchsorted(cum, 0.99 * cum[-1]))
    return max(1.0, float(values[order][min(k, len(order) - 1)]))


def adam_epsilon(ctx: Context, a: Anomaly):
    run = ctx.run
    if a.kind not in ("spike", "divergence") or not run.is_adam:
        return None
    if a.end_step is not None and a.end_step - a.step <= 1:
        # Up for one step, back the next: the weights before and after were
        # both fine, so the batch, not the optimizer's step, made it.
        return None
    eps = run.optimizer.get("epsilon")
    i0, ip = ctx.idx(a.step), ctx.idx(a.peak_step)
    evidence, score, layer, lead = [], 0.2, None, None
    # Geometric rise: log(loss) grows linearly (a near-constant factor per
    # step) from the onset to the peak.
    seg = np.log10(np.maximum(ctx.loss[i0:ip + 1], 1e-300))
    if len(seg) >= 4 and np.all(np.isfinite(seg)):
        t = np.arange(len(seg), dtype=np.float64)
        slope, _ = np.polyfit(t, seg, 1)
        corr = np.corrcoef(t, seg)[0, 1] if np.std(seg) > 0 else 0.0
        if slope > 0 and corr > 0.7 and slope * len(seg) > 1.0:
            evidence.append(f"The loss rose by about x{10 ** slope:.3g} per step for "
                            f"{len(seg) - 1} steps (geometric growth, not one bad "
                            f"batch).")
            score += 0.2
    # Very low loss before: gradients had been vanishing.
    if np.isfinite(ctx.initial_loss) and a.baseline < 1e-3 * ctx.initial_loss:
        evidence.append(f"Before the anomaly the loss was {_fmt(a.baseline)}, "
                        f"{_fmt(ctx.initial_loss / a.baseline)}x below its start.")
        score += 0.15
    # RMS(g^2/v_hat) crossing 1 (and its own recent range) before the peak.
    rms = run.col("rms_ratio_max")
    lo = max(0, ip - LEAD_WINDOW)
    window = rms[lo:ip + 1]
    if np.any(np.isfinite(window)):
        above = np.flatnonzero(window > rms_precursor_level(rms, lo))
        if len(above) and lo + above[0] < ip:
            cross = lo + int(above[0])
            lead = int(run.steps[ip] - run.steps[cross])
            score += 0.3
            steps_d, det = run.detail_between(int(run.steps[cross]) - 2,
                                              int(run.steps[ip]))
            if len(steps_d):
                col = det[:, :, STAT["rms_ratio"]]
                hits = np.argwhere(col > 1.0)
                if len(hits):
                    layer = ctx.name(int(hits[0][1]))
            if layer is None:
                layer = ctx.window_argmax(int(run.steps[cross]), "rms_ratio")
            med = ""
            d = run.detail_at(int(run.steps[cross]))
            if d is not None and layer in ctx.names:
                m = d[ctx.names.index(layer), STAT["sqrt_nu_over_eps_median"]]
                if np.isfinite(m):
                    med = f"; median √v̂/ε = {_fmt(m)}"
            evidence.append(
                f"RMS(g²/v̂){' of ' + layer if layer else ''} crossed 1.0 at "
                f"step {int(run.steps[cross])}, {lead} steps before the loss "
                f"peak (max {_fmt(np.nanmax(window))}){med}.")
    # The effective step lr/(sqrt(v_hat)+eps) rising over the run.
    eff = run.col("eff_step_max")
    back = last_finite(eff, ctx.idx(max(int(run.steps[0]), a.step - 2000)))
    ie = last_finite(eff, i0)
    if back is not None and ie is not None and eff[back] > 0 \
            and eff[ie] > 1.5 * eff[back] and ie - back >= 100:
        evidence.append(f"Adam's largest effective step rose from {_fmt(eff[back])} "
                        f"to {_fmt(eff[ie])} between steps {int(run.steps[back])} "
                        f"and {int(run.steps[ie])} as the second moment decayed"
                        f"{'' if eps is None else f' (epsilon {_fmt(eps)})'}.")
        score += 0.15
    if score < 0.45:
        return None
    return _cause(C.ADAM_EPSILON, min(score, 0.95), evidence, layer=layer,
                  lead=lead)


def last_finite(x: np.ndarray, i: int, back: int = 64) -> Optional[int]:
    """The last row at or before `i` (and at most `back` rows before) where
    `x` is finite: a recorder computing its statistics every few steps
    leaves NaN between them. None when there is none.
    """
    lo = max(0, i - back)
    ok = np.flatnonzero(np.isfinite(x[lo:i + 1]))
    return int(lo + ok[-1]) if len(ok) else None


def grad_jump(grad: np.ndarray, i: int, before: int, window: int) -> Optional[float]:
    """grad[i] over the median of the finite values in the `window` rows
    before row `before`; None when either is missing.
    """
    past = grad[max(0, before - window):before]
    past = past[np.isfinite(past)]
    if not len(past) or not np.isfinite(grad[i]):
        return None
    return float(grad[i] / max(float(np.median(past)), 1e-30))


def bad_batch(ctx: Context, a: Anomaly):
    if a.kind != "spike" or a.end_step is None:
        return None
    run = ctx.run
    if a.end_step - a.step > 5:
        return None
    ip = ctx.idx(a.peak_step)
    g = run.col("grad_norm")
    ratio = grad_jump(g, ip, ip, 32)
    if ratio is None or ratio < 10:
        return None
    evidence = [f"An isolated spike: up at step {a.step}, recovered at step "
                f"{a.end_step}; the gradient norm jumped to {_fmt(g[ip])}, "
                f"{_fmt(ratio)}x its median over the previous steps, at the "
                f"same step."]
    confidence = 0.6
    now, prev = run.detail_at(a.peak_step), run.detail_at(a.peak_step - 1)
    if now is not None and prev is not None:
        jump = now[:, STAT["grad_norm"]] / np.maximum(prev[:, STAT["grad_norm"]], 1e-30)
        share = float(np.mean(jump > 5))
        if share >= 0.5:
            evidence.append(f"{share:.0%} of the tensors' gradient norms jumped "
                            f"more than 5x together: the batch, not one layer.")
            confidence = 0.75
    jump = single_layer_jump(ctx, a.peak_step, a.peak_step - 1)
    if jump is not None:
        confidence -= 0.2  # one layer led: not the batch alone
        evidence.append(f"But {ctx.name(jump[1])}'s gradient jumped alone "
                        f"{a.peak_step - jump[0]} steps before.")
    rms = run.col("rms_ratio_max")
    lo = max(0, ip - LEAD_WINDOW)
    level = rms_precursor_level(rms, lo)
    if np.any(rms[lo:ip] > level):
        confidence -= 0.2  # an Adam precursor: maybe not the batch alone
    elif np.any(np.isfinite(rms[lo:ip])):
        evidence.append(f"No Adam precursor: RMS(g²/v̂) stayed below "
                        f"{_fmt(level)}{' (its usual range)' if level > 1 else ''} "
                        f"before it.")
    return _cause(C.BAD_BATCH, confidence, evidence)


def single_layer_jump(ctx: Context, peak_step: int, last_step: int):
    """The first step in the detail rows before `last_step` (inclusive)
    where one layer's gradient norm jumped > 100x its recent level while the
    median tensor of the *other* layers moved < 3x.

    Returns (step, variable index, jump, others' median jump) or None.
    """
    run = ctx.run
    steps_d, det = run.detail_between(peak_step - LEAD_WINDOW - 16, last_step)
    if len(steps_d) < 9 or det.shape[1] < 3:
        return None
    g = det[:, :, STAT["grad_norm"]]
    hist = np.nanmedian(g[:8], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = g / np.maximum(hist, 1e-30)
    layers = [ctx.name(k).rpartition("/")[0] for k in range(g.shape[1])]
    for t in range(8, len(steps_d)):
        jumped = np.flatnonzero(rel[t] > 100)
        if not len(jumped):
            continue
        k = int(jumped[np.argmax(rel[t, jumped])])
        others = [j for j in range(g.shape[1]) if layers[j] != layers[k]]
        if not others:
            continue
        med = float(np.nanmedian(rel[t, others]))
        if med < 3:
            return int(steps_d[t]), k, float(rel[t, k]), med
    return None


def exploding_gradient(ctx: Context, a: Anomaly):
    jump = single_layer_jump(ctx, a.peak_step, a.peak_step)
    if jump is None:
        return None
    step, k, rel, med = jump
    lead = int(a.peak_step - step)
    layer = ctx.name(k)
    return _cause(C.EXPLODING_GRADIENT, 0.5 if lead == 0 else 0.6, [
        f"The gradient norm of {layer} jumped {_fmt(rel)}x its recent level at "
        f"step {step}, {lead} steps before the peak, while the other layers' "
        f"median tensor moved {_fmt(med)}x."],
        layer=layer, lead=lead)


def vanishing_gradient(ctx: Context, a: Anomaly):
    if a.kind != "plateau" or len(ctx.kernels) < 2:
        return None
    run = ctx.run
    if len(run.window_steps) == 0:
        return None
    mean = run.window[-1, :, STAT["grad_norm"], 1]
    first, last = mean[ctx.kernels[0]], mean[ctx.kernels[-1]]
    if not (np.isfinite(first) and np.isfinite(last)) or last <= 0:
        return None
    if first / last < 1e-3 and first < 1e-4:
        return _cause(C.VANISHING_GRADIENT, 0.55, [
            f"First-layer gradient norm {_fmt(first)} is {_fmt(first / last)}x "
            f"the last layer's ({_fmt(last)}) while the loss does not improve."],
            layer=ctx.name(ctx.kernels[0]))
    return None


def learning_rate(ctx: Context, a: Anomaly):
    if a.kind == "plateau":
        return None
    run = ctx.run
    i0 = ctx.idx(a.step)
    evidence, confidence = [], 0.0
    lr = run.col("learning_rate")
    lo = max(0, i0 - 50)
    if i0 > 0 and np.isfinite(lr[lo]) and lr[lo] > 0 and lr[i0] > 1.5 * lr[lo]:
        evidence.append(f"The learning rate rose from {_fmt(lr[lo])} to "
                        f"{_fmt(lr[i0])} just before step {a.step}.")
        confidence = 0.55
    upd = run.col("update_ratio")[max(1, i0 - LEAD_WINDOW):i0]
    upd = upd[np.isfinite(upd)]
    if len(upd) and int(run.steps[i0]) > 100 and np.median(upd) > 1e-2:
        evidence.append(f"Update/weight ratio before it: {_fmt(np.median(upd))} "
                        f"(usual: about 1e-3).")
        confidence = max(confidence, 0.45)
    if not evidence:
        return None
    return _cause(C.LEARNING_RATE, confidence, evidence)


def bad_init(ctx: Context, a: Anomaly):
    step0, detail = ctx.first_detail()
    if detail is None or step0 is None or step0 > 0 or len(ctx.kernels) < 2:
        return None
    if a.step > 50:
        return None  # the anomaly must follow the start directly
    g = detail[ctx.kernels, STAT["grad_norm"]]
    loss0 = ctx.loss[0]
    chance = math.log(ctx.classes) if ctx.classes and ctx.classes >= 2 else 1.0
    if not (np.all(np.isfinite(g)) and np.min(g) > 1e3 and np.max(g) / np.min(g) < 10
            and np.isfinite(loss0) and loss0 > 100 * chance):
        return None
    if _summed(ctx):
        return None  # a summed loss explains a large first loss
    return _cause(C.BAD_INIT, 0.7, [
        f"At step 0, before any update, the loss is {_fmt(loss0)} "
        f"({_fmt(loss0 / chance)}x chance level) and every kernel's gradient "
        f"norm is above {_fmt(np.min(g))}, all within "
        f"{_fmt(np.max(g) / np.min(g))}x of each other: the initial weights "
        f"are too large everywhere."])


AFTERMATH_STEPS = 64  # an anomaly this soon after another may be its sequel


def sequel(ctx: Context, a: Anomaly, causes: List[Cause],
           earlier: List[Tuple[Anomaly, List[Cause]]]) -> Optional[Cause]:
    """The cause of the anomaly just before `a`, carried over: `a` began
    within AFTERMATH_STEPS of its end, and that anomaly's gradient was a
    shock (>= 100x its median before) that the optimizer's state still
    holds. Under Adam the shock inflates v, so RMS(g²/v̂) stays low: the
    opposite of a decayed second moment. None when `causes` (this
    anomaly's own ranked causes) already explain it at least as well.

    `earlier`: the previous anomalies of the run with their final causes.
    """
    if not earlier:
        return None
    previous, prev_causes = earlier[-1]
    if not prev_causes or previous.kind == "plateau":
        return None
    since = previous.end_step if previous.end_step is not None else previous.peak_step
    gap = a.step - since
    if not 0 <= gap <= AFTERMATH_STEPS:
        return None
    # A sequel's sequel goes back to the shock itself.
    origin = prev_causes[0].sequel_of
    if origin is not None:
        previous, prev_causes = next(
            (e for e in earlier if e[0].peak_step == origin), (previous, prev_causes))
    prev_top = prev_causes[0]
    if prev_top.cause == C.UNKNOWN:
        return None
    run = ctx.run
    ip, i0 = ctx.idx(previous.peak_step), ctx.idx(previous.step)
    shock = grad_jump(run.col("grad_norm"), ip, i0, 64)
    if shock is None or shock < 100:
        return None
    evidence = [f"Began {a.step - previous.peak_step} steps after the "
                f"{previous.kind} at step {previous.peak_step} (attributed to "
                f"{prev_top.cause}), whose gradient norm was {_fmt(shock)}x its "
                f"median before."]
    # Right after the shock the link is strong; later, less so.
    confidence = 0.7 if gap <= 8 else 0.6
    opt = run.optimizer
    if opt.get("adam"):
        b1, b2 = opt.get("beta_1", 0.9), opt.get("beta_2", 0.999)
        evidence.append(
            f"Adam's moments still carry that gradient: m decays by beta_1={_fmt(b1)} "
            f"per step and v by beta_2={_fmt(b2)}, so it keeps pushing the weights "
            f"along it for about {_fmt(1 / max(1 - b1, 1e-6))} steps and shrinks the "
            f"steps that could repair the damage for about {_fmt(1 / max(1 - b2, 1e-6))}.")
        all_rms = run.col("rms_ratio_max")
        rms = all_rms[ip + 1:ctx.idx(a.peak_step) + 1]
        rms = rms[np.isfinite(rms)]
        level = rms_precursor_level(all_rms, i0)
        if len(rms) and np.max(rms) <= level:
            evidence.append(f"RMS(g²/v̂) stayed within its usual range (max "
                            f"{_fmt(np.max(rms))}, at most {_fmt(level)}) from then to "
                            f"the peak: v̂ was inflated, not decayed.")
            confidence += 0.05
    if causes and causes[0].confidence >= confidence:
        return None
    return Cause(prev_top.cause, confidence, prev_top.layer,
                 int(a.peak_step - previous.peak_step), evidence, prev_top.fix,
                 sequel_of=int(previous.peak_step))


RULES = (summed_loss, log_zero, nonfinite_gradient, nonfinite_input,
         unnormalized_inputs, dead_units, adam_epsilon, bad_batch,
         exploding_gradient, vanishing_gradient, learning_rate, bad_init)


def rank_causes(run: RunData, anomaly: Anomaly, ctx: Optional[Context] = None) -> List[Cause]:
    """Ranked causes of `anomaly` (never empty: `unknown` when none fits)."""
    ctx = ctx or Context(run)
    found = []
    for rule in RULES:
        try:
            cause = rule(ctx, anomaly)
        except (IndexError, ValueError, KeyError, TypeError, ZeroDivisionError):
            cause = None  # missing data degrades to fewer causes
        if cause is not None:
            found.append(cause)
    found.sort(key=lambda c: -c.confidence)
    if not found or found[0].confidence < MIN_CONFIDENCE:
        found.insert(0, _cause(C.UNKNOWN, 0.0, [
            f"{anomaly.kind} from step {anomaly.step} (peak {anomaly.peak_step}, "
            f"severity {_fmt(anomaly.severity)}); none of the known mechanisms "
            f"is supported by the recorded evidence."]))
    return found
