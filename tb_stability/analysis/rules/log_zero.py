"""log_zero: log(0) (or a division by 0) in a hand-written loss.

Mechanism: a hand-written cross-entropy takes the log of a probability
that underflowed to exactly 0: the loss becomes Inf/NaN while the logits,
the gradients and the weights are still finite.

Evidence: a `nonfinite` anomaly whose first non-finite quantity is the
loss: non-finite at its onset while the loss and every recorded
non-finite count were finite one row before. Supporting: the loss rose
over the rows before (saturation).

Mechanism check: a log-loss is bounded by what log can give a float, about
104 per term (-ln of float32's smallest denormal), so a loss over
`MAX_LOG_LOSS` just before the first non-finite value (a batch of 10^6
terms at that bound) did not come from a log of zero: it grew into
overflow, which is the step size, not this cause.

Thresholds: the rise is measured over `RISE_ROWS` rows before the onset.
"""

from typing import Optional

import numpy as np

from tb_stability.analysis import causes as C
from tb_stability.analysis.context import Cause, Context, make_cause
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import fmt

# Rows before the onset over which a rising loss counts as saturation.
RISE_ROWS = 5
# A finite loss above this before the first non-finite one overflowed.
MAX_LOG_LOSS = 1e8
# Confidence with a rising loss before (saturation), and without.
CONFIDENCE_RISING = 0.55
CONFIDENCE = 0.4


def check(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The log_zero cause of anomaly `a`, or None (see the module doc)."""
    if a.kind != "nonfinite":
        return None
    i = ctx.idx(a.step)
    if i < 1 or np.isfinite(ctx.loss[i]):
        return None
    prev_bad = ctx.run.col("nonfinite")[i - 1]
    if not np.isfinite(ctx.loss[i - 1]) or (np.isfinite(prev_bad) and prev_bad > 0):
        return None
    if abs(ctx.loss[i - 1]) > MAX_LOG_LOSS:
        return None  # grown into overflow (see the module doc)
    k = max(0, i - RISE_ROWS)
    rising = ctx.loss[i - 1] > ctx.loss[k]
    evidence = [f"The loss is the first non-finite quantity: {fmt(ctx.loss[i])} at "
                f"step {a.step}, while gradients and weights at step "
                f"{a.step - 1} were finite."]
    if rising:
        evidence.append(f"The loss rose from {fmt(ctx.loss[k])} to "
                        f"{fmt(ctx.loss[i - 1])} before (saturation).")
    return make_cause(C.LOG_ZERO, CONFIDENCE_RISING if rising else CONFIDENCE, evidence)
