"""What the plugin's routes serve, computed from a `RunData` (pure NumPy).

`plugin.py` parses requests and reads through TensorBoard's data provider;
this module turns one run's arrays and its analysis into the JSON payloads
documented in `http_api.md`. No TensorFlow, no TensorBoard.

Non-finite numbers are encoded explicitly, never as bare NaN/Infinity
(which JSON does not have): a float that is NaN becomes the string "NaN",
+inf "Infinity", -inf "-Infinity"; `null` means "no value recorded".

The writer stores NaN both for "not measured on this step" (`stats_every`,
Adam columns under SGD) and for a value that really was NaN. The per-step
routes tell them apart (`encode_measured`): a NaN is real where the step's (or
the variable's) non-finite counts are positive, or in a column measured on
every step (the loss, the gradient norms); anywhere else it is `null`.
"""

import math
import re
from typing import Dict, List, Optional

import numpy as np

from tb_stability import metadata
from tb_stability.analysis import causes as causes_lib
from tb_stability.analysis import report as report_lib
from tb_stability.events.series import GLOBAL, STAT, RunData
from tb_stability.metadata import layer_of

MAX_WIDTH = 10_000
DEFAULT_WIDTH = 1000
# Global signals drawn on the timeline (the loss first).
TIMELINE_SERIES = ("loss", "grad_norm", "rms_ratio_max", "learning_rate",
                   "update_ratio", "eff_step_max", "loss_scale")
# Per-variable statistics served around an anomaly (layers x steps).
ANOMALY_STATS = ("grad_norm", "rms_ratio", "eff_step_max", "update_ratio",
                 "sqrt_nu_over_eps_median", "mu_rms", "nu_sqrt_rms",
                 "weight_norm", "grad_nonfinite")
ANOMALY_GLOBAL = ("loss", "grad_norm", "learning_rate", "rms_ratio_max",
                  "update_ratio", "eff_step_max", "nonfinite", "loss_scale")
MAX_ANOMALY_COLUMNS = 512
# At most this many variables (rows) are served around an anomaly: those a
# cause implicates, then those that rose most (see `rank_variables`).
MAX_ROWS = 256
# The statistics whose rise ranks the variables of a wide run, and the
# counts that put a variable in the non-finite tier above them.
RANK_STATS = ("grad_norm", "update_ratio", "rms_ratio")
RANK_NONFINITE = ("grad_nonfinite", "weight_nonfinite", "moment_nonfinite")
RANK_MAX_DECADES = 12.0  # a rise is counted up to 10**12 times its level
MAX_GLOBAL_ROWS = 4096
# A step the top cause's evidence names ("crossed 1.0 at step 3438") up to
# this many steps outside the evidence window widens the window to it.
MAX_CITED_REACH = 1024
_CITED_STEP = re.compile(r"\bsteps? ([0-9][0-9,]*)(?: (?:and|to) ([0-9][0-9,]*))?")
MAX_SKIPPED_LISTED = 10_000


def encode_float(x) -> object:
    """A float for JSON: finite as is; NaN/inf as "NaN"/"Infinity"/"-Infinity"."""
    if x is None:
        return None
    x = float(x)
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


def encode_array(a) -> list:
    """Nested lists of `a` with non-finite values encoded (see module doc)."""
    a = np.asarray(a, np.float64)
    out = a.tolist()
    if np.all(np.isfinite(a)):
        return out
    if a.ndim == 0:
        return encode_float(out)

    def fix(v):
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v if math.isfinite(v) else encode_float(v)
    return fix(out)


# Columns measured on every step: a NaN there is a NaN value.
EVERY_STEP_GLOBAL = ("loss", "grad_norm")
EVERY_STEP_STATS = ("grad_norm", "grad_nonfinite", "weight_nonfinite", "moment_nonfinite")
# Columns that are never a measurement of the training's numbers: NaN there
# is always "not recorded" (no learning rate given, no loss scaling, no data).
NEVER_NAN_GLOBAL = ("learning_rate", "batch_size", "loss_scale") + metadata.DATA_COLUMNS
# Adam's own statistics: NaN ("not recorded") under other optimizers.
ADAM_STATS = ("mu_rms", "nu_sqrt_rms", "rms_ratio", "eff_step_max",
              "sqrt_nu_over_eps_median")
ADAM_GLOBAL = ("rms_ratio_max", "eff_step_max")


def encode_measured(a, real_nan) -> list:
    """Like `encode_array`, but a NaN is "NaN" only where `real_nan` is True.

    `real_nan` is a bool array broadcast to `a`'s shape; a NaN where it is
    False is `null` (not measured). Infinities are always values.
    """
    a = np.asarray(a, np.float64)
    out = a.tolist()
    bad = ~np.isfinite(a)
    if not bad.any():
        return out
    real = np.broadcast_to(np.asarray(real_nan, bool), a.shape)
    if a.ndim == 0:
        return encode_float(out) if (not math.isnan(out) or bool(real)) else None
    for idx in zip(*np.nonzero(bad)):
        v = a[idx]
        enc = encode_float(v) if (not math.isnan(v) or real[idx]) else None
        if a.ndim == 1:
            out[idx[0]] = enc
        else:
            row = out
            for i in idx[:-1]:
                row = row[i]
            row[idx[-1]] = enc
    return out


def global_real_nan(run: RunData, rows) -> np.ndarray:
    """[len(rows)] whether global row `rows[i]` had a non-finite value.

    Its `nonfinite` count positive or its loss not finite: a NaN in a
    column measured on that step is a NaN value.
    """
    count = np.nan_to_num(run.glob[rows, GLOBAL["nonfinite"]])
    return (count > 0) | ~np.isfinite(run.glob[rows, GLOBAL["loss"]])


def global_nan_mask(run: RunData, name: str, row_real: np.ndarray) -> np.ndarray:
    """Where a NaN of global column `name` is a value (see the module doc)."""
    if name in NEVER_NAN_GLOBAL or (name in ADAM_GLOBAL and not run.is_adam):
        return np.zeros_like(row_real)
    if name in EVERY_STEP_GLOBAL or name in ("nonfinite", "flags"):
        return np.ones_like(row_real)
    return row_real


def stat_nan_mask(run: RunData, rows: np.ndarray, name: str) -> np.ndarray:
    """[k, vars] where a NaN of statistic `name` in `rows` is a value.

    `rows` is [k, vars, stats]: where the variable's own non-finite counts
    are positive, or everywhere for a statistic measured on every step.
    """
    shape = rows.shape[:2]
    if name in ADAM_STATS and not run.is_adam:
        return np.zeros(shape, bool)
    if name in EVERY_STEP_STATS:
        return np.ones(shape, bool)
    real = np.zeros(shape, bool)
    for count in ("grad_nonfinite", "weight_nonfinite", "moment_nonfinite"):
        real |= np.nan_to_num(rows[:, :, STAT[count]]) > 0
    return real


def encode_json(value):
    """Recursively encodes non-finite floats in dicts and lists."""
    if isinstance(value, float):
        return encode_float(value)
    if isinstance(value, dict):
        return {k: encode_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_json(v) for v in value]
    return value


def causes() -> Dict:
    """The /causes payload: every cause's id, title, fix and drawing style."""
    return causes_lib.registry_json()


def _titled(cause: Dict) -> Dict:
    """A report cause dict with its plain-words `title` added."""
    return dict(cause, title=causes_lib.TITLE.get(cause["cause"], cause["cause"]))


def _anomaly_summary(a: Dict) -> Dict:
    top = _titled(a["causes"][0]) if a["causes"] else None
    return {
        "kind": a["kind"], "pattern": a.get("pattern", ""),
        "step": a["step"], "peak_step": a["peak_step"],
        "end_step": a["end_step"], "severity": a["severity"],
        "baseline": a.get("baseline"), "peak_value": a.get("peak_value"),
        "cause": top, "n_causes": len(a["causes"]),
    }


def bucket_starts(steps: np.ndarray, width: int) -> np.ndarray:
    """The row index where each bucket starts.

    Buckets are `width` equal step ranges over [first, last]; empty ranges
    are dropped. One bucket per row when the run has no more rows than
    `width`.
    """
    n = len(steps)
    if n <= width:
        return np.arange(n)
    first, last = int(steps[0]), int(steps[-1])
    span = last - first + 1
    if span * width < 2 ** 63:
        idx = ((steps - first) * width) // span
    else:  # steps too far apart for int64 arithmetic (hand-written steps)
        idx = np.minimum(np.floor((steps.astype(np.float64) - float(first))
                                  * (width / span)), width - 1)
    return np.concatenate([[0], np.flatnonzero(np.diff(idx)) + 1])


def timeline(run: RunData, anomalies: List[Dict], width: int,
             first: Optional[int] = None, last: Optional[int] = None) -> Dict:
    """The /timeline payload: global signals bucketed by min/max.

    Over the steps in [first, last] (default: all; a zoomed chart asks for
    its range). Every anomaly of the run is listed whatever the range.
    """
    lo = 0 if first is None else int(np.searchsorted(run.steps, first))
    hi = len(run.steps) if last is None else int(np.searchsorted(run.steps, last, side="right"))
    steps = run.steps[lo:hi]
    starts = bucket_starts(steps, width)
    ends = np.concatenate([starts[1:], [len(steps)]])[:len(starts)] - 1
    series = {}
    row_real = global_real_nan(run, slice(lo, hi))
    for name in TIMELINE_SERIES:
        col = run.col(name)[lo:hi]
        if not len(col):
            continue
        if not len(col) or not np.any(~np.isnan(col)):
            continue  # never recorded (e.g. loss_scale without mixed precision)
        # fmin/fmax skip NaN (a NaN-only bucket stays NaN); inf is kept.
        # A NaN-only bucket is "NaN" when one of its NaN was a value, else
        # null (nothing measured in it).
        real = np.logical_or.reduceat(
            np.isnan(col) & global_nan_mask(run, name, row_real), starts) \
            if len(starts) else np.zeros(0, bool)
        series[name] = {"min": encode_measured(np.fmin.reduceat(col, starts), real),
                        "max": encode_measured(np.fmax.reduceat(col, starts), real)}
    loss = run.col("loss")[lo:hi]
    nonfinite = (~np.isfinite(loss)) | (np.nan_to_num(run.col("nonfinite")[lo:hi]) > 0)
    flags = np.nan_to_num(run.col("flags")[lo:hi]).astype(np.int64)
    guarded = report_lib.guard_skipped_steps(run)
    guarded = np.zeros(hi - lo, bool) if guarded is None else guarded[lo:hi]
    skipped = report_lib.skipped_steps(run)
    skipped_steps = run.steps[skipped] if skipped is not None else run.steps[:0]
    skipped_steps = skipped_steps[(skipped_steps >= steps[0]) & (skipped_steps <= steps[-1])] \
        if len(steps) else skipped_steps[:0]
    per_bucket = len(starts) > 0
    return {
        "run": run.name,
        "steps": int(len(run.steps)),
        "first_step": int(run.steps[0]),
        "last_step": int(run.steps[-1]),
        "range": [int(steps[0]), int(steps[-1])] if len(steps) else None,
        "range_steps": int(len(steps)),
        "width": int(width),
        "buckets": int(len(starts)),
        "step_min": steps[starts].tolist(),
        "step_max": steps[ends].tolist(),
        "series": series,
        "nonfinite": np.add.reduceat(nonfinite.astype(np.int64), starts).tolist()
        if per_bucket else [],
        "flags": np.bitwise_or.reduceat(flags, starts).tolist() if per_bucket else [],
        "skipped_steps": skipped_steps[:MAX_SKIPPED_LISTED].tolist(),
        "skipped_total": int(len(skipped_steps)),
        # Updates the update guard skipped: per bucket, and in the range.
        "guard_skipped": np.add.reduceat(guarded.astype(np.int64), starts).tolist()
        if per_bucket else [],
        "guard_skipped_total": int(np.count_nonzero(guarded)),
        "anomalies": [_anomaly_summary(a) for a in anomalies],
        "optimizer": encode_json(run.optimizer),
    }


def find_anomaly(anomalies: List[Dict], step: int) -> Optional[Dict]:
    """The anomaly whose onset or peak step is `step` (onset first)."""
    for key in ("step", "peak_step"):
        for a in anomalies:
            if a[key] == step:
                return a
    return None


def _columns(steps: np.ndarray, onset: int, peak: int,
             limit: int = None) -> np.ndarray:
    """The indices of the columns to show.

    All, or at most `limit` (default MAX_ANOMALY_COLUMNS) split between
    those nearest the onset and the peak.
    """
    limit = limit or MAX_ANOMALY_COLUMNS
    if len(steps) <= limit:
        return np.arange(len(steps))
    half = limit // 2
    near_onset = np.argsort(np.abs(steps - onset), kind="stable")[:half]
    near_peak = np.argsort(np.abs(steps - peak), kind="stable")[:half]
    return np.unique(np.concatenate([near_onset, near_peak]))


def cited_steps(causes: List[Dict]) -> List[int]:
    """The steps the top cause's evidence sentences name, ascending.

    As in "crossed 1.0 at step 3438" or "between steps 1400 and 3400".
    """
    out = set()
    for sentence in (causes[0].get("evidence") or []) if causes else []:
        if not isinstance(sentence, str):
            continue
        for m in _CITED_STEP.finditer(sentence):
            for g in m.groups():
                if g:
                    try:
                        out.add(int(g.replace(",", "")))
                    except ValueError:
                        pass
    return sorted(out)


def _widened(lo: int, hi: int, cited) -> tuple:
    """[lo, hi] widened to the cited steps at most MAX_CITED_REACH outside."""
    for s in cited:
        if lo - MAX_CITED_REACH <= s < lo:
            lo = s
        elif hi < s <= hi + MAX_CITED_REACH:
            hi = s
    return lo, hi


def _with_cited(cols: np.ndarray, steps: np.ndarray, cited) -> np.ndarray:
    """`cols` plus the columns at the cited steps (kept whatever the cap)."""
    at = np.flatnonzero(np.isin(steps, np.asarray(list(cited), np.int64))) if len(cited) else []
    return np.union1d(cols, at).astype(np.int64) if len(at) else cols


def evidence_window(run: RunData, onset: int, peak: int, end: Optional[int], cited=()):
    """(steps, [k, vars, stats], resolution) around an anomaly.

    Per-step detail rows from `detail_before` steps before the onset to
    `detail_after` after the peak, widened to the `cited` steps (those the
    evidence names) up to MAX_CITED_REACH outside, when the writer kept
    them; otherwise the per-window maxima over the same range widened by
    two windows. The columns at cited steps are always kept.
    """
    config = run.config
    before, after = config.detail_before, config.detail_after
    lo, hi = _widened(onset - before, peak + after, cited)
    steps, rows = run.detail_between(lo, hi)
    if len(steps) >= 2:
        cols = _with_cited(_columns(steps, onset, peak), steps, cited)
        return steps[cols], rows[cols], "step"
    window = config.window
    ws = run.window_steps
    if not len(ws) or run.window.ndim != 4:
        return steps, rows, "step"
    wlo, whi = _widened(onset - before - window, max(peak, end or peak) + 2 * window, cited)
    lo = int(np.searchsorted(ws, wlo))
    hi = int(np.searchsorted(ws, whi, side="right"))
    agg = metadata.WINDOW_AGGREGATES.index("max")
    cols = _columns(ws[lo:hi], onset, peak)
    return ws[lo:hi][cols], run.window[lo:hi, :, :, agg][cols], "window"


def rank_variables(steps: np.ndarray, rows: np.ndarray, onset: int) -> np.ndarray:
    """The variables of an evidence window, most moved first.

    `rows` is [steps, vars, stats]; the result a permutation of range(vars).

    First the variables with a non-finite sign in the window (a positive
    `grad_nonfinite`, `weight_nonfinite` or `moment_nonfinite` count, or an
    infinite `grad_norm`, `update_ratio` or `rms_ratio`), the earliest to
    show it first. Then by how far each rose: for each of `RANK_STATS`,
    log10 of the largest value in the window over the variable's own level
    before the onset (the median of its columns before `onset`, or of all
    columns when none is before), the largest of the three (at least 0, at
    most `RANK_MAX_DECADES`; a statistic not recorded, or whose level is
    not positive, counts 0). Ties keep the model's order.
    """
    k = rows.shape[0] if rows.ndim == 3 else 0
    n = rows.shape[1] if rows.ndim == 3 else 0
    index = np.arange(n)
    if not k or not n:
        return index
    before = np.asarray(steps) < onset
    if not before.any():
        before[:] = True
    rise = np.zeros(n)
    first_nonfinite = np.full(n, k)  # k: never
    with np.errstate(all="ignore"):
        for name in RANK_STATS:
            x = rows[:, :, STAT[name]]
            first_nonfinite = np.minimum(first_nonfinite, _first_true(np.isinf(x), k))
            level = _nanmedian0(x[before])
            # fmax skips NaN (an all-NaN column stays NaN, without a warning)
            peak = np.fmax.reduce(np.where(np.isfinite(x), x, np.nan), axis=0)
            decades = np.log10(peak / level)
            ok = (level > 0) & np.isfinite(level) & ~np.isnan(decades)
            rise = np.maximum(rise, np.where(
                ok, np.clip(np.nan_to_num(decades), 0.0, RANK_MAX_DECADES), 0.0))
        for name in RANK_NONFINITE:
            first_nonfinite = np.minimum(
                first_nonfinite, _first_true(rows[:, :, STAT[name]] > 0, k))
    # np.lexsort: the last key is the primary one.
    return np.lexsort((index, -rise, first_nonfinite))


def _nanmedian0(x: np.ndarray) -> np.ndarray:
    """np.nanmedian(x, axis=0) (NaN for an all-NaN column), by one sort."""
    x = np.sort(x, axis=0)  # NaN sort last
    count = np.sum(~np.isnan(x), axis=0)
    col = np.arange(x.shape[1])
    lo = x[np.maximum(count - 1, 0) // 2, col]
    hi = x[count // 2, col]
    return np.where(count > 0, (lo + hi) / 2, np.nan)


def _first_true(mask: np.ndarray, none: int) -> np.ndarray:
    """[vars] the first row of `mask` ([steps, vars]) that is True, or `none`."""
    return np.where(mask.any(axis=0), mask.argmax(axis=0), none)


def select_rows(steps: np.ndarray, rows: np.ndarray, onset: int,
                pinned: List[int], limit: int = None) -> np.ndarray:
    """The indices of the variables to serve, ascending (the model's order).

    All of them, or at most `limit` (default MAX_ROWS): those in `pinned`
    (the implicated ones) and then the most moved (`rank_variables`).
    """
    limit = limit or MAX_ROWS
    n = rows.shape[1] if rows.ndim == 3 else 0
    if n <= limit:
        return np.arange(n)
    chosen = np.zeros(n, bool)
    pinned = list(dict.fromkeys(i for i in pinned if 0 <= i < n))[:limit]
    chosen[pinned] = True
    order = rank_variables(steps, rows, onset)
    chosen[order[~chosen[order]][:limit - len(pinned)]] = True
    return np.flatnonzero(chosen)


def _global_rows(run: RunData, anomaly: Dict, steps: np.ndarray) -> np.ndarray:
    """The global rows served around an anomaly (at most MAX_GLOBAL_ROWS).

    From `detail_before` steps before the onset to `detail_after` after the
    peak, widened to the evidence window's `steps`; those nearest the onset
    and the peak when there are more.
    """
    config = run.config
    lo, hi = anomaly["step"] - config.detail_before, anomaly["peak_step"] + config.detail_after
    if len(steps):
        lo, hi = min(lo, int(steps[0])), max(hi, int(steps[-1]))
    i0, i1 = np.searchsorted(run.steps, [lo, hi + 1])
    return i0 + _columns(run.steps[i0:i1], anomaly["step"], anomaly["peak_step"],
                         MAX_GLOBAL_ROWS)


def anomaly_detail(run: RunData, anomaly: Dict) -> Dict:
    """The /anomaly payload: the causes and the evidence around it."""
    cited = cited_steps(anomaly["causes"])
    steps, rows, resolution = evidence_window(
        run, anomaly["step"], anomaly["peak_step"], anomaly["end_step"], cited)
    n_vars = rows.shape[1] if rows.ndim == 3 else 0
    all_names = list(run.variables[:n_vars])
    all_names += [f"var{i}" for i in range(len(all_names), n_vars)]
    causes = [_titled(c) for c in anomaly["causes"]]
    # The variables the causes implicate (the top cause's first), by name:
    # a cause's `variable` (its `layer` is that variable's layer).
    first_index = {}
    for i, name in enumerate(all_names):
        first_index.setdefault(name, i)
    implicated = [first_index[c["variable"]] for c in causes
                  if isinstance(c.get("variable"), str) and c["variable"] in first_index]
    served = select_rows(steps, rows, anomaly["step"], implicated)
    variables = [all_names[i] for i in served]
    position = {int(v): j for j, v in enumerate(served)}
    stats = {}
    for name in ANOMALY_STATS:
        if rows.ndim == 3 and len(steps):
            # variables x steps, only the served rows
            sub = rows[:, served]
            stats[name] = encode_measured(sub[:, :, STAT[name]].T,
                                          stat_nan_mask(run, sub, name).T)
    rows_idx = _global_rows(run, anomaly, steps)
    row_real = global_real_nan(run, rows_idx)
    glob = {name: encode_measured(run.glob[rows_idx, GLOBAL[name]],
                                  global_nan_mask(run, name, row_real))
            for name in ANOMALY_GLOBAL}
    top_variable = causes[0].get("variable") if causes else None
    top_index = first_index.get(top_variable) if isinstance(top_variable, str) else None
    # The matrices and series are encoded already (encode_array): only the
    # small parts go through encode_json.
    return {
        "run": run.name,
        "anomaly": encode_json(dict(
            {k: anomaly[k] for k in ("kind", "step", "peak_step", "end_step", "severity",
                                     "baseline", "peak_value")},
            pattern=anomaly.get("pattern", ""),
            guard_skipped=int(anomaly.get("guard_skipped") or 0))),
        "causes": encode_json(causes),
        "evidence": {
            "resolution": resolution,
            "steps": steps.tolist(),
            "variables": variables,
            "variables_total": n_vars,
            "stats_every": run.config.stats_every,
            "cited_steps": cited,
            "variable_index": served.tolist(),
            "implicated": list(dict.fromkeys(position[i] for i in implicated if i in position)),
            "layers": [layer_of(v) for v in variables],
            "highlight": {
                "variable": top_variable,
                "index": position.get(top_index) if top_index is not None else None,
                "onset_step": anomaly["step"],
                "peak_step": anomaly["peak_step"],
            },
            "stats": stats,
        },
        "global": {"steps": run.steps[rows_idx].tolist(), "series": glob},
        "optimizer": encode_json(run.optimizer),
    }


def layers(run: RunData) -> Dict:
    """The /layers payload: every variable with its layer and run maxima."""
    info_vars = run.info.get("variables", []) if run.info else []
    out = []
    has_window = run.window.ndim == 4 and len(run.window_steps)
    agg = metadata.WINDOW_AGGREGATES.index("max")
    maxima_stats = ("grad_norm", "rms_ratio", "update_ratio")
    if has_window:
        # [vars, 3] run maxima; fmax skips NaN, so NaN only when none recorded
        maxima = np.fmax.reduce(
            run.window[:, :, [STAT[s] for s in maxima_stats], agg], axis=0)
        maxima = [[None if math.isnan(m) else encode_float(m) for m in row]
                  for row in maxima.tolist()]
    for i, name in enumerate(run.variables):
        shape = info_vars[i].get("shape") if i < len(info_vars) else None
        size = int(np.prod(shape)) if shape and all(d >= 0 for d in shape) else None
        entry = {"index": i, "name": name, "layer": layer_of(name),
                 "shape": shape, "size": size}
        if has_window and i < len(maxima):
            for stat, m in zip(maxima_stats, maxima[i]):
                entry[f"{stat}_max"] = m
        out.append(entry)
    return {"run": run.name, "variables": out,
            "layers": sorted({e["layer"] for e in out})}


# -- the runs overview ---------------------------------------------------------

# Worst first: a run with non-finite values, then one with anomalies, then
# a healthy one.
STATUS_RANK = {"nonfinite": 0, "anomalies": 1, "healthy": 2, "no data": 3, "pending": 4}


def run_summary(run: RunData, anomalies: List[Dict]) -> Dict:
    """One run's /overview entry: its status, first anomaly and counts.

    `status` is "nonfinite" when an anomaly is non-finite or a step counted
    non-finite values, "anomalies" when it has others, else "healthy".
    """
    loss = run.col("loss")
    nonfinite_steps = int(np.count_nonzero(
        (np.nan_to_num(run.col("nonfinite")) > 0) | ~np.isfinite(loss)))
    kinds = [a["kind"] for a in anomalies]
    if "nonfinite" in kinds or nonfinite_steps:
        status = "nonfinite"
    elif anomalies:
        status = "anomalies"
    else:
        status = "healthy"
    first = None
    if anomalies:
        a = anomalies[0]
        top = a["causes"][0] if a["causes"] else {}
        cause = top.get("cause", "unknown")
        first = {"kind": a["kind"], "pattern": a.get("pattern", ""), "step": a["step"],
                 "peak_step": a["peak_step"], "cause": cause,
                 "title": causes_lib.TITLE.get(cause, cause),
                 "confidence": top.get("confidence"), "layer": top.get("layer"),
                 "variable": top.get("variable")}
    top_causes = list(dict.fromkeys(
        (a["causes"][0]["cause"] if a["causes"] else "unknown") for a in anomalies))
    return encode_json({
        "run": run.name, "status": status, "steps": int(len(run.steps)),
        "first_step": int(run.steps[0]), "last_step": int(run.steps[-1]),
        "anomalies": len(anomalies), "nonfinite_steps": nonfinite_steps,
        "first": first, "causes": top_causes,
    })


def run_summary_empty(name: str, status: str = "no data") -> Dict:
    """The /overview entry of a run whose series hold no rows."""
    return {"run": name, "status": status, "steps": 0, "first_step": None,
            "last_step": None, "anomalies": 0, "nonfinite_steps": 0,
            "first": None, "causes": []}


def run_summary_pending(name: str) -> Dict:
    """The /overview entry of a run not analysed yet (a later request has it)."""
    return run_summary_empty(name, "pending")


def overview_order(entry: Dict):
    """The sort key of an /overview entry (worst first).

    The worst status first, then more anomalies, then the earlier first
    anomaly, then by name.
    """
    first = entry.get("first") or {}
    return (STATUS_RANK.get(entry["status"], len(STATUS_RANK)), -entry["anomalies"],
            first.get("step", float("inf")), entry["run"])


def overview(entries: List[Dict], pending: int = 0) -> Dict:
    """The /overview payload: every run's entry, worst first, with counts.

    `pending`: how many runs are still to be analysed (those new ones have
    status "pending"; changed ones keep their previous entry meanwhile).
    """
    entries = sorted(entries, key=overview_order)
    statuses = {s: 0 for s in ("nonfinite", "anomalies", "healthy")}
    by_cause = {}
    for e in entries:
        statuses[e["status"]] = statuses.get(e["status"], 0) + 1
        for c in e["causes"]:
            by_cause[c] = by_cause.get(c, 0) + 1
    return {"runs": entries, "total": len(entries), "pending": int(pending),
            "status_counts": statuses, "cause_counts": by_cause}
