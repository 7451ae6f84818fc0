"""summed_loss: the loss is summed over the batch instead of averaged.

Mechanism: a summed loss scales the gradients with the batch size B, so a
scale-variant optimizer (plain SGD, momentum) takes a B-times larger step;
past some B it overshoots, saturates and goes to NaN. Adam-family
optimizers are scale invariant: there a summed loss is not a cause, and
this rule never blames it.

Evidence: the first loss is B·ln C (`evidence.summed_first_loss`: B the
recorded batch size, C the last kernel's width) under an optimizer that
is not Adam-family; supporting: a median update/weight ratio over the
first steps far above the usual 1e-3.

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
from tb_stability.analysis.evidence import fmt, summed_first_loss

# Confidence when the first loss is B·ln C under a scale-variant optimizer.
CONFIDENCE = 0.85
# The first rows whose median update/weight ratio ‖Δw‖/‖w‖ is checked.
UPDATE_ROWS = 5
# That median above this (a ratio; usual: about 1e-3) is an overshoot ...
LARGE_UPDATE_RATIO = 1e-2
# ... which adds this to the confidence.
LARGE_UPDATE_BONUS = 0.05


def check(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The summed_loss cause of anomaly `a`, or None (see the module doc)."""
    run = ctx.run
    if run.is_adam:
        return None  # Adam is scale invariant: a summed loss is not a cause
    if not summed_first_loss(ctx):
        return None
    batch, loss0 = run.col("batch_size")[0], ctx.loss[0]
    expected = batch * math.log(ctx.classes)
    evidence = [
        f"The first loss, {fmt(loss0)}, is B·ln C = {int(batch)} × ln "
        f"{ctx.classes} = {fmt(expected)}: a loss summed over the batch "
        f"(a mean would start near ln {ctx.classes} = {fmt(math.log(ctx.classes))}).",
        f"{run.optimizer.get('name', 'The optimizer')} is not scale invariant: "
        f"its step grows with the batch size.",
    ]
    confidence = CONFIDENCE
    upd = run.col("update_ratio")[:UPDATE_ROWS]
    upd = upd[np.isfinite(upd)]
    if len(upd) and np.median(upd) > LARGE_UPDATE_RATIO:
        evidence.append(f"Update/weight ratio over the first steps: "
                        f"{fmt(np.median(upd))} (usual: about 1e-3).")
        confidence += LARGE_UPDATE_BONUS
    return make_cause(C.SUMMED_LOSS, confidence, evidence)
