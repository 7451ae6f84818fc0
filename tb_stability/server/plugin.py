"""The TensorBoard plugin: the Stability tab's backend (no TensorFlow).

`StabilityLoader` is the `tensorboard_plugins` entry point. Its `fix_flags`
makes TensorBoard keep every tb_stability point (`--samples_per_plugin
tb_stability=0` unless the user chose a value): what the writer stores is
already bounded, and a sampled-away row could be the spike.

`StabilityPlugin` reads only through `context.data_provider` (the Rust data
server by default, the Python one with `--load_fast=false`). Its routes
parse and check the request and raise `tensorboard.errors` (400/404); the
payloads are computed in `payloads` (pure NumPy) from the analysis,
which is cached per run and recomputed when the run's series change. The
routes are documented in `http_api.md`; `causes` serves the cause registry
(`analysis.causes`) that the tab draws from; `overview` summarises every
run (a sweep's landing view), each summary cached on its run's fingerprint.
"""

import collections
import json
import logging
import os
import re
import threading
import time

from tensorboard import errors, plugin_util
from tensorboard.backend import http_util
from tensorboard.data import provider as provider_lib
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_stability import metadata
from tb_stability.server import payloads

logger = logging.getLogger("tb_stability")

_STATIC_DIR = os.path.realpath(
    os.path.join(os.path.dirname(os.path.dirname(__file__)), "static"))
_STATIC_TYPES = {".js": "text/javascript", ".mjs": "text/javascript",
                 ".css": "text/css", ".json": "application/json",
                 ".svg": "image/svg+xml", ".png": "image/png",
                 ".txt": "text/plain", ".md": "text/plain", "": "text/plain"}
_STATIC_NAME = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_INT = re.compile(r"^-?[0-9]{1,18}$")
_CACHE_RUNS = 8
_UNLIMITED = 10**9  # "every point": no series holds this many
# GET overview analyses new or changed runs for about this long (at least
# one per request), then answers with the rest pending: a sweep's first
# overview fills in over a few requests instead of one long one.
OVERVIEW_BUDGET_S = 2.0


def _quote(text, limit=120):
    """A request value for an error message (text/plain, shortened)."""
    text = json.dumps(text, ensure_ascii=True)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text if len(text) <= limit else text[:limit] + '..."'


def _int_arg(request, name, *, default=None, lo=None, hi=None, optional=False):
    raw = request.args.get(name)
    if raw is None or raw == "":
        if optional:
            return None
        if default is None:
            raise errors.InvalidArgumentError(f"missing required argument {name!r}")
        return default
    if not _INT.match(raw):
        raise errors.InvalidArgumentError(
            f"argument {name!r} must be an integer, got {_quote(raw)}")
    value = int(raw)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise errors.InvalidArgumentError(
            f"argument {name!r} must be in [{lo}, {hi}], got {value}")
    return value


def _run_arg(request):
    run = request.args.get("run")
    if run is None:
        raise errors.InvalidArgumentError("missing required argument 'run'")
    return run


def _fingerprint(tags):
    """What identifies a run's data: each series' last step and wall time."""
    return tuple(sorted(
        (tag, int(ts.max_step), float(ts.max_wall_time)) for tag, ts in tags.items()))


class _RunState:
    """One run's cached data and analysis, valid for one fingerprint."""

    def __init__(self, fingerprint, run_data, anomalies):
        self.fingerprint = fingerprint
        self.run = run_data
        self.anomalies = anomalies
        self.timelines = collections.OrderedDict()  # width -> payload bytes
        self.lock = threading.Lock()


class StabilityPlugin(base_plugin.TBPlugin):
    """Serves the Stability tab: runs, overview, causes, timeline, anomaly detail, layers.

    Arguments:
      context: TensorBoard's `base_plugin.TBContext` (its data provider and
        sampling hints are used).
    """

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context):
        self._data_provider = context.data_provider
        hint = (context.sampling_hints or {}).get(metadata.PLUGIN_NAME, 0)
        # A hint of 0 (our fix_flags default) means "every point".
        self._downsample = int(hint) if hint and int(hint) > 0 else _UNLIMITED
        self._states = collections.OrderedDict()  # (eid, run) -> _RunState
        # (eid, run) -> (fingerprint, the run's /overview entry): small, one
        # per run of the logdir, so a sweep's overview is answered warm
        # from one listing of the data provider.
        self._summaries = {}
        self._lock = threading.Lock()

    def get_plugin_apps(self):
        """The routes (documented in `http_api.md`): path -> WSGI app."""
        return {
            "/static/*": self._serve_static,
            "/runs": self._serve_runs,
            "/causes": self._serve_causes,
            "/timeline": self._serve_timeline,
            "/anomaly": self._serve_anomaly,
            "/layers": self._serve_layers,
            "/overview": self._serve_overview,
        }

    def is_active(self):
        """Always False: TensorBoard's plugin listing asks the data provider."""
        return False  # the plugins listing asks the data provider instead

    def frontend_metadata(self):
        """The tab: `static/index.js` as an ES module, named "Stability"."""
        return base_plugin.FrontendMetadata(
            es_module_path="/static/index.js", tab_name="Stability"
        )

    # -- routes: parse, check, respond ---------------------------------

    @wrappers.Request.application
    def _serve_static(self, request):
        prefix = f"/data/plugin/{metadata.PLUGIN_NAME}/static/"
        path = request.path
        name = path[path.find(prefix) + len(prefix):] if prefix in path else ""
        if not _STATIC_NAME.match(name) or ".." in name.split("/"):
            raise errors.NotFoundError(f"no static file {_quote(name)}")
        full = os.path.realpath(os.path.join(_STATIC_DIR, name))
        if not full.startswith(_STATIC_DIR + os.sep) or not os.path.isfile(full):
            raise errors.NotFoundError(f"no static file {_quote(name)}")
        ext = os.path.splitext(full)[1].lower()
        content_type = _STATIC_TYPES.get(ext)
        if content_type is None:
            raise errors.NotFoundError(f"no static file {_quote(name)}")
        with open(full, "rb") as f:
            body = f.read()
        return http_util.Respond(request, body, content_type)

    @wrappers.Request.application
    def _serve_runs(self, request):
        ctx = plugin_util.context(request.environ)
        eid = plugin_util.experiment_id(request.environ)
        mapping = self._list(ctx, eid)
        runs = []
        for run in sorted(mapping):
            tags = mapping[run]
            if metadata.TAG_GLOBAL not in tags:
                continue
            ts = tags[metadata.TAG_GLOBAL]
            runs.append({"run": run, "last_step": int(ts.max_step),
                         "wall_time": float(ts.max_wall_time)})
        return self._json(request, {"runs": runs})

    @wrappers.Request.application
    def _serve_causes(self, request):
        return self._json(request, payloads.causes())

    @wrappers.Request.application
    def _serve_timeline(self, request):
        run = _run_arg(request)
        width = _int_arg(request, "width", default=payloads.DEFAULT_WIDTH,
                         lo=1, hi=payloads.MAX_WIDTH)
        first = _int_arg(request, "first", optional=True)
        last = _int_arg(request, "last", optional=True)
        if first is not None and last is not None and first > last:
            raise errors.InvalidArgumentError(
                f"argument 'first' ({first}) must not exceed 'last' ({last})")
        state = self._state(request, run)
        key = (width, first, last)
        with state.lock:
            body = state.timelines.get(key)
            if body is None:
                payload = payloads.timeline(state.run, state.anomalies, width,
                                               first=first, last=last)
                body = json.dumps(payload, allow_nan=False)
                state.timelines[key] = body
                while len(state.timelines) > 8:
                    state.timelines.popitem(last=False)
        return http_util.Respond(request, body, "application/json")

    @wrappers.Request.application
    def _serve_anomaly(self, request):
        run = _run_arg(request)
        step = _int_arg(request, "step")
        state = self._state(request, run)
        anomaly = payloads.find_anomaly(state.anomalies, step)
        if anomaly is None:
            raise errors.NotFoundError(
                f"run {_quote(run)} has no anomaly with onset or peak at step {step}")
        return self._json(request, payloads.anomaly_detail(state.run, anomaly))

    @wrappers.Request.application
    def _serve_layers(self, request):
        run = _run_arg(request)
        state = self._state(request, run)
        return self._json(request, payloads.layers(state.run))

    @wrappers.Request.application
    def _serve_overview(self, request):
        ctx = plugin_util.context(request.environ)
        eid = plugin_util.experiment_id(request.environ)
        mapping = self._list(ctx, eid)
        entries = []
        pending = 0
        deadline = time.monotonic() + OVERVIEW_BUDGET_S
        analysed = 0
        for run in sorted(mapping):
            tags = mapping[run]
            if metadata.TAG_GLOBAL not in tags:
                continue
            fingerprint = _fingerprint(tags)
            key = (eid, run)
            with self._lock:
                cached = self._summaries.get(key)
            if cached is None or cached[0] != fingerprint:
                if analysed and time.monotonic() > deadline:
                    # Out of time: the next request goes on (a changed run
                    # keeps its previous summary meanwhile).
                    pending += 1
                    entries.append(cached[1] if cached is not None
                                   else payloads.run_summary_pending(run))
                    continue
                entry = self._summary(ctx, eid, run, fingerprint, tags)
                analysed += 1
                cached = (fingerprint, entry)
                with self._lock:
                    self._summaries[key] = cached
            entries.append(cached[1])
        listed = {(eid, run) for run in mapping}
        with self._lock:  # runs gone from the logdir
            for key in [k for k in self._summaries if k[0] == eid and k not in listed]:
                del self._summaries[key]
        return self._json(request, payloads.overview(entries, pending))

    # -- implementation ------------------------------------------------

    def _summary(self, ctx, eid, run, fingerprint, tags):
        """The run's /overview entry, from its cached state if it is current."""
        with self._lock:
            state = self._states.get((eid, run))
        if state is None or state.fingerprint != fingerprint:
            try:
                state = self._load(ctx, eid, run, fingerprint, tags)
            except errors.NotFoundError:
                return payloads.run_summary_empty(run)
            except Exception:  # pylint: disable=broad-except
                # One unreadable run must not take the sweep's overview down.
                logger.exception("tb_stability: reading run %r failed", run)
                return payloads.run_summary_empty(run)
        try:
            return payloads.run_summary(state.run, state.anomalies)
        except Exception:  # pylint: disable=broad-except
            logger.exception("tb_stability: summarising run %r failed", run)
            return payloads.run_summary_empty(run)

    @staticmethod
    def _json(request, payload):
        body = json.dumps(payload, allow_nan=False)
        return http_util.Respond(request, body, "application/json")

    def _list(self, ctx, eid, run=None):
        run_tag_filter = provider_lib.RunTagFilter(runs=[run]) if run is not None else None
        return self._data_provider.list_tensors(
            ctx, experiment_id=eid, plugin_name=metadata.PLUGIN_NAME,
            run_tag_filter=run_tag_filter)

    def _state(self, request, run):
        """The run's cached state, reloaded if its series changed."""
        ctx = plugin_util.context(request.environ)
        eid = plugin_util.experiment_id(request.environ)
        tags = self._list(ctx, eid, run).get(run)
        if not tags or metadata.TAG_GLOBAL not in tags:
            raise errors.NotFoundError(f"no tb_stability data for run {_quote(run)}")
        fingerprint = _fingerprint(tags)
        key = (eid, run)
        with self._lock:
            state = self._states.get(key)
            if state is not None and state.fingerprint == fingerprint:
                self._states.move_to_end(key)
                return state
        state = self._load(ctx, eid, run, fingerprint, tags)
        try:
            summary = payloads.run_summary(state.run, state.anomalies)
        except Exception:  # pylint: disable=broad-except
            logger.exception("tb_stability: summarising run %r failed", run)
            summary = payloads.run_summary_empty(run)
        with self._lock:
            self._summaries[key] = (fingerprint, summary)
            self._states[key] = state
            self._states.move_to_end(key)
            while len(self._states) > _CACHE_RUNS:
                self._states.popitem(last=False)
        return state

    def _load(self, ctx, eid, run, fingerprint, listing):
        from tb_stability.analysis import report
        from tb_stability.events import provider

        run_data = provider.load_from_provider(
            self._data_provider, ctx, eid, run, self._downsample, listing=listing)
        if run_data is None or not len(run_data.steps):
            raise errors.NotFoundError(f"no tb_stability data for run {_quote(run)}")
        try:
            anomalies = report.analyze_run(run_data)
        except Exception:  # pylint: disable=broad-except
            # Data the analysis cannot handle must not take the tab down:
            # the timeline still shows what was recorded.
            logger.exception("tb_stability: analysis of run %r failed", run)
            anomalies = []
        return _RunState(fingerprint, run_data, anomalies)


class StabilityLoader(base_plugin.TBLoader):
    """Loads `StabilityPlugin`; keeps all tb_stability points by default."""

    def define_flags(self, parser):
        """Adds `--tb_stability_keep_sampling` to TensorBoard's flags."""
        group = parser.add_argument_group("tb_stability plugin")
        group.add_argument(
            "--tb_stability_keep_sampling",
            action="store_true",
            default=False,
            help="tb_stability: do not raise TensorBoard's sampling limit for "
            "tb_stability series (by default every point is kept).",
        )

    def fix_flags(self, flags):
        """Sets `samples_per_plugin tb_stability=0` unless the user chose a value."""
        if getattr(flags, "tb_stability_keep_sampling", False):
            return
        samples = getattr(flags, "samples_per_plugin", None)
        if samples is None:
            flags.samples_per_plugin = samples = {}
        if metadata.PLUGIN_NAME not in samples:
            samples[metadata.PLUGIN_NAME] = 0
            logger.info(
                "tb_stability: keeping every tb_stability point "
                "(samples_per_plugin %s=0)", metadata.PLUGIN_NAME
            )

    def load(self, context):
        """The plugin for this TensorBoard (`StabilityPlugin`)."""
        return StabilityPlugin(context)
