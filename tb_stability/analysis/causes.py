"""Cause ids (a public contract: never rename one), in plain words, with fixes.

The ids, mechanisms and fixes follow the project's causes.md.
"""

ADAM_EPSILON = "adam_epsilon"
SUMMED_LOSS = "summed_loss"
LOG_ZERO = "log_zero"
NONFINITE_GRADIENT = "nonfinite_gradient"
NONFINITE_INPUT = "nonfinite_input"
UNNORMALIZED_INPUTS = "unnormalized_inputs"
EXPLODING_GRADIENT = "exploding_gradient"
VANISHING_GRADIENT = "vanishing_gradient"
DEAD_UNITS = "dead_units"
BAD_INIT = "bad_init"
LEARNING_RATE = "learning_rate"
BAD_BATCH = "bad_batch"
UNKNOWN = "unknown"

ALL = (
    ADAM_EPSILON, SUMMED_LOSS, LOG_ZERO, NONFINITE_GRADIENT, NONFINITE_INPUT,
    UNNORMALIZED_INPUTS, EXPLODING_GRADIENT, VANISHING_GRADIENT, DEAD_UNITS,
    BAD_INIT, LEARNING_RATE, BAD_BATCH, UNKNOWN,
)

TITLE = {
    ADAM_EPSILON: "Adam's second moment decayed: its step outgrew the surface",
    SUMMED_LOSS: "The loss is summed over the batch, not averaged",
    LOG_ZERO: "log(0) in a hand-written loss",
    NONFINITE_GRADIENT: "NaN/Inf born in the backward pass",
    NONFINITE_INPUT: "NaN/Inf entered from the data (silent NaN)",
    UNNORMALIZED_INPUTS: "Inputs are not normalised",
    EXPLODING_GRADIENT: "One layer's gradient exploded",
    VANISHING_GRADIENT: "Gradients vanish through depth",
    DEAD_UNITS: "Dead or saturated units: the output collapsed to the prior",
    BAD_INIT: "Initial weights too large",
    LEARNING_RATE: "The learning rate is too large for the surface",
    BAD_BATCH: "One bad batch",
    UNKNOWN: "No known mechanism fits the evidence",
}

FIX = {
    ADAM_EPSILON: "Raise Adam's epsilon (1e-4 to 1e-2, keeping lr*h/eps < 2), "
    "lower or decay the learning rate, lower beta_2, or clip per-tensor "
    "updates (StableAdamW).",
    SUMMED_LOSS: "Average the loss over the batch (reduce_mean, or the "
    "framework's loss with mean reduction), or divide the learning rate by "
    "the batch size.",
    LOG_ZERO: "Compute the loss from logits (from_logits=True, "
    "softmax_cross_entropy_with_logits), or clip: log(p + 1e-7).",
    NONFINITE_GRADIENT: "Guard the op that produces it (sqrt(x + 1e-12)), use "
    "squared distances, check masks.",
    NONFINITE_INPUT: "Clean or impute the data; assert that every batch is "
    "finite.",
    UNNORMALIZED_INPUTS: "Scale or standardise the inputs (x / 255, "
    "per-feature standardisation, a Normalization layer).",
    EXPLODING_GRADIENT: "Clip gradients (clipnorm), use a smaller init gain, "
    "gated cells (LSTM/GRU) or normalisation layers.",
    VANISHING_GRADIENT: "Use ReLU-family activations with He initialisation, "
    "normalisation layers, residual connections.",
    DEAD_UNITS: "Find what killed the units (often unscaled inputs or a large "
    "learning rate), lower the learning rate, re-initialise.",
    BAD_INIT: "Use Glorot/He initialisation, or normalisation layers.",
    LEARNING_RATE: "Lower the learning rate; add warm-up or decay.",
    BAD_BATCH: "Inspect or filter that batch; skip steps whose gradient norm "
    "is an outlier (skip-step / z-clipping).",
    UNKNOWN: "Look at the evidence below; no known mechanism is supported "
    "by it.",
}
