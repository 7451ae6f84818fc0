"""What the cause rules share about one run, and what a rule returns.

`Context` is computed once per run (the loss, the variables, the number
of classes, the input layer, the starting loss) and handed to every rule
with the anomaly. A rule returns a `Cause` (built by `make_cause`) or None.
"""

import dataclasses
from typing import List, Optional, Tuple

import numpy as np

from tb_stability.analysis import causes as C
from tb_stability.analysis.evidence import nanmedian
from tb_stability.events.series import RunData
from tb_stability.metadata import GLOBAL, STAT, layer_of

# Keras losses on class labels (the targets are labels, not values).
CROSS_ENTROPIES = ("binary_crossentropy", "categorical_crossentropy",
                   "sparse_categorical_crossentropy", "binary_focal_crossentropy",
                   "categorical_focal_crossentropy", "kl_divergence")
# Short names Keras accepts for its losses.
LOSS_ALIASES = {"mse": "mean_squared_error", "mae": "mean_absolute_error",
                "mape": "mean_absolute_percentage_error",
                "msle": "mean_squared_logarithmic_error", "logcosh": "log_cosh",
                "kld": "kl_divergence", "kullback_leibler_divergence": "kl_divergence"}

# The first rows whose median finite loss is the run's starting loss.
INITIAL_LOSS_ROWS = 50
# window_argmax: tensors with fewer entries than this are ignored when any
# tensor has as many (the window max of a small tensor is noisy).
MIN_TENSOR_SIZE = 32


@dataclasses.dataclass(frozen=True)
class Cause:
    """One candidate cause of an anomaly, with its evidence.

    Attributes:
      cause: the cause id (`causes.ALL`).
      confidence: in [0, 1]; the causes of an anomaly are ranked by it.
      variable: the variable (Keras path) where the cause is implicated, or
        None; the report's `layer` is its layer (`metadata.layer_of`).
      lead_steps: how many steps the leading signal preceded the peak, or None.
      evidence: sentences with the numbers that support the cause.
      fix: what to change.
      sequel_of: the peak step of the earlier anomaly this one follows, when
        that anomaly's cause is carried over (`rules.sequel`), else None.
    """

    cause: str
    confidence: float
    variable: Optional[str]
    lead_steps: Optional[int]
    evidence: List[str]
    fix: str
    sequel_of: Optional[int] = None

    def to_json(self):
        """The report's cause dict (REPORT.md), confidence rounded to 3 digits."""
        out = {
            "cause": self.cause,
            "confidence": round(float(self.confidence), 3),
            "layer": None if self.variable is None else layer_of(self.variable),
            "variable": self.variable,
            "lead_steps": self.lead_steps,
            "evidence": list(self.evidence),
            "fix": self.fix,
        }
        if self.sequel_of is not None:
            out["sequel_of"] = self.sequel_of
        return out


def make_cause(cid: str, confidence: float, evidence: List[str],
               variable: Optional[str] = None, lead: Optional[int] = None) -> Cause:
    """A `Cause` of id `cid`, its confidence clipped to [0, 1], its fix from `causes`."""
    return Cause(cid, float(min(max(confidence, 0.0), 1.0)), variable,
                 None if lead is None else int(lead), evidence, C.FIX[cid])


class Context:
    """What the rules share about one run.

    Attributes:
      run: the `RunData`.
      loss: its loss column.
      variables: `run_info`'s variable entries (name, shape).
      names: the variable names, in the order of the recorded rows.
      kernels: indices of the variables of rank >= 2.
      classes: the last kernel's width (the number of classes), or None.
      input_index: the input layer's kernel (`run_info`'s `input_kernel`,
        else the first kernel), or None.
      input_bias: the bias right after it (same width), or None.
      initial_loss: the median finite loss of the first rows, or NaN.
      model: run_info's description of the model ({} when not recorded):
        "output" (layer, activation, units), "loss" (class, name,
        reduction, from_logits), "dtypes" (variable, compute).
    """

    def __init__(self, run: RunData):
        self.run = run
        self.loss = run.col("loss")
        self.variables = run.info.get("variables", [])
        self.names = run.variables
        kernels = [i for i, v in enumerate(self.variables) if len(v.get("shape", [])) >= 2]
        self.classes = None
        if kernels:
            last = self.variables[kernels[-1]]["shape"][-1]
            self.classes = int(last) if last and last > 0 else None
        self.kernels = kernels
        name = run.info.get("input_kernel")
        self.input_index = self.names.index(name) if name in self.names else (
            kernels[0] if kernels else None)
        self.input_bias = None
        if self.input_index is not None and self.input_index + 1 < len(self.variables):
            k = self.variables[self.input_index]["shape"]
            b = self.variables[self.input_index + 1]["shape"]
            if len(b) == 1 and b[0] == k[-1]:
                self.input_bias = self.input_index + 1
        self.model = run.info.get("model") or {}
        n = INITIAL_LOSS_ROWS
        first = np.isfinite(self.loss)
        self.initial_loss = nanmedian(self.loss[:min(len(self.loss), n)][first[:n]]) \
            if first[:n].any() else float("nan")

    def column(self, name: str) -> np.ndarray:
        """A global column; all NaN (not measured) where the format lacks it."""
        if name in GLOBAL:
            return self.run.col(name)
        return np.full(len(self.loss), np.nan)

    def loss_name(self) -> Optional[str]:
        """The recorded loss's Keras name in snake case, or None (not recorded).

        From run_info "model"."loss" ("name", else "class":
        `CategoricalCrossentropy` -> `categorical_crossentropy`), short names
        resolved (`mse` -> `mean_squared_error`).
        """
        loss = self.model.get("loss") or {}
        name = (loss.get("name") or loss.get("class")) if isinstance(loss, dict) else None
        if not isinstance(name, str) or not name:
            return None
        if any(c.isupper() for c in name):
            name = "".join(("_" + c.lower()) if c.isupper() and i and not name[i - 1].isupper()
                           else c.lower() for i, c in enumerate(name))
        name = name.replace("cross_entropy", "crossentropy").replace(
            "k_l_divergence", "kl_divergence")
        return LOSS_ALIASES.get(name, name)

    def targets_are_labels(self) -> bool:
        """Whether the targets are class labels, not values the output must reach.

        Under a recorded cross-entropy; else when the targets were measured
        and are integral from 0 up to at most max(1, C - 1).
        """
        if self.loss_name() in CROSS_ENTROPIES:
            return True
        lo, hi = self.column("target_min"), self.column("target_max")
        if not (np.isfinite(lo).any() and np.isfinite(hi).any()):
            return False
        lo, hi = float(np.nanmin(lo)), float(np.nanmax(hi))
        top = max(1, (self.classes or 2) - 1)
        return lo == 0.0 and hi == round(hi) and 1.0 <= hi <= top

    def pred_spread(self) -> np.ndarray:
        """[n] spread of the predictions over each step's batch, relative.

        (pred_max - pred_min) / max(1, |pred_mean|); NaN where not measured.
        """
        with np.errstate(invalid="ignore"):
            return (self.column("pred_max") - self.column("pred_min")) / np.maximum(
                1.0, np.abs(self.column("pred_mean")))

    def data_nonfinite(self, lo: int, hi: int) -> Optional[float]:
        """Non-finite entries in the inputs and targets over rows [lo, hi].

        None when neither was measured there (not recorded, or an older
        format); else the largest count of one row.
        """
        counts = np.stack([self.column("input_nonfinite")[lo:hi + 1],
                           self.column("target_nonfinite")[lo:hi + 1]])
        if not np.isfinite(counts).any():
            return None
        return float(np.nanmax(counts))

    def idx(self, step: int) -> int:
        """The row of `step` (`RunData.index_of`)."""
        return self.run.index_of(step)

    def name(self, i: int) -> Optional[str]:
        """The name of variable `i`, or None outside the recorded ones."""
        return self.names[i] if 0 <= i < len(self.names) else None

    def window_argmax(self, step: int, stat: str) -> Optional[str]:
        """The variable with the largest window max of `stat` in the window holding `step`.

        For when no per-step detail covers `step`. Tensors smaller than
        `MIN_TENSOR_SIZE` are ignored when a larger one exists.
        """
        run = self.run
        if len(run.window_steps) == 0:
            return None
        w = min(int(np.searchsorted(run.window_steps, step)), len(run.window_steps) - 1)
        values = run.window[w, :, STAT[stat], 0].copy()
        sizes = [int(np.prod(v.get("shape", [0]))) for v in self.variables]
        if len(sizes) == len(values) and any(n >= MIN_TENSOR_SIZE for n in sizes):
            values[[n < MIN_TENSOR_SIZE for n in sizes]] = np.nan  # noisy small tensors
        if not np.any(np.isfinite(values)):
            return None
        return self.name(int(np.nanargmax(values)))

    def first_detail(self) -> Tuple[Optional[int], Optional[np.ndarray]]:
        """(step, [vars, stats]) of the first per-step detail row, or (None, None)."""
        if len(self.run.detail_steps) == 0:
            return None, None
        return int(self.run.detail_steps[0]), self.run.detail[0]
