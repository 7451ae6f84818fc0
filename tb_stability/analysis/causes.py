"""The causes tb_stability can name: one registry, the only definition.

Each cause is a `CauseDef`: its id (a public contract: never rename one),
its title and fix in plain words, and how the Stability tab draws it (a
colour, a marker shape and a short label; every cause has its own colour
*and* its own shape, so the markers stay distinguishable in grey-scale and
for colour-blind readers). The report carries the ids and fixes, the
plugin serves the whole registry (`GET causes`, see
`tb_stability/server/http_api.md`) and the tab draws from it: nothing is
copied elsewhere. The ids, mechanisms and fixes follow the project's
causes.md; the rule that names each cause is in `analysis/rules/`.

Adding a cause: its id constant and `CauseDef` here, its rule module in
`analysis/rules/` and its line in `rules.RULES`, and the docs (REPORT.md).
"""

import dataclasses
from typing import Dict, Tuple

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
OUTPUT_MISMATCH = "output_mismatch"
UNKNOWN = "unknown"

# The marker shapes the tab can draw (`shapePath` in static/model.js).
SHAPES = ("circle", "ring", "square", "diamond", "triangle-up", "triangle-down",
          "triangle-left", "triangle-right", "pentagon", "hexagon", "star", "plus", "x",
          "bowtie")


@dataclasses.dataclass(frozen=True)
class CauseDef:
    """The definition of one cause.

    Attributes:
      id: the cause id of the report (`causes[].cause`).
      title: the cause in plain words, one line.
      fix: what to change, one or two sentences.
      color: the tab's colour for it, `#rrggbb`.
      shape: the tab's marker shape, one of `SHAPES`.
      label: the tab's short label (legend, anomaly list).
    """

    id: str
    title: str
    fix: str
    color: str
    shape: str
    label: str

    def to_json(self) -> Dict[str, str]:
        """The entry of `GET causes`: the fields, the id under `cause`."""
        return {"cause": self.id, "title": self.title, "fix": self.fix,
                "color": self.color, "shape": self.shape, "label": self.label}


CAUSES: Tuple[CauseDef, ...] = (
    CauseDef(
        ADAM_EPSILON,
        title="Adam's second moment decayed: its step outgrew the surface",
        fix="Raise Adam's epsilon (1e-4 to 1e-2, so that the learning rate "
        "times the sharpest curvature, over epsilon, stays under 2), "
        "lower or decay the learning rate, lower beta_2, or clip per-tensor "
        "updates (StableAdamW).",
        color="#f28e2b", shape="diamond", label="Adam 2nd-moment decay"),
    CauseDef(
        SUMMED_LOSS,
        title="The loss is summed over the batch, not averaged",
        fix="Average the loss over the batch (reduce_mean, or the "
        "framework's loss with mean reduction), or divide the learning rate by "
        "the batch size.",
        color="#b07aa1", shape="square", label="Summed loss"),
    CauseDef(
        LOG_ZERO,
        title="log(0) in a hand-written loss",
        fix="Compute the loss from logits (from_logits=True, "
        "softmax_cross_entropy_with_logits), or clip: log(p + 1e-7).",
        color="#e15759", shape="x", label="log(0) in loss"),
    CauseDef(
        NONFINITE_GRADIENT,
        title="NaN/Inf born in the backward pass",
        fix="Guard the op that produces it (sqrt(x + 1e-12)), use "
        "squared distances, check masks.",
        color="#c2185b", shape="star", label="NaN/Inf in backward"),
    CauseDef(
        NONFINITE_INPUT,
        title="NaN/Inf entered from the data (silent NaN)",
        fix="Clean or impute the data; assert that every batch is finite.",
        color="#9c755f", shape="plus", label="NaN/Inf from data"),
    CauseDef(
        UNNORMALIZED_INPUTS,
        title="Inputs are not normalised",
        fix="Scale or standardise the inputs (x / 255, "
        "per-feature standardisation, a Normalization layer).",
        color="#59a14f", shape="hexagon", label="Unnormalised inputs"),
    CauseDef(
        EXPLODING_GRADIENT,
        title="One layer's gradient exploded",
        fix="Clip gradients (clipnorm), use a smaller init gain, "
        "gated cells (LSTM/GRU) or normalisation layers.",
        color="#4e79a7", shape="triangle-up", label="Exploding gradient"),
    CauseDef(
        VANISHING_GRADIENT,
        title="Gradients vanish through depth",
        fix="Use ReLU-family activations with He initialisation, "
        "normalisation layers, residual connections.",
        color="#76b7b2", shape="triangle-down", label="Vanishing gradient"),
    CauseDef(
        DEAD_UNITS,
        title="Dead or saturated units: the output collapsed to the prior",
        fix="Find what killed the units (often unscaled inputs or a large "
        "learning rate), lower the learning rate, re-initialise.",
        color="#8f7fd6", shape="pentagon", label="Dead units"),
    CauseDef(
        BAD_INIT,
        title="Initial weights too large",
        fix="Use Glorot/He initialisation, or normalisation layers.",
        color="#d37295", shape="triangle-right", label="Bad init"),
    CauseDef(
        LEARNING_RATE,
        title="The learning rate is too large for the surface",
        fix="Lower the learning rate; add warm-up or decay.",
        color="#d4a20a", shape="triangle-left", label="Learning rate"),
    CauseDef(
        BAD_BATCH,
        title="One bad batch",
        fix="Inspect or filter that batch; skip steps whose gradient norm "
        "is an outlier (skip-step / z-clipping).",
        color="#17a2b8", shape="circle", label="Bad batch"),
    CauseDef(
        OUTPUT_MISMATCH,
        title="The output layer cannot produce the targets, or the loss does "
        "not fit the output",
        fix="Match the output to the loss and the targets: softmax over 2 or "
        "more units (or a sigmoid) for classes, a linear output for regression, "
        "from_logits=True on logits; scale the targets into the activation's "
        "range.",
        color="#6b8e23", shape="bowtie", label="Output/loss mismatch"),
    CauseDef(
        UNKNOWN,
        title="No known mechanism fits the evidence",
        fix="Look at the evidence below; no known mechanism is supported "
        "by it.",
        color="#8d8d8d", shape="ring", label="Unknown"),
)

BY_ID: Dict[str, CauseDef] = {c.id: c for c in CAUSES}
ALL: Tuple[str, ...] = tuple(c.id for c in CAUSES)
TITLE: Dict[str, str] = {c.id: c.title for c in CAUSES}
FIX: Dict[str, str] = {c.id: c.fix for c in CAUSES}


def registry_json():
    """The `GET causes` payload: every cause's definition, in `ALL` order."""
    return {"causes": [c.to_json() for c in CAUSES]}
