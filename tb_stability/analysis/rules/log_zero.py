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

Where the loss is bounded that way the bound is sharper: a log-loss
averaged over the batch stays below `MAX_LOG_TERM` (float32), summed over
a batch of B below B times that (`LOG_BOUND_SLACK` of slack), so a finite
loss above that bound before the first non-finite value overflowed too.
Where the data was measured, non-finite inputs or targets at the onset
are the data's NaN (`nonfinite_input`), not a log of zero. Where the
callback recorded the loss and it is one of Keras's own (they clip
probabilities away from 0 or work on logits), a log of zero cannot
happen in it.

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
# -ln of float32's smallest denormal (about 103.3): the largest log-loss term.
MAX_LOG_TERM = 104.0
LOG_BOUND_SLACK = 2.0
# Keras's own losses (run_info "model"."loss"."name"): no log(0) inside.
KERAS_LOSSES = (
    "binary_crossentropy", "categorical_crossentropy",
    "sparse_categorical_crossentropy", "binary_focal_crossentropy",
    "categorical_focal_crossentropy", "kl_divergence", "poisson",
    "mean_squared_error", "mean_absolute_error", "mean_absolute_percentage_error",
    "mean_squared_logarithmic_error", "huber", "log_cosh", "hinge",
    "squared_hinge", "categorical_hinge", "cosine_similarity")
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
    batch = ctx.run.col("batch_size")[i - 1]
    bound = MAX_LOG_TERM * LOG_BOUND_SLACK * (batch if np.isfinite(batch) and batch >= 1
                                              else 1.0)
    if np.isfinite(batch) and abs(ctx.loss[i - 1]) > bound:
        return None  # above what a log can give: overflow
    if ctx.data_nonfinite(max(0, i - 1), i):
        return None  # the data's NaN
    if ctx.loss_name() in KERAS_LOSSES:
        return None
    k = max(0, i - RISE_ROWS)
    rising = ctx.loss[i - 1] > ctx.loss[k]
    evidence = [f"The loss is the first non-finite quantity: {fmt(ctx.loss[i])} at "
                f"step {a.step}, while gradients and weights at step "
                f"{a.step - 1} were finite."]
    if rising:
        evidence.append(f"The loss rose from {fmt(ctx.loss[k])} to "
                        f"{fmt(ctx.loss[i - 1])} before (saturation).")
    return make_cause(C.LOG_ZERO, CONFIDENCE_RISING if rising else CONFIDENCE, evidence)

