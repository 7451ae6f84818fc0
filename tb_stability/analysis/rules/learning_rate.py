"""learning_rate: the step is too large for the surface.

Mechanism: the learning rate is too large for the loss surface:
oscillation, overshoot, or a schedule that jumps (the end of a warm-up, a
restart). It is everyone's default guess, so it is only asserted with
evidence.

Evidence (any anomaly but a plateau), either of

- the learning rate rose more than `LR_RISE` times over the
  `LR_LOOKBACK_ROWS` rows before the onset (`LR_RISE_CONFIDENCE`);
- the median update/weight ratio ‖Δw‖/‖w‖ over the `evidence.LEAD_WINDOW`
  rows before the onset above `LARGE_UPDATE_RATIO` (usual: about 1e-3),
  past the first `MIN_STEP` steps where large updates are normal
  (`LARGE_UPDATE_CONFIDENCE`).
"""

from typing import Optional

import numpy as np

from tb_stability.analysis import causes as C
from tb_stability.analysis.context import Cause, Context, make_cause
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import LEAD_WINDOW, fmt

# The learning rate at the onset over its value this many rows before (x).
LR_LOOKBACK_ROWS = 50
LR_RISE = 1.5
LR_RISE_CONFIDENCE = 0.55
# The median update/weight ratio before the onset above this (a ratio),
# at a step after MIN_STEP.
LARGE_UPDATE_RATIO = 1e-2
MIN_STEP = 100
LARGE_UPDATE_CONFIDENCE = 0.45


def check(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The learning_rate cause of anomaly `a`, or None (see the module doc)."""
    if a.kind == "plateau":
        return None
    run = ctx.run
    i0 = ctx.idx(a.step)
    evidence, confidence = [], 0.0
    lr = run.col("learning_rate")
    lo = max(0, i0 - LR_LOOKBACK_ROWS)
    if i0 > 0 and np.isfinite(lr[lo]) and lr[lo] > 0 and lr[i0] > LR_RISE * lr[lo]:
        evidence.append(f"The learning rate rose from {fmt(lr[lo])} to "
                        f"{fmt(lr[i0])} just before step {a.step}.")
        confidence = LR_RISE_CONFIDENCE
    upd = run.col("update_ratio")[max(1, i0 - LEAD_WINDOW):i0]
    upd = upd[np.isfinite(upd)]
    if len(upd) and int(run.steps[i0]) > MIN_STEP and np.median(upd) > LARGE_UPDATE_RATIO:
        evidence.append(f"Update/weight ratio before it: {fmt(np.median(upd))} "
                        f"(usual: about 1e-3).")
        confidence = max(confidence, LARGE_UPDATE_CONFIDENCE)
    if not evidence:
        return None
    return make_cause(C.LEARNING_RATE, confidence, evidence)
