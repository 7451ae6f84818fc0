"""Aligned per-run arrays built from tb_stability series (pure NumPy).

`RunData.from_tags` takes `{tag: [(step, ndarray), ...]}` in write order,
from event files (`reader`) or from TensorBoard's data provider (the
plugin), and returns step-sorted arrays. A run resumed from a checkpoint
rewinds its step: when a series is written again from a step it already
holds, what was written earlier from that step on is discarded (as
TensorBoard's data server preempts such records), so the later attempt's
values win and steps the earlier attempt reached beyond the later one's end
are not left behind.
"""

import dataclasses
import json
from typing import Dict, List, Optional

import numpy as np

from tb_stability import metadata
from tb_stability.config import RecorderConfig

GLOBAL = metadata.GLOBAL
STAT = metadata.STAT


def _not_rewound(steps, chunk_of, chunk_first):
    """Mask of the rows no later write rewound.

    Rows come in write chunks (events): `chunk_of[i]` is row i's chunk,
    `chunk_first[c]` chunk c's first step. A chunk that starts at or before
    a step already written starts the series again from there, so a row is
    dropped when any later chunk starts at or before its step.
    """
    chunk_first = np.asarray(chunk_first, np.int64)
    later = np.empty_like(chunk_first)
    later[-1:] = np.iinfo(np.int64).max
    later[:-1] = np.minimum.accumulate(chunk_first[::-1])[::-1][1:]
    return np.asarray(steps, np.int64) < later[chunk_of]


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


def _row_steps(event_step, offsets):
    """(int64 steps, bool mask of usable rows) of one global event.

    A row's step is the event's step plus its offset (column 0); a
    non-finite offset, or one whose step is not an int64, marks a damaged
    row.
    """
    offsets = np.asarray(offsets, np.float64)
    ok = np.isfinite(offsets) & (np.abs(offsets) <= 2.0 ** 53)
    off = np.rint(np.where(ok, offsets, 0)).astype(np.int64)
    with np.errstate(over="ignore"):
        steps = np.int64(event_step) + off
    ok &= ~(((off > 0) & (steps < event_step)) | ((off < 0) & (steps > event_step)))
    return steps, ok


def _clean_info(info: Dict) -> Dict:
    """run_info with the shapes the analysis relies on.

    `optimizer` is a dict, `variables` a list of {"name": str, "shape":
    [int, ...]} (an entry that is not a dict is named "var<i>", an unusable
    shape becomes []). A hand-written or damaged run_info must not stop the
    run being shown.
    """
    info = dict(info)
    if not isinstance(info.get("optimizer", {}), dict):
        info["optimizer"] = {}
    raw = info.get("variables", [])
    variables = []
    for i, v in enumerate(raw if isinstance(raw, list) else []):
        v = dict(v) if isinstance(v, dict) else {}
        if not isinstance(v.get("name"), str):
            v["name"] = f"var{i}"
        shape = v.get("shape")
        if not (isinstance(shape, list) and all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            v["shape"] = []
        variables.append(v)
    if "variables" in info:
        info["variables"] = variables
    return info


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
      inputs_steps: int64 [k]; inputs: float64 [k, features,
        len(INPUT_COLUMNS)], the per-feature input statistics: the batch of
        that step where its detail was kept (`inputs_detail`), else, at a
        window's last step, the window's aggregate (`inputs_window`).
      inputs_from_window: bool [k], which rows of `inputs` are window
        aggregates (mean of means, max of stds, min of mins, max of maxes,
        sum of non-finite counts over the window's steps).
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
    inputs_steps: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros([0], np.int64))
    inputs: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros([0, 0, len(metadata.INPUT_COLUMNS)]))
    inputs_from_window: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros([0], bool))

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
    def config(self) -> RecorderConfig:
        """The recorder settings the run was written with (run_info)."""
        return RecorderConfig.from_run_info(self.info)

    @property
    def optimizer(self) -> Dict:
        """run_info's description of the optimizer ({} if none)."""
        return self.info.get("optimizer", {}) if self.info else {}

    @property
    def model(self) -> Dict:
        """run_info's "model" record ({} if none).

        "output" (layer, class, activation, units), "loss" (class, name,
        reduction, from_logits; None in a custom loop), "dtypes" (variable,
        compute); any of them None where unknown.
        """
        model = self.info.get("model", {}) if self.info else {}
        return model if isinstance(model, dict) else {}

    def inputs_at(self, step: int) -> Optional[np.ndarray]:
        """The [features, INPUT_COLUMNS] input statistics of `step`'s batch.

        None unless that step's detail was kept.
        """
        i = int(np.searchsorted(self.inputs_steps, step))
        if (i < len(self.inputs_steps) and self.inputs_steps[i] == step
                and not self.inputs_from_window[i]):
            return self.inputs[i]
        return None

    @property
    def is_adam(self) -> bool:
        """Whether the run's optimizer keeps Adam's moments."""
        return bool(self.optimizer.get("adam", False))

    @classmethod
    def from_tags(cls, name, tags) -> Optional["RunData"]:
        """Builds a RunData; None if the run has no (usable) global rows.

        Columns are mapped by the names the run's `run_info` lists, so a run
        written before a statistic was added (or after one was dropped)
        still loads: a column it lacks is NaN, one this reader does not
        know is left out.
        """
        info = _clean_info(_last_run_info(tags.get(metadata.TAG_RUN_INFO, [])))
        global_map = _column_map(info.get("global_columns"), metadata.GLOBAL_COLUMNS)
        stat_map = _column_map(info.get("stat_columns"), metadata.STAT_COLUMNS)
        agg_map = _column_map(info.get("window_aggregates"), metadata.WINDOW_AGGREGATES)
        steps, glob = _global_rows(tags.get(metadata.TAG_GLOBAL, []), global_map)
        if steps is None:  # none, or every row damaged
            return None
        variables = [v["name"] for v in info.get("variables", [])]
        window_steps, window = _stacked(tags.get(metadata.TAG_LAYERS_WINDOW, []),
                                        (stat_map, agg_map))
        detail_steps, detail = _stacked(tags.get(metadata.TAG_LAYERS_DETAIL, []),
                                        (stat_map,))
        rows_steps, rows = _stacked(tags.get(metadata.TAG_INPUT_GRAD_ROWS, []), ())
        inputs_steps, inputs, from_window = _input_stats(tags, info)
        if not variables:  # no run_info: name the rows of what was recorded
            n = detail.shape[1] if detail.ndim == 3 and detail.shape[0] else \
                window.shape[1] if window.ndim == 4 and window.shape[0] else 0
            variables = [f"var{i}" for i in range(n)]
        return cls(name=name, steps=steps, glob=glob, window_steps=window_steps,
                   window=window, detail_steps=detail_steps, detail=detail,
                   input_rows_steps=rows_steps, input_rows=rows, info=info,
                   variables=variables, inputs_steps=inputs_steps, inputs=inputs,
                   inputs_from_window=from_window)


def _input_stats(tags, info):
    """(steps, [k, features, INPUT_COLUMNS], from_window) of the input stats.

    The detail rows, and the window aggregates at the window steps that
    have none. Columns are mapped by run_info's `input_columns`; a run
    written before it was recorded wrote `INPUT_COLUMNS_V0`.
    """
    names = info.get("input_columns")
    if not isinstance(names, list):
        names = list(metadata.INPUT_COLUMNS_V0)
    columns = _column_map(names, metadata.INPUT_COLUMNS)
    d_steps, detail = _stacked(tags.get(metadata.TAG_INPUTS_DETAIL, []), (columns,))
    w_steps, window = _stacked(tags.get(metadata.TAG_INPUTS_WINDOW, []), (columns,))
    C = len(metadata.INPUT_COLUMNS)
    if len(d_steps) and len(w_steps) and detail.shape[1] != window.shape[1]:
        w_steps, window = w_steps[:0], np.zeros([0, detail.shape[1], C])
    if not len(d_steps) and not len(w_steps):
        return np.zeros([0], np.int64), np.zeros([0, 0, C]), np.zeros([0], bool)
    extra = ~np.isin(w_steps, d_steps)
    features = detail.shape[1] if len(d_steps) else window.shape[1]
    steps = np.concatenate([d_steps, w_steps[extra]])
    values = np.concatenate([detail.reshape(-1, features, C),
                             window[extra].reshape(-1, features, C)])
    from_window = np.concatenate([np.zeros(len(d_steps), bool),
                                  np.ones(int(extra.sum()), bool)])
    order = np.argsort(steps, kind="stable")
    return steps[order], values[order], from_window[order]


def _last_run_info(events) -> Dict:
    """The last parsable run_info dict of a run ({} if none)."""
    info = {}
    for _, value in events:
        try:
            raw = np.asarray(value).item()
            parsed = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        except (ValueError, AttributeError, UnicodeDecodeError):
            continue
        if isinstance(parsed, dict):
            info = parsed
    return info


class _ColumnMap:
    """Where a run's columns go in this reader's layout.

    Attributes:
      width: how many columns the run wrote.
      source: for each of this reader's columns, the run's column index,
        or -1 where the run has no such column (read as NaN).
    """

    def __init__(self, width: int, source: np.ndarray):
        self.width = width
        self.source = source
        self.identity = width == len(source) and bool(np.all(source == np.arange(width)))

    def apply(self, array: np.ndarray, axis: int) -> np.ndarray:
        """`array` with its `axis` (of size `width`) in this reader's layout."""
        if self.identity:
            return array
        picked = np.take(array, np.maximum(self.source, 0), axis=axis)
        missing = np.reshape(self.source < 0, [-1] + [1] * (array.ndim - 1 - axis % array.ndim))
        return np.where(missing, np.nan, picked)


def _column_map(names, known) -> _ColumnMap:
    """The map of a run's column names (from run_info) onto `known`.

    Without usable names (no run_info, or a damaged one) the run is taken
    to have written exactly the `known` columns.
    """
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        names = list(known)
    position = {}
    for i, n in enumerate(names):
        position.setdefault(n, i)
    source = np.array([position.get(n, -1) for n in known], np.int64)
    return _ColumnMap(len(names), source)


def _global_rows(events, columns: _ColumnMap):
    """(steps, rows) of the global events, rewinds and repeats resolved.

    Each event is a [rows, 1 + columns] table whose column 0 is the step
    offset from the event's step; (None, None) when no row is usable.
    """
    g_steps, g_rows = [], []
    for event_step, table in events:
        table = np.asarray(table, np.float64)
        if table.ndim != 2 or table.shape[1] != 1 + columns.width:
            continue
        rows_steps, ok = _row_steps(event_step, table[:, 0])
        g_steps.append(rows_steps[ok])
        g_rows.append(columns.apply(table[ok, 1:], axis=1))
    if not any(len(s) for s in g_steps):
        return None, None
    keep = _not_rewound(
        np.concatenate(g_steps),
        np.repeat(np.arange(len(g_steps)), [len(s) for s in g_steps]),
        [s.min() if len(s) else np.iinfo(np.int64).max for s in g_steps])
    return _last_wins(np.concatenate(g_steps)[keep], np.concatenate(g_rows)[keep])


def _stacked(events, tail_maps):
    """(steps, stacked values) of a per-step array series.

    Only values of the documented rank whose trailing axes have the widths
    of `tail_maps` (one `_ColumnMap` per trailing axis, mapped into this
    reader's layout) are kept, all of one shape (the last written): anything
    else was not written by tb_stability's writer and cannot be indexed.
    """
    rank = 1 + len(tail_maps)
    tail = tuple(m.width for m in tail_maps)
    items = [(s, np.asarray(v, np.float64)) for s, v in events
             if np.ndim(v) == rank and np.shape(v)[1:] == tail]
    if items:
        shape = items[-1][1].shape
        items = [(s, v) for s, v in items if v.shape == shape]
    if not items:
        return np.zeros([0], np.int64), np.zeros([0] + [0] * rank)
    s = np.array([s for s, _ in items], np.int64)
    keep = _not_rewound(s, np.arange(len(s)), s)
    v = np.stack([v for (_, v), k in zip(items, keep) if k])
    for axis, m in enumerate(tail_maps, start=2):
        v = m.apply(v, axis=axis)
    return _last_wins(s[keep], v)
