"""bad_init: the initial weights are too large.

Mechanism: too large initial weights make the activations explode layer
by layer from step 0: every layer's gradient is huge at once, before any
update could have caused it.

Evidence: a detail row at step 0 and an anomaly within `MAX_ONSET_STEP`
steps of the start; at step 0 every kernel's gradient norm above
`MIN_GRAD_NORM`, the hidden kernels' (all but the output's, whose
gradient is its input's size times a bounded output error) within
`MAX_SPREAD` times of each other, and the first loss above
`CHANCE_FACTOR` times chance level (ln C, or 1 when the number of classes
is unknown). Not when the loss is summed over the batch
(`evidence.summed_loss_signs`: that explains a large first loss).
"""

import math
from typing import Optional

import numpy as np

from tb_stability.analysis import causes as C
from tb_stability.analysis.context import Cause, Context, make_cause
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import fmt, summed_loss_signs
from tb_stability.metadata import STAT

# The anomaly's onset at most this step: it must follow the start directly.
MAX_ONSET_STEP = 50
# Every kernel's gradient norm at step 0 above this (L2 norm) ...
MIN_GRAD_NORM = 1e3
# ... and the largest within this factor of the smallest (x).
MAX_SPREAD = 10
# The first loss above this many times chance level.
CHANCE_FACTOR = 100
CONFIDENCE = 0.7


def check(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The bad_init cause of anomaly `a`, or None (see the module doc)."""
    step0, detail = ctx.first_detail()
    if detail is None or step0 is None or step0 > 0 or len(ctx.kernels) < 2:
        return None
    if a.step > MAX_ONSET_STEP:
        return None  # the anomaly must follow the start directly
    g = detail[ctx.kernels, STAT["grad_norm"]]
    hidden = g[:-1]  # the output kernel's gradient is not boosted backwards
    loss0 = ctx.loss[0]
    chance = math.log(ctx.classes) if ctx.classes and ctx.classes >= 2 else 1.0
    if not (np.all(np.isfinite(g)) and np.min(g) > MIN_GRAD_NORM
            and np.max(hidden) / np.min(hidden) < MAX_SPREAD
            and np.isfinite(loss0) and loss0 > CHANCE_FACTOR * chance):
        return None
    if summed_loss_signs(ctx):
        return None  # a summed loss explains a large first loss
    return make_cause(C.BAD_INIT, CONFIDENCE, [
        f"At step 0, before any update, the loss is {fmt(loss0)} "
        f"({fmt(loss0 / chance)}x chance level) and every kernel's gradient "
        f"norm is above {fmt(np.min(g))}, the hidden ones all within "
        f"{fmt(np.max(hidden) / np.min(hidden))}x of each other: the initial weights "
        f"are too large everywhere."])
