"""Sequels: an anomaly that follows an earlier one gets that one's cause.

Not a rule of its own (no cause id): `report.analyze_run` asks it after
ranking each anomaly's causes, with the run's earlier anomalies and their
final causes.

Mechanism: a gradient shock (a bad batch, an exploding layer) leaves the
optimizer's state holding it. Under Adam the shock inflates v, so
RMS(g²/v̂) stays low (the opposite of a decayed second moment), while m
keeps pushing the weights along the shocking gradient for about
1/(1-β1) steps and the inflated v shrinks the repairing steps for about
1/(1-β2): a second anomaly soon after is the first one's consequence.

Evidence: the anomaly began within `AFTERMATH_STEPS` of the previous
one's end (its peak while unrecovered); that anomaly is no plateau, has a
named cause (not `unknown`; a sequel's sequel goes back to the shock
itself), and its peak gradient norm was at least `MIN_SHOCK` times its
median over the `SHOCK_HISTORY_ROWS` rows before its onset. Supporting,
under Adam: RMS(g²/v̂) stayed within its usual range from the shock to
this peak. Carried over only when this anomaly's own top cause is less
confident.
"""

from typing import List, Optional, Tuple

import numpy as np

from tb_stability.analysis import causes as C
from tb_stability.analysis.context import Cause, Context
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import fmt, grad_jump, rms_precursor_level

# An anomaly beginning at most this many steps after the previous one's
# end may be its sequel.
AFTERMATH_STEPS = 64
# The previous peak's gradient norm over its median before (x) that makes
# it a shock, and the rows that median is over.
MIN_SHOCK = 100
SHOCK_HISTORY_ROWS = 64
# Confidence right after the shock (a gap of at most EARLY_GAP steps), and
# later; plus ADAM_BONUS when RMS(g²/v̂) stayed in its usual range.
EARLY_GAP = 8
EARLY_CONFIDENCE = 0.7
LATE_CONFIDENCE = 0.6
ADAM_BONUS = 0.05

Earlier = List[Tuple[Anomaly, List[Cause]]]


def _shock(ctx: Context, a: Anomaly, earlier: Earlier):
    """(previous anomaly, its top cause, gap, shock) when `a` may be its sequel, else None."""
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
    ip, i0 = ctx.idx(previous.peak_step), ctx.idx(previous.step)
    shock = grad_jump(ctx.run.col("grad_norm"), ip, i0, SHOCK_HISTORY_ROWS)
    if shock is None or shock < MIN_SHOCK:
        return None
    return previous, prev_top, gap, shock


def _adam_memory(ctx: Context, a: Anomaly, previous: Anomaly) -> Tuple[List[str], bool]:
    """(sentences, whether RMS(g²/v̂) stayed in its usual range) on Adam's moments."""
    opt = ctx.run.optimizer
    b1, b2 = opt.get("beta_1", 0.9), opt.get("beta_2", 0.999)
    evidence = [
        f"Adam's moments still carry that gradient: its running average of the "
        f"gradient decays by beta_1={fmt(b1)} per step and that of the squared "
        f"gradient by beta_2={fmt(b2)}, so it keeps pushing the weights "
        f"along it for about {fmt(1 / max(1 - b1, 1e-6))} steps and shrinks the "
        f"steps that could repair the damage for about {fmt(1 / max(1 - b2, 1e-6))}."]
    ip, i0 = ctx.idx(previous.peak_step), ctx.idx(previous.step)
    all_rms = ctx.run.col("rms_ratio_max")
    rms = all_rms[ip + 1:ctx.idx(a.peak_step) + 1]
    rms = rms[np.isfinite(rms)]
    level = rms_precursor_level(all_rms, i0)
    if len(rms) and np.max(rms) <= level:
        evidence.append(f"RMS(g²/v̂), the size of the gradient against Adam's "
                        f"running average of its square, stayed within its usual range (max "
                        f"{fmt(np.max(rms))}, at most {fmt(level)}) from then to "
                        f"the peak: that average was inflated, not decayed.")
        return evidence, True
    return evidence, False


def carry_over(ctx: Context, a: Anomaly, causes: List[Cause],
               earlier: Earlier) -> Optional[Cause]:
    """The cause of the anomaly just before `a`, carried over, or None.

    Arguments:
      ctx: the run's `Context`.
      a: the anomaly.
      causes: `a`'s own ranked causes; None is returned when they explain
        it at least as well.
      earlier: the previous anomalies of the run with their final causes.

    Returns:
      The previous top cause with this sequel's evidence and confidence,
      `sequel_of` the peak step of the shock, or None.
    """
    found = _shock(ctx, a, earlier)
    if found is None:
        return None
    previous, prev_top, gap, shock = found
    evidence = [f"Began {a.step - previous.peak_step} steps after the "
                f"{previous.kind} at step {previous.peak_step} (attributed to "
                f"{prev_top.cause}), whose gradient norm was {fmt(shock)}x its "
                f"median before."]
    # Right after the shock the link is strong; later, less so.
    confidence = EARLY_CONFIDENCE if gap <= EARLY_GAP else LATE_CONFIDENCE
    if ctx.run.optimizer.get("adam"):
        memory, usual = _adam_memory(ctx, a, previous)
        evidence += memory
        if usual:
            confidence += ADAM_BONUS
    if causes and causes[0].confidence >= confidence:
        return None
    return Cause(prev_top.cause, confidence, prev_top.variable,
                 int(a.peak_step - previous.peak_step), evidence, prev_top.fix,
                 sequel_of=int(previous.peak_step))
