"""summed_loss: the loss is summed over the batch instead of averaged.

Mechanism: a summed loss scales the gradients with the batch size B, so a
scale-variant optimizer (plain SGD, momentum) takes a B-times larger step;
past some B it overshoots, saturates and goes to NaN. Adam-family
optimizers are scale invariant: there a summed loss is not a cause, and
this rule never blames it.

Evidence, under an optimizer that is not Adam-family: the first loss is
B·ln C (`evidence.summed_first_loss`: B the recorded batch size, C the
last kernel's width); or the callback recorded a Keras loss with
reduction "sum" (`evidence.summed_reduction`, `REDUCTION_CONFIDENCE`);
or the first loss is more than the largest error any example of the
batch allows, from the targets' and predictions' ranges
(`evidence.summed_beyond_examples`, `BOUND_CONFIDENCE`). Supporting: a
median update/weight ratio over the first steps far above the usual
1e-3. Counter-evidence (for B·ln C): the loss sits at ln C itself (per
sample) on `MEAN_AT_CHANCE` of the rows: it is a mean, and a first loss
near B·ln C was a coincidence (large logits from unscaled inputs can
start there).

Thresholds: the first loss within 10% of B·ln C
(`evidence.SUMMED_TOLERANCE`); `LARGE_UPDATE_RATIO` over the first
`UPDATE_ROWS` rows.
"""

import math
from typing import Optional

import numpy as np

from tb_stability.analysis import causes as C
from tb_stability.analysis.context import Cause, Context, make_cause
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import (
    fmt,
    summed_beyond_examples,
    summed_first_loss,
    summed_reduction,
)

# Confidence when the first loss is B·ln C under a scale-variant optimizer,
# when the recorded reduction is "sum", and when the first loss is above
# every example's error.
CONFIDENCE = 0.85
REDUCTION_CONFIDENCE = 0.85
BOUND_CONFIDENCE = 0.8
# Counter-evidence: the loss within CHANCE_TOL of ln C on this fraction of
# the rows is a mean whose first value happened to be near B·ln C.
CHANCE_TOL = 0.02
MEAN_AT_CHANCE = 0.1
# The first rows whose median update/weight ratio ‖Δw‖/‖w‖ is checked.
UPDATE_ROWS = 5
# That median above this (a ratio; usual: about 1e-3) is an overshoot ...
LARGE_UPDATE_RATIO = 1e-2
# ... which adds this to the confidence.
LARGE_UPDATE_BONUS = 0.05


def _sits_at_ln_c(ctx: Context) -> bool:
    """Whether the loss sits at ln C (per sample) on MEAN_AT_CHANCE of rows.

    A summed loss stuck at the prior sits at B·ln C instead.
    """
    level = math.log(ctx.classes)
    loss = ctx.loss[np.isfinite(ctx.loss)]
    if not len(loss):
        return False
    return float(np.mean(np.abs(loss - level) < CHANCE_TOL * level)) >= MEAN_AT_CHANCE


def check(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The summed_loss cause of anomaly `a`, or None (see the module doc)."""
    run = ctx.run
    if run.is_adam:
        return None  # Adam is scale invariant: a summed loss is not a cause
    if not summed_first_loss(ctx):
        return _other_signs(ctx)
    if _sits_at_ln_c(ctx):
        return None  # the loss is a mean after all: B·ln C at step 0 was chance
    batch, loss0 = run.col("batch_size")[0], ctx.loss[0]
    expected = batch * math.log(ctx.classes)
    evidence = [
        f"The first loss, {fmt(loss0)}, is the batch size times ln {ctx.classes}, "
        f"{int(batch)} × ln {ctx.classes} = {fmt(expected)}: a loss summed over the batch "
        f"(a mean would start near ln {ctx.classes} = {fmt(math.log(ctx.classes))}).",
        _not_invariant(run),
    ]
    confidence = CONFIDENCE
    upd = run.col("update_ratio")[:UPDATE_ROWS]
    upd = upd[np.isfinite(upd)]
    if len(upd) and np.median(upd) > LARGE_UPDATE_RATIO:
        evidence.append(f"Update/weight ratio over the first steps: "
                        f"{fmt(np.median(upd))} (usual: about 1e-3).")
        confidence += LARGE_UPDATE_BONUS
    return make_cause(C.SUMMED_LOSS, confidence, evidence)


def _not_invariant(run) -> str:
    return (f"{run.optimizer.get('name', 'The optimizer')} is not scale invariant: "
            f"its step grows with the batch size.")


def _other_signs(ctx: Context) -> Optional[Cause]:
    """summed_loss from the recorded reduction or the per-example bound, or None."""
    evidence, confidence = [], 0.0
    if summed_reduction(ctx):
        name = ((ctx.model or {}).get("loss") or {}).get("class") or "The loss"
        evidence.append(f"{name} is compiled with reduction=\"sum\": the loss "
                        f"and its gradient grow with the batch size.")
        confidence = REDUCTION_CONFIDENCE
    bound = summed_beyond_examples(ctx)
    if bound is not None:
        evidence.append(f"The first loss, {fmt(bound[0])}, is more than the largest "
                        f"error any example of the batch allows ({fmt(bound[1])}, "
                        f"from the targets' and predictions' ranges): it is a sum "
                        f"over the batch, not a mean.")
        confidence = max(confidence, BOUND_CONFIDENCE)
    if not evidence:
        return None
    evidence.append(_not_invariant(ctx.run))
    return make_cause(C.SUMMED_LOSS, confidence, evidence)
