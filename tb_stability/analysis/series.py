"""Aligned per-run arrays built from tb_stability series (pure NumPy).

`RunData.from_tags` takes `{tag: [(step, ndarray), ...]}` in write order,
from event files (`reader`) or from TensorBoard's data provider (the
plugin), and returns step-sorted arrays. A step written twice (a run resumed
from a checkpoint rewinds its step) keeps the value written last.
"""

import dataclasses
import json
from typing import Dict, List, Optional

import numpy as np

from tb_stability import metadata

GLOBAL = {name: i for i, name in enumerate(metadata.GLOBAL_COLUMNS)}
STAT = {name: i for i, name in enumerate(metadata.STAT_COLUMNS)}


def _last_wins(steps, values):
    """Sorts by step; for repeated steps keeps the value written last."""
    steps = np.asarray(steps, np.int64)
    if len(steps) == 0:
        return steps, values
    order = np.arange(len(steps))
    # Reverse, so np.unique's first occurrence is the last written.
    rev_steps = steps[::-1]
    uniq, first = np.unique(rev_steps, return_index=True)
    keep = order[::-1][first]
    return uniq, values[keep]


@dataclasses.dataclass
class RunData:
    """Everything recorded for one run, aligned by step.

    Attributes:
      name: the run name.
      steps: int64 [n], every recorded step, sorted.
      glob: float64 [n, len(GLOBAL_COLUMNS)], one row per step.
      window_steps: int64 [w], last step of each window.
      window: float64 [w, vars, stats, 2] (max, mean) per window.
      detail_steps: int64 [d]; detail: float64 [d, vars, stats].
      input_rows_steps: int64 [r]; input_rows: float64 [r, features].
      info: the last run_info dict ({} if none).
      variables: variable names (rows of the per-variable arrays).
    """

    name: str
    steps: np.ndarray
    glob: np.ndarray
    window_steps: np.ndarray
    window: np.ndarray
    detail_steps: np.ndarray
    detail: np.ndarray
    input_rows_steps: np.ndarray
    input_rows: np.ndarray
    info: Dict
    variables: List[str]

    def col(self, name: str) -> np.ndarray:
        """One global column over all steps."""
        return self.glob[:, GLOBAL[name]]

    def index_of(self, step: int) -> int:
        """Row index of `step` in `steps` (nearest at or before it)."""
        i = int(np.searchsorted(self.steps, step, side="right")) - 1
        return max(i, 0)

    def detail_at(self, step: int) -> Optional[np.ndarray]:
        """The per-variable [vars, stats] row of `step`, if kept."""
        i = int(np.searchsorted(self.detail_steps, step))
        if i < len(self.detail_steps) and self.detail_steps[i] == step:
            return self.detail[i]
        return None

    def detail_between(self, first: int, last: int):
        """(steps, [k, vars, stats]) of the detail rows in [first, last]."""
        lo = int(np.searchsorted(self.detail_steps, first))
        hi = int(np.searchsorted(self.detail_steps, last, side="right"))
        return self.detail_steps[lo:hi], self.detail[lo:hi]

    @property
    def optimizer(self) -> Dict:
        return self.info.get("optimizer", {}) if self.info else {}

    @property
    def is_adam(self) -> bool:
        return bool(self.optimizer.get("adam", False))

    @classmethod
    def from_tags(cls, name, tags) -> Optional["RunData"]:
        """Builds a RunData; None if the run has no global rows."""
        g_steps, g_rows = [], []
        for event_step, table in tags.get(metadata.TAG_GLOBAL, []):
            table = np.asarray(table, np.float64)
            if table.ndim != 2 or table.shape[1] != 1 + len(metadata.GLOBAL_COLUMNS):
                continue
            g_steps.append(event_step + np.rint(table[:, 0]).astype(np.int64))
            g_rows.append(table[:, 1:])
        if not g_steps:
            return None
        steps, glob = _last_wins(np.concatenate(g_steps), np.concatenate(g_rows))

        info = {}
        for _, value in tags.get(metadata.TAG_RUN_INFO, []):
            try:
                raw = np.asarray(value).item()
                parsed = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
                if isinstance(parsed, dict):
                    info = parsed
            except (ValueError, AttributeError, UnicodeDecodeError):
                continue
        variables = [v.get("name", f"var{i}") for i, v in
                     enumerate(info.get("variables", []))]

        def stacked(tag, rank):
            items = [(s, np.asarray(v, np.float64)) for s, v in tags.get(tag, [])
                     if np.ndim(v) == rank]
            if items:
                shape = items[-1][1].shape
                items = [(s, v) for s, v in items if v.shape == shape]
            if not items:
                return np.zeros([0], np.int64), np.zeros([0] + [0] * rank)
            s = np.array([s for s, _ in items], np.int64)
            v = np.stack([v for _, v in items])
            return _last_wins(s, v)

        window_steps, window = stacked(metadata.TAG_LAYERS_WINDOW, 3)
        detail_steps, detail = stacked(metadata.TAG_LAYERS_DETAIL, 2)
        rows_steps, rows = stacked(metadata.TAG_INPUT_GRAD_ROWS, 1)
        if not variables and detail.ndim == 3 and detail.shape[0]:
            variables = [f"var{i}" for i in range(detail.shape[1])]
        return cls(name=name, steps=steps, glob=glob, window_steps=window_steps,
                   window=window, detail_steps=detail_steps, detail=detail,
                   input_rows_steps=rows_steps, input_rows=rows, info=info,
                   variables=variables)
