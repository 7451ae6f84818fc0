"""While it trains: the report's analysis over what the recorder holds.

The recorder's host side (`Recorder.flush`) feeds `LiveRun` with what it
writes (the run_info, every window's global rows and aggregates, the
detail rows) plus, at each analysis, what it has not written yet (the open
window, the detail rows still held back). `Alerts` runs the report's own
analysis (`analysis.report.analyze_run`, pure NumPy) on that `RunData` and
acts on each anomaly it has not seen before: a warning line through the
`tb_stability` logger, a stop, an exception, or a call of the user's
function. No TensorFlow here: the analysis runs on the host, on arrays.

When the analysis runs (`Alerts.due`):

* at once when a new stretch of non-finite steps begins (the recorder
  polls the global rows every `POLL_EVERY` steps, one read of one small
  ring); soon (within `ONSET_BUDGET` of the wall time) when the
  recorder's own recheck of the recent rows finds an onset it had not
  found before;
* otherwise as often as `BUDGET` of the training's wall time allows (the
  analysis's cost grows with the run: a short run is analysed every window,
  a long one less often), and once at the end.

Memory stays bounded (`LiveRun`): the first and the last `LIVE_ROWS` global
rows, and the first `HEAD` and last `TAIL` entries of the other series.
"""

import json
import logging
import time

import numpy as np

from tb_stability import metadata
from tb_stability.analysis import causes as causes_lib
from tb_stability.analysis import report as report_lib
from tb_stability.analysis.anomaly import KINDS
from tb_stability.analysis.detect import NONFINITE_GAP
from tb_stability.events.series import RunData

logger = logging.getLogger("tb_stability")

# What `on_anomaly` may be (besides None and a callable).
ACTIONS = ("warn", "stop", "raise")
# Steps between two host reads of the global rows looking for a new
# non-finite stretch (a non-finite step is reported within this many steps,
# plus the analysis).
POLL_EVERY = 8
# Global rows kept in memory: the first window's and the last ones.
LIVE_ROWS = 1 << 17
# Entries of each other series always kept from the run's start ...
HEAD = 64
# ... and the most recent ones kept after them.
TAIL = {
    metadata.TAG_LAYERS_DETAIL: 448,
    metadata.TAG_INPUT_GRAD_ROWS: 448,
    metadata.TAG_INPUTS_DETAIL: 448,
    metadata.TAG_LAYERS_WINDOW: 64,
    metadata.TAG_INPUTS_WINDOW: 64,
}
# Share of the training's wall time the routine analyses may take ...
BUDGET = 0.02
# ... and at most the analyses of new onsets the recheck of the recent rows
# found (a train of spikes: one analysis for several of them on a long run).
ONSET_BUDGET = 0.2
# Why the recorder asks for an analysis soon, most pressing last.
ONSET, NONFINITE = "onset", "nonfinite"
_PRESSING = {None: 0, ONSET: 1, NONFINITE: 2}
# A plateau is judged on the whole run: stuck until its end. While the run
# goes on, a flat stretch may still break (a saddle), so one is reported
# once it lasted this many steps and this share of the steps so far.
LIVE_PLATEAU_STEPS = 512
LIVE_PLATEAU_SHARE = 0.25
# Kinds that are one anomaly seen at two times: a rise still unrecovered
# (divergence) that later comes back down (spike).
_SAME = {"divergence": "excursion", "spike": "excursion"}


class TrainingInstability(RuntimeError):
    """Raised by `on_anomaly="raise"`; `anomaly` is the report's anomaly dict.

    Attributes:
      anomaly: the anomaly as `tb-stability report --json` gives it (kind,
        step, peak_step, end_step, severity, baseline, peak_value, causes
        with confidence, layer, lead_steps, evidence and fix).
    """

    def __init__(self, message, anomaly):
        super().__init__(message)
        self.anomaly = anomaly


def check_action(on_anomaly):
    """`on_anomaly` as given, after checking it is one of `ACTIONS`, a callable or None."""
    if on_anomaly is None or callable(on_anomaly) or on_anomaly in ACTIONS:
        return on_anomaly
    raise ValueError(f"on_anomaly must be one of {', '.join(map(repr, ACTIONS))}, "
                     f"a callable or None, got {on_anomaly!r}")


def check_kinds(kinds):
    """The anomaly kinds acted on, as a tuple (all of them for None)."""
    if kinds is None:
        return KINDS
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown anomaly kind(s) {', '.join(unknown)}; "
                         f"known: {', '.join(KINDS)}")
    return kinds


class LiveRun:
    """The run as written so far, in memory (bounded), as `RunData`'s input.

    Attributes:
      name: the run's name in the alerts (its directory).
      tags: {tag: [(step, value)]} in write order, as `RunData.from_tags`
        takes them.
    """

    def __init__(self, name):
        self.name = name
        self.tags = {}
        self._rows = 0  # global rows held

    def add(self, tag, step, value):
        """Keeps one written value (the writer's tap)."""
        if tag == metadata.TAG_RUN_INFO and isinstance(value, dict):
            value = json.dumps(value)
        elif isinstance(value, np.ndarray):
            value = value.copy()  # not a view that keeps a whole ring read alive
        items = self.tags.setdefault(tag, [])
        items.append((int(step), value))
        if tag == metadata.TAG_GLOBAL:
            self._rows += len(value)
            while self._rows > LIVE_ROWS and len(items) > 2:
                # The first window stays: the run's starting loss.
                self._rows -= len(items.pop(1)[1])
        elif tag in TAIL and len(items) > HEAD + TAIL[tag]:
            del items[HEAD]

    def run_data(self, pending=None):
        """The `RunData` of what was written plus `pending` ({tag: [(step, value)]})."""
        tags = {tag: list(items) for tag, items in self.tags.items()}
        for tag, items in (pending or {}).items():
            tags.setdefault(tag, []).extend(items)
        return RunData.from_tags(self.name, tags)


class Alerts:
    """Acts on each new anomaly of the live analysis, once.

    Args:
      on_anomaly: "warn" (a warning line each, the first of each kind and
        cause only), "stop" (the warning, then training stops after the
        step that saw it), "raise" (everything is written, then
        `TrainingInstability` is raised), a callable (called with the
        anomaly dict; what it raises propagates) or None (nothing is
        done: `StabilityCallback` and `Monitor` then run no live analysis;
        called directly, `found` still fills).
      kinds: the anomaly kinds acted on (default: all of `KINDS`).
      logdir: the run directory, named in the closing line.

    Attributes:
      found: every anomaly acted on, as the report's dicts, in order.
      stop_requested: set once "stop" saw an anomaly.
      error: the `TrainingInstability` to raise once everything is written.
      user_error: what the callable raised, while it propagates.
      seconds: the time spent in the analyses so far; analyses: how many.
    """

    def __init__(self, on_anomaly="warn", kinds=None, logdir=None):
        self.action = check_action(on_anomaly)
        self.kinds = check_kinds(kinds)
        self.logdir = logdir
        self.found = []
        self.stop_requested = False
        self.error = None
        self.user_error = None
        self.seconds = 0.0  # spent in the analyses so far
        self.analyses = 0
        self._known = []  # [kind, first step, last step] of anomalies seen
        self._said = {}  # (kind, cause) -> anomalies of it not said again
        self._cost = 0.0  # seconds the last analysis took
        self._last = None  # monotonic time it ended
        self._closed = False

    def due(self, reason=None, final=False):
        """Whether to analyse now, for `reason` (None, `ONSET`, `NONFINITE`).

        At once for a new non-finite stretch, at the end and the first
        time; for a new onset within `ONSET_BUDGET` of the time since the
        last analysis, else within `BUDGET`.
        """
        if reason == NONFINITE or final or self._last is None:
            return True
        budget = ONSET_BUDGET if reason == ONSET else BUDGET
        return time.monotonic() - self._last >= self._cost / budget

    def analyse(self, run, final=False, started=None):
        """Runs the report's analysis on `run` (a `RunData`) and acts on what is new.

        `final`: the run ended (a plateau is then judged as the report
        judges it, not only once settled). `started`: the `perf_counter`
        time when making `run` began (counted in the analysis's cost).
        """
        t0 = time.perf_counter() if started is None else started
        if run is None or not len(run.steps):
            return
        anomalies = report_lib.sanitize(report_lib.analyze_run(run))
        self._cost = time.perf_counter() - t0
        self._last = time.monotonic()
        self.seconds += self._cost
        self.analyses += 1
        first_step, last_step = int(run.steps[0]), int(run.steps[-1])
        matched = set()  # each anomaly seen before is matched once
        for a in anomalies:
            if a["kind"] == "plateau" and not final and \
                    not _plateau_settled(a, first_step, last_step):
                continue  # judged again at the next analysis
            if self._is_new(a, last_step, matched) and a["kind"] in self.kinds:
                self._act(a)

    def _is_new(self, a, last_step, matched):
        """Whether `a` was not seen by an earlier analysis (its span is remembered).

        An anomaly still growing at the end of the rows seen spans to
        their last step; seen again, its span is what the analysis says
        now (an onset may move as more of the run is known), and it
        matches one anomaly of each analysis (`matched`: indices taken), so
        a rise seen once as one divergence and later as a train of spikes
        is its first spike, then new ones.
        """
        kind = _SAME.get(a["kind"], a["kind"])
        first = a["step"]
        last = max(a["peak_step"], last_step if a["end_step"] is None else a["end_step"])
        for i, known in enumerate(self._known):
            if i not in matched and known[0] == kind and known[1] <= last and (
                    first < known[2] or first == known[1]):
                known[1], known[2] = first, last
                matched.add(i)
                return False
        matched.add(len(self._known))
        self._known.append([kind, first, last])
        return True

    def _act(self, a):
        self.found.append(a)
        action = self.action
        if action is None:
            return
        if callable(action):
            try:
                action(a)
            except Exception as e:
                self.user_error = e  # `Recorder.flush` lets it through
                raise
            return
        line = alert_line(a, self.logdir)
        # A rise first said as a divergence, then as spikes: one story.
        key = (_SAME.get(a["kind"], a["kind"]),
               a["causes"][0]["cause"] if a["causes"] else None)
        if action == "raise":
            if self.error is None:
                self.error = TrainingInstability(line, a)
            return
        if key in self._said:
            self._said[key] += 1
        else:
            self._said[key] = 0
            logger.warning("%s", line + ("; stopping after this step"
                                         if action == "stop" else ""))
        if action == "stop":
            self.stop_requested = True

    def close(self):
        """The closing line: what was found beyond the lines said (once)."""
        if self._closed:
            return
        self._closed = True
        unsaid = sum(self._said.values())
        if self.action not in ("warn", "stop") or not unsaid:
            return
        parts = []
        for (kind, cause), more in self._said.items():
            if more:
                kind = "spike or divergence" if kind == "excursion" else kind
                parts.append(f"{more} more {kind} ({cause})")
        where = f" {self.logdir}" if self.logdir else " LOGDIR"
        logger.warning("tb_stability: %d anomalies in all (%s not said above); "
                       "`tb-stability report%s` has each one's evidence",
                       len(self.found), ", ".join(parts), where)


def sooner(a, b):
    """The more pressing of two reasons to analyse (`ONSET`, `NONFINITE`, None)."""
    return a if _PRESSING[a] >= _PRESSING[b] else b


def _plateau_settled(a, first_step, last_step):
    """Whether plateau `a`, still flat at `last_step`, lasted long enough to say."""
    if a["end_step"] is not None:
        return True
    lasted = last_step - a["step"]
    return lasted >= max(LIVE_PLATEAU_STEPS, LIVE_PLATEAU_SHARE * (last_step - first_step))


def alert_line(a, logdir=None):
    """One line for anomaly dict `a`: step, what, top cause, layer, lead, fix."""
    top = a["causes"][0] if a["causes"] else None
    what = _what(a)
    skipped = a.get("guard_skipped") or 0
    if skipped:
        what += f" ({skipped} update{'s' if skipped != 1 else ''} skipped by the guard)"
    if top is None:
        return f"tb_stability: step {a['step']}: {what}"
    cause = top["cause"]
    if cause == causes_lib.UNKNOWN:
        return (f"tb_stability: step {a['step']}: {what} \u2014 cause unknown: no "
                f"known mechanism fits the evidence recorded; `tb-stability report "
                f"{logdir or 'LOGDIR'}` has it")
    text = (f"tb_stability: step {a['step']}: {what} \u2014 {cause} "
            f"({top['confidence']:.2f}): {causes_lib.TITLE.get(cause, cause)}")
    if top.get("layer"):
        text += f"; layer {top['layer']}"
    if top.get("lead_steps") is not None:
        text += f", led by {top['lead_steps']} steps"
    if top.get("fix"):
        text += f"; fix: {top['fix'].rstrip('.')}"
    return text


def _what(a):
    """The anomaly in a few words, with its size."""
    kind, base, peak = a["kind"], a.get("baseline"), a.get("peak_value")
    ratio = None
    if base and peak and base > 0 and peak > 0:
        ratio = peak / base
    if kind == "nonfinite":
        steps = int(round(a.get("severity") or 1))
        where = "loss" if a.get("pattern") == "loss" else \
            "gradients, weights or moments (the loss still finite)"
        so_far = " so far" if a.get("end_step") is None else ""
        return f"non-finite {where}, {steps} step{'s' if steps != 1 else ''}{so_far}"
    if kind in ("spike", "divergence") and ratio is not None:
        so_far = ", not back down so far" if kind == "divergence" else (
            ", coming back down" if a.get("pattern") == "recovering" else "")
        return (f"{kind} x{ratio:.2g} (loss {base:.3g} -> {peak:.3g} at step "
                f"{a['peak_step']}{so_far})")
    if kind == "plateau":
        level = f" at loss {base:.4g}" if base else ""
        pattern = f" ({a['pattern']})" if a.get("pattern") else ""
        return f"plateau{pattern}{level}"
    if kind == "instability" and ratio is not None:
        return f"instability: the loss keeps returning up to x{ratio:.2g} its best"
    return kind


def pending_tags(window, rows, detail_rows):
    """{tag: [(step, value)]} of what is held but not written yet.

    Args:
      window: the open `writer.Window` (its global rows and aggregates).
      rows: a `RingRows` read of the rings, or None.
      detail_rows: row counts whose detail is due but not written.
    """
    out = {}
    if window.rows:
        step = window.last_step
        out[metadata.TAG_GLOBAL] = [(step, window.global_table())]
        if window.n:
            out[metadata.TAG_LAYERS_WINDOW] = [(step, window.layer_aggregates())]
            inputs = window.input_aggregates()
            if inputs is not None:
                out[metadata.TAG_INPUTS_WINDOW] = [(step, inputs)]
    if rows is not None and detail_rows:
        capacity = len(rows.steps_all)
        for r in detail_rows:
            i = r % capacity
            step = int(rows.steps_all[i])
            out.setdefault(metadata.TAG_LAYERS_DETAIL, []).append((step, rows.layers_all[i]))
            if rows.input_rows_all is not None:
                out.setdefault(metadata.TAG_INPUT_GRAD_ROWS, []).append(
                    (step, rows.input_rows_all[i]))
            if rows.inputs_all is not None:
                out.setdefault(metadata.TAG_INPUTS_DETAIL, []).append(
                    (step, rows.inputs_all[i]))
    return out


class NonfiniteWatch:
    """Finds the first row of each new stretch of non-finite steps.

    A stretch is new when more than `NONFINITE_GAP` rows passed since the
    last non-finite row seen (the analysis's own rule for one storm). Rows a
    LossScaleOptimizer skips (finite loss under a loss scale) are its own
    business, left to the analysis.
    """

    def __init__(self):
        self._last_bad = None

    def new_stretch(self, start, global_rows):
        """Whether rows `start, start + 1, ...` begin a new non-finite stretch."""
        g = metadata.GLOBAL
        rows = np.asarray(global_rows, np.float64)
        if not len(rows):
            return False
        loss, count, scale = rows[:, g["loss"]], rows[:, g["nonfinite"]], rows[:, g["loss_scale"]]
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(loss) | ((np.nan_to_num(count) > 0) & ~np.isfinite(scale))
        idx = np.flatnonzero(bad) + start
        if not len(idx):
            return False
        gaps = np.diff(np.concatenate([[-10 * NONFINITE_GAP if self._last_bad is None
                                        else self._last_bad], idx]))
        self._last_bad = int(idx[-1])
        return bool(np.any(gaps > NONFINITE_GAP))
