"""adam_epsilon: Adam's second moment decayed and its step outgrew the surface.

Mechanism: near an optimum the gradients shrink for a long stretch, and
Adam's second moment v (an EMA of g², slow: 1/(1-β2) ≈ 1000 steps) decays
with them, so the effective step η/(√v̂+ε) grows until it passes the
stability limit (η·h/(√v̂+ε) > 2 for curvature h). The loss then grows
geometrically for a few to tens of steps, until v catches up.

Evidence (an Adam-family optimizer, a spike or divergence that lasts more
than one step; a one-step excursion is the batch's): a score starting at
`BASE_SCORE`, raised by each of

- a geometric rise: log10(loss) linear in the step from the onset to the
  peak (`GEOMETRIC_*`), + `GEOMETRIC_BONUS`;
- a very low loss before: the baseline below `LOW_LOSS_FACTOR` times the
  run's starting loss, + `LOW_LOSS_BONUS`;
- RMS(g²/v̂) crossing its precursor level (1.0, or its usual range:
  `evidence.rms_precursor_level`) in the `evidence.LEAD_WINDOW` rows before
  the peak, and before it, + `RMS_BONUS`; the variable whose ratio crossed
  1.0 first is named, and the lead is the crossing's distance to the peak;
- Adam's largest effective step rising over the run: more than
  `EFF_STEP_RISE` times between up to `EFF_LOOKBACK_STEPS` before the onset
  and the onset, over at least `EFF_MIN_ROWS` rows, + `EFF_STEP_BONUS`.

An `instability` is judged on its first rise (from its onset to the top of
that rise, before the loss falls back by half its height: the split of
`detect`'s spike trains): the loss blowing up, partly recovering and
blowing up again, each time from far above where it was, is this mechanism
repeating while v never decays back, and its first rise must be geometric
(without that signature an Adam run that bounces is more likely
`learning_rate`'s).

Blamed when the score reaches `MIN_SCORE`; the confidence is the score,
at most `MAX_CONFIDENCE`. Mechanism check: not within
`SHOCK_AFTERMATH_ROWS` after a gradient shock (the global gradient norm
`SHOCK_JUMP` times its recent median: a bad batch fills v with its g², so
v is inflated, not decayed).

Half precision: with float16 variables (so float16 moments) an ε below
float16's smallest normal number (`FLOAT16_TINY`, 6.1e-5) cannot keep the
step bounded: (1-β2)·g² underflows to 0 for |g| below about 8e-3, √v̂ is
0, and lr·m̂/(√v̂+ε) overflows (ε=1e-8 even rounds to 0: 0/0). A
non-finite anomaly or a divergence under such an optimizer is this cause
(`HALF_PRECISION_CONFIDENCE`), whatever the loss did before; the dtype
comes from run_info ("model"."dtypes"."variable", or the optimizer's).
"""

from typing import List, Optional, Tuple

import numpy as np

from tb_stability.analysis import causes as C
from tb_stability.analysis import detect
from tb_stability.analysis.context import Cause, Context, make_cause
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import (
    LEAD_WINDOW,
    fmt,
    grad_jump,
    last_finite,
    rms_precursor_level,
)
from tb_stability.metadata import STAT

# Half precision: float16's smallest normal number, and the confidence.
FLOAT16_TINY = 6.1e-5
HALF_PRECISION_CONFIDENCE = 0.85

# RMS(g²/v̂) above its level at a step whose global gradient norm jumped
# this many times its median over the rows before is a gradient shock's.
SHOCK_JUMP = 100
SHOCK_HISTORY_ROWS = 32
# A spike or divergence beginning at most this many rows after such a
# shock is not this cause (v is inflated; `rules.sequel` carries the
# shock's cause over).
SHOCK_AFTERMATH_ROWS = 64

# The score every candidate starts from.
BASE_SCORE = 0.2
# Geometric rise: at least this many rows from onset to peak, a correlation
# of log10(loss) with the step above this, and a fitted rise (slope times
# rows, in decades) above this; it adds GEOMETRIC_BONUS.
GEOMETRIC_MIN_ROWS = 4
GEOMETRIC_MIN_CORR = 0.7
GEOMETRIC_MIN_DECADES = 1.0
GEOMETRIC_BONUS = 0.2
# The baseline below this fraction of the starting loss: gradients had been
# vanishing. Adds LOW_LOSS_BONUS.
LOW_LOSS_FACTOR = 1e-3
LOW_LOSS_BONUS = 0.15
# RMS(g²/v̂) crossing its precursor level before the peak adds RMS_BONUS;
# the variable named is the first whose per-step ratio exceeds
# RMS_VARIABLE_LEVEL from RMS_DETAIL_BACK steps before the crossing on.
RMS_BONUS = 0.3
RMS_VARIABLE_LEVEL = 1.0
RMS_DETAIL_BACK = 2
# Effective step η/(√v̂+ε): its largest value rising more than EFF_STEP_RISE
# times from up to EFF_LOOKBACK_STEPS steps before the onset to the onset,
# at least EFF_MIN_ROWS rows apart. Adds EFF_STEP_BONUS.
EFF_LOOKBACK_STEPS = 2000
EFF_STEP_RISE = 1.5
EFF_MIN_ROWS = 100
EFF_STEP_BONUS = 0.15
# The score needed to blame the cause, and the most confidence it gets.
MIN_SCORE = 0.45
MAX_CONFIDENCE = 0.95


def _shock_before(ctx: Context, i0: int) -> bool:
    """Whether a gradient shock came within `SHOCK_AFTERMATH_ROWS` before row i0.

    A shock: the global gradient norm `SHOCK_JUMP` times its median over
    the `SHOCK_HISTORY_ROWS` rows before it. It fills v with its g², so for
    about 1/(1-β2) steps after it v is inflated, not decayed.
    """
    grad = ctx.run.col("grad_norm")
    for i in range(max(1, i0 - SHOCK_AFTERMATH_ROWS), i0 + 1):
        if (grad_jump(grad, i, i, SHOCK_HISTORY_ROWS) or 0.0) >= SHOCK_JUMP:
            return True
    return False


def _half_precision(ctx: Context) -> Optional[str]:
    """The sentence when Adam's ε is below float16's resolution under float16 variables."""
    dtypes = (ctx.model or {}).get("dtypes") or {}
    dtype = dtypes.get("variable") or ctx.run.optimizer.get("variable_dtype")
    eps = ctx.run.optimizer.get("epsilon")
    if dtype not in ("float16", "half") or not isinstance(eps, (int, float)):
        return None
    if eps >= FLOAT16_TINY:
        return None
    return (f"The variables (and so Adam's moments) are float16, and Adam's "
            f"epsilon {fmt(eps)} is below float16's smallest normal number "
            f"({fmt(FLOAT16_TINY)}): Adam's running average of the squared "
            f"gradient underflows to 0 for small gradients, and its step (the "
            f"learning rate times the averaged gradient, divided by the square "
            f"root of that average plus epsilon) overflows.")


def _geometric_rise(ctx: Context, i0: int, ip: int) -> Optional[str]:
    """The sentence of a geometric rise from row `i0` to the peak row `ip`, or None."""
    seg = np.log10(np.maximum(ctx.loss[i0:ip + 1], 1e-300))
    if not (len(seg) >= GEOMETRIC_MIN_ROWS and np.all(np.isfinite(seg))):
        return None
    t = np.arange(len(seg), dtype=np.float64)
    slope, _ = np.polyfit(t, seg, 1)
    corr = np.corrcoef(t, seg)[0, 1] if np.std(seg) > 0 else 0.0
    if slope > 0 and corr > GEOMETRIC_MIN_CORR and slope * len(seg) > GEOMETRIC_MIN_DECADES:
        return (f"The loss rose by about x{10 ** slope:.3g} per step for "
                f"{len(seg) - 1} steps (geometric growth, not one bad batch).")
    return None


def _crossing_variable(ctx: Context, cross: int, ip: int) -> Optional[str]:
    """The variable whose RMS(g²/v̂) exceeded 1 first around the crossing row `cross`."""
    run = ctx.run
    steps_d, det = run.detail_between(int(run.steps[cross]) - RMS_DETAIL_BACK,
                                      int(run.steps[ip]))
    if len(steps_d):
        hits = np.argwhere(det[:, :, STAT["rms_ratio"]] > RMS_VARIABLE_LEVEL)
        variable = ctx.name(int(hits[0][1])) if len(hits) else None
        if variable is not None:
            return variable
    return ctx.window_argmax(int(run.steps[cross]), "rms_ratio")


def _rms_crossing(ctx: Context, ip: int) -> Optional[Tuple[str, Optional[str], int]]:
    """(sentence, variable, lead) of RMS(g²/v̂) crossing its level before row `ip`, or None."""
    run = ctx.run
    rms = run.col("rms_ratio_max")
    lo = max(0, ip - LEAD_WINDOW)
    window = rms[lo:ip + 1]
    if not np.any(np.isfinite(window)):
        return None
    above = np.flatnonzero(window > rms_precursor_level(rms, lo))
    if not (len(above) and lo + above[0] < ip):
        return None
    cross = lo + int(above[0])
    lead = int(run.steps[ip] - run.steps[cross])
    variable = _crossing_variable(ctx, cross, ip)
    med = ""
    d = run.detail_at(int(run.steps[cross]))
    if d is not None and variable in ctx.names:
        m = d[ctx.names.index(variable), STAT["sqrt_nu_over_eps_median"]]
        if np.isfinite(m):
            med = (f"; the median square root of that average was {fmt(m)}x "
                   f"Adam's epsilon")
    return (f"RMS(g²/v̂){' of ' + variable if variable else ''}, the size of "
            f"the gradient against Adam's running average of its square, crossed 1.0 at "
            f"step {int(run.steps[cross])}, {lead} steps before the loss "
            f"peak (max {fmt(np.nanmax(window))}){med}.", variable, lead)


def _effective_step_rise(ctx: Context, a: Anomaly, i0: int) -> Optional[str]:
    """The sentence of Adam's largest effective step rising before row `i0`, or None."""
    run = ctx.run
    eps = run.optimizer.get("epsilon")
    eff = run.col("eff_step_max")
    back = last_finite(eff, ctx.idx(max(int(run.steps[0]), a.step - EFF_LOOKBACK_STEPS)))
    ie = last_finite(eff, i0)
    if back is not None and ie is not None and eff[back] > 0 \
            and eff[ie] > EFF_STEP_RISE * eff[back] and ie - back >= EFF_MIN_ROWS:
        return (f"Adam's largest effective step rose from {fmt(eff[back])} "
                f"to {fmt(eff[ie])} between steps {int(run.steps[back])} "
                f"and {int(run.steps[ie])} as the second moment decayed"
                f"{'' if eps is None else f' (epsilon {fmt(eps)})'}.")
    return None


def _first_rise(ctx: Context, a: Anomaly) -> Tuple[int, int]:
    """(row of the top of an instability's first rise, its rises) (module doc)."""
    i0 = ctx.idx(a.step)
    stop = ctx.idx(a.end_step) if a.end_step is not None else len(ctx.loss)
    y = detect.log10_loss(ctx.loss)
    b = float(np.log10(a.baseline))  # detect's baselines are powers of 10: positive
    starts = detect.train_onsets(y, i0, stop, b, b + detect.MIN_DECADES)
    hi = starts[1] if len(starts) > 1 else stop
    seg = np.where(np.isfinite(y[i0:hi]), y[i0:hi], -np.inf)
    return (i0 + int(np.argmax(seg)) if len(seg) else i0), len(starts)


def check(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The adam_epsilon cause of anomaly `a`, or None (see the module doc)."""
    if not ctx.run.is_adam:
        return None
    if a.kind in ("nonfinite", "divergence"):
        half = _half_precision(ctx)
        if half is not None:
            return make_cause(C.ADAM_EPSILON, HALF_PRECISION_CONFIDENCE, [half])
    if a.kind not in ("spike", "divergence", "instability"):
        return None
    if _shock_before(ctx, ctx.idx(a.step)):
        return None  # v was just inflated by a gradient shock: it cannot have decayed
    if a.end_step is not None and a.end_step - a.step <= 1:
        # Up for one step, back the next: the weights before and after were
        # both fine, so the batch, not the optimizer's step, made it.
        return None
    i0, ip = ctx.idx(a.step), ctx.idx(a.peak_step)
    rises = 1
    if a.kind == "instability":
        ip, rises = _first_rise(ctx, a)
    evidence: List[str] = []
    score, variable, lead = BASE_SCORE, None, None
    rise = _geometric_rise(ctx, i0, ip)
    if rise is None and a.kind == "instability":
        return None  # bouncing without the geometric blow-up: not this signature
    if rise is not None:
        evidence.append(rise)
        score += GEOMETRIC_BONUS
    if rises > 1:
        evidence.append(f"The loss blew up {rises} times from step {a.step} on, "
                        f"each time before it was back at its level before the first.")
    if np.isfinite(ctx.initial_loss) and a.baseline < LOW_LOSS_FACTOR * ctx.initial_loss:
        evidence.append(f"Before the anomaly the loss was {fmt(a.baseline)}, "
                        f"{fmt(ctx.initial_loss / a.baseline)}x below its start.")
        score += LOW_LOSS_BONUS
    crossing = _rms_crossing(ctx, ip)
    if crossing is not None:
        sentence, variable, lead = crossing
        evidence.append(sentence)
        score += RMS_BONUS
    eff = _effective_step_rise(ctx, a, i0)
    if eff is not None:
        evidence.append(eff)
        score += EFF_STEP_BONUS
    if score < MIN_SCORE:
        return None
    return make_cause(C.ADAM_EPSILON, min(score, MAX_CONFIDENCE), evidence,
                      variable=variable, lead=lead)
