"""vanishing_gradient: gradients vanish through depth; the loss stalls.

Mechanism: the gradients shrink through the layers (saturating
activations, poor initialisation): the early layers stop learning and
the loss does not improve.

Evidence: a `plateau` anomaly, at least `MIN_KERNELS` kernels (depth to
vanish through), and in the last window's mean gradient norms the first
kernel's below `MAX_RATIO` times the last kernel's and below
`MAX_FIRST_NORM` in absolute terms, but not exactly zero (a kernel whose
gradient is exactly zero has dead units: `dead_units`). The first kernel
is named. With fewer kernels the same tiny first-layer gradient is one
saturated hidden layer, `dead_units`'s.
"""

from typing import Optional

import numpy as np

from tb_stability import metadata
from tb_stability.analysis import causes as C
from tb_stability.analysis.context import Cause, Context, make_cause
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import fmt
from tb_stability.metadata import STAT

# First-kernel over last-kernel window-mean gradient norm below this (a ratio).
MAX_RATIO = 1e-3
# The first kernel's window-mean gradient norm below this (L2 norm).
MAX_FIRST_NORM = 1e-4
# Kernels the network must have for gradients to vanish through its depth.
MIN_KERNELS = 3
# Confidence: above dead_units' collapsed gradient (a vanishing profile is
# what made the gradient collapse).
CONFIDENCE = 0.7

_MEAN = metadata.WINDOW_AGGREGATES.index("mean")


def check(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The vanishing_gradient cause of anomaly `a`, or None (see the module doc)."""
    if a.kind != "plateau" or len(ctx.kernels) < MIN_KERNELS:
        return None
    run = ctx.run
    if len(run.window_steps) == 0:
        return None
    mean = run.window[-1, :, STAT["grad_norm"], _MEAN]
    first, last = mean[ctx.kernels[0]], mean[ctx.kernels[-1]]
    if not (np.isfinite(first) and np.isfinite(last)) or last <= 0:
        return None
    if 0 < first and first / last < MAX_RATIO and first < MAX_FIRST_NORM:
        return make_cause(C.VANISHING_GRADIENT, CONFIDENCE, [
            f"First-layer gradient norm {fmt(first)} is {fmt(first / last)}x "
            f"the last layer's ({fmt(last)}) while the loss does not improve."],
            variable=ctx.name(ctx.kernels[0]))
    return None
