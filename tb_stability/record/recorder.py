"""Recording: one step's row in the graph, the writing on the host.

The work is split in two so that it runs under XLA and never costs a host
synchronisation per step:

* `Recorder.push` runs inside the training step (eager, `tf.function`, XLA,
  replica context). It computes the step's statistics (`stats`,
  `global_stats`), runs the online spike detector (`detector`) and stores
  one row per step into ring buffers held in variables (`rings`).
* `Recorder.flush` runs on the host, outside any compiled function, every
  `window` steps or so. It reads the rings once and writes (`writer`) every
  step's global row, one per-variable aggregate per window, and the full
  per-variable rows of the steps around whatever the detector flagged (and
  of the first steps). It also runs the offline analysis over the recent
  rows (`recheck`) and keeps the rows around the onsets and peaks it finds
  that the detector did not flag. Summaries are written there, never
  inside the compiled step. A recorder that resumes a run first repeats
  the rows a restart would make TensorBoard drop (`resume`).

The format written is described in FORMAT.md.
"""

import threading
import time
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tb_stability import metadata
from tb_stability.config import RecorderConfig
from tb_stability.record import keras_internals, live, recheck
from tb_stability.record.detector import Detector
from tb_stability.record.global_stats import (
    DATA_SUMMED,
    GLOBAL_FROM_STATS,
    GLOBAL_LIGHT,
    data_columns,
    data_partials,
    feature_tensor,
    feature_width,
    global_from_stats,
    input_stats,
)
from tb_stability.record.guard import Guard
from tb_stability.record.resume import rows_before_resume
from tb_stability.record.rings import Rings, ring_capacity
from tb_stability.record.runtime import (
    gated_cond,
    is_chief,
    logger,
    replica_count,
    warn_once,
)
from tb_stability.record.stats import VariableStats
from tb_stability.record.writer import DetailSelector, RunWriter, Window


class _StepStats(NamedTuple):
    """One step's statistics, as `Recorder._statistics` computes them.

    Attributes:
      computed: bool, whether they were computed in full this step.
      stats: float32 [V, S], the per-variable rows.
      input_rows: float32 [F], the first kernel's gradient row norms.
      medians: float32 [V], the medians carried to the next step.
      glob: {name: float32 scalar} for the names of `GLOBAL_FROM_STATS`.
    """

    computed: tf.Tensor
    stats: tf.Tensor
    input_rows: tf.Tensor
    medians: tf.Tensor
    glob: dict


class Recorder:
    """Records stability evidence for one optimizer and variable list.

    Attributes:
      config: the `RecorderConfig` in use.
      logdir: the run directory, or None when this process writes nothing.
      adapter: the `keras_internals.OptimizerAdapter` of the optimizer.
      variables: the recorded variables, in the order of the stats rows.
      names: their paths (names in `run_info`).
      input_features: input features recorded, or None.
      model_info: the run_info "model" record (output layer, loss, dtypes),
        or None for the dtypes of the variables alone.
      variable_stats: the `VariableStats` computing the per-variable rows.
      rings: the `Rings` holding the rows not yet written.
      detector: the online `Detector`.

    Args:
      logdir: directory of the run's event file; None to write nothing.
        Under a multi-worker strategy only the chief writes (`is_chief`).
      optimizer: the Keras optimizer (possibly a `LossScaleOptimizer`).
      variables: the trainable variables, in a fixed order.
      config: a `RecorderConfig` (default: its defaults).
      steps_per_call: steps that may run between two host calls (Keras's
        `steps_per_execution`); sizes the rings.
      input_features: number of input features when inputs are recorded.
      initial_step: the step of the first row when steps are not given.
      model_info: the run_info "model" record, if known (`model_info`).
      guard: the update guard (`guard.Guard`) whose decisions are recorded,
        if made before the recorder (Monitor's); default: one made here
        when `config` sets a skip option.
      **options: `RecorderConfig` fields overriding `config`'s.
    """

    def __init__(self, logdir, optimizer, variables, config=None, *,
                 steps_per_call=1, input_features=None, initial_step=0,
                 model_info=None, guard=None, **options):
        config = (config or RecorderConfig()).replace(**options)
        if logdir is not None and not is_chief():
            # Every worker computes the statistics (the all-reduces need all
            # of them); only the chief writes.
            logger.info("tb_stability: not the chief worker; writing nothing")
            logdir = None
        self.config = config
        self.logdir = logdir
        self.adapter = keras_internals.OptimizerAdapter(optimizer)
        self.variables = list(variables)
        self.names = [getattr(v, "path", None) or v.name for v in self.variables]
        self.input_features = input_features
        self.model_info = model_info
        self.variable_stats = VariableStats(
            self.adapter, self.variables,
            sample_size=0 if config.full_detail else None)
        self._var_index = _variable_index(self.variables)
        self.rings = Rings(
            ring_capacity(config.window, steps_per_call), len(self.variables),
            self.variable_stats.input_rows, input_features, int(initial_step))
        self.detector = Detector(config)
        # The update guard, when a skip option is set (`guard`).
        if guard is None and config.guard_on:
            guard = Guard(config)
        self.guard = guard
        # Host side.
        self._out = RunWriter(logdir)
        self._window = Window()
        self._detail = DetailSelector(config)
        # The offline analysis over the recent rows: only where detail rows
        # are written and not all of them are anyway.
        self._recheck = None
        if logdir is not None and not config.full_detail:
            self._recheck = recheck.Recheck(self.capacity, config.window,
                                            classes=_output_width(self.variables))
        self._seen = 0  # rows processed by flush
        self._data_bad = False  # whether the last row processed had bad data
        self._last_write = time.monotonic()
        self._info_written = False
        self._resume_checked = False
        self._broken = False
        # The live analysis (`watch`): what was written, kept in memory.
        self.alerts = None
        self._live = None
        self._polled = 0  # the row count at the last poll
        self._poll_watch = live.NonfiniteWatch()
        self._flush_watch = live.NonfiniteWatch()
        self._traced_push = None  # push's nested function (`push`)
        self._recheck_rows = set()  # onset rows the recheck found so far
        self._urgent = None  # why to analyse soon: live.NONFINITE or live.ONSET
        self._live_off = False  # the live analysis failed: not again
        # flush() may be called from Keras's callback threads.
        self._flush_lock = threading.Lock()
        if self.adapter.is_adam is False:
            warn_once(
                ("no-adam", self.adapter.name),
                "tb_stability: %s has no Adam moments; recording gradients, "
                "weights and update ratios only.",
                self.adapter.name,
            )

    @property
    def capacity(self):
        """Rows each ring holds."""
        return self.rings.capacity

    # In-graph --------------------------------------------------------------

    def snapshot(self, variables):
        """The weights before an update, as `push(weights_before=)` wants them.

        Only the sampled entries of large tensors, in the order of
        `variables`; reorder with `order_grads`.
        """
        out = []
        for var in variables:
            i = self._var_index.get(id(var))
            value = tf.convert_to_tensor(var)
            out.append(value if i is None else self.variable_stats.sample(i, value))
        return out

    def order_grads(self, grads, variables):
        """Reorders (grads, variables) into this recorder's variable order."""
        ordered = [None] * len(self.variables)
        for g, v in zip(grads, variables):
            i = self._var_index.get(id(v))
            if i is not None:
                ordered[i] = g
        return ordered

    # Written for the graph as it is (explicit `tf.cond`s): inside a user's
    # `tf.function`, AutoGraph converting this code and everything it calls
    # cost tens of seconds of tracing on the first step.
    @tf.autograph.experimental.do_not_convert
    def push(self, loss, grads, **kwargs):
        """Records one training step (runs in the graph of the step).

        The arguments are `_push`'s. Inside a `tf.function` (outside a
        distribution strategy) the step's work is traced once into a nested
        function and reused: TensorFlow traces a step that creates variables
        (Keras's first `fit` step builds the optimizer) twice, and the
        recorder's graph is the larger part of what that costs. The nested
        call is inlined when the step runs, so running it costs the same.
        """
        if tf.executing_eagerly() or tf.distribute.has_strategy():
            # (A nested tf.function cannot hold a strategy's merge_call.)
            return self._push(loss, grads, **kwargs)
        if self._traced_push is None:
            self._traced_push = tf.function(self._push, autograph=False,
                                            reduce_retracing=True)
        # Python numbers (a step counted in Python) as tensors: as values
        # they would be part of the trace's key, one trace per number.
        loss, kwargs = _as_tensor(loss), {k: _as_tensor(v) for k, v in kwargs.items()}
        return self._traced_push(loss, grads, **kwargs)

    @tf.autograph.experimental.do_not_convert
    def _push(self, loss, grads, *, weights_before=None, batch_size=None,
              inputs=None, targets=None, predictions=None, step=None,
              loss_scale=None, grad_sq=None, guard_skip=None):
        """Records one training step (in the graph of the step).

        Args:
          loss: scalar loss of this step (as a tensor); NaN if unknown.
          grads: one gradient per recorder variable (None allowed), already
            all-reduced when training is distributed.
          weights_before: optional weight values before the update.
          batch_size: optional scalar.
          inputs: optional input batch (features on the last axis; a nest:
            its first float tensor per feature, non-finite entries counted
            over all of them).
          targets: optional targets of the step (the first tensor of a nest).
          predictions: optional model outputs of the step (the first tensor).
          Under a distribution strategy the data columns are reduced over
          the replicas; the per-feature input statistics are the first
          replica's.
          step: optional explicit step; else the recorder's own counter.
          loss_scale: the loss scale this step's loss was multiplied by;
            defaults to the optimizer's current dynamic scale, if any.
          grad_sq: optional float32 [V], the gradients' sums of squares in
            the recorder's order, when the update guard computed them.
          guard_skip: optional float32 scalar, the guard's decision
            (`metadata.GUARD_*`); NaN (guard off) without it. On a skipped
            step the update ratios are 0.

        Returns:
          The row count after this step (int64 tensor).
        """
        count = self.rings.count.read_value()
        loss = tf.reshape(tf.cast(loss, tf.float32), [])
        # Every step: the gradients' exact norms and the detector's outlier
        # tests on the loss and the global gradient norm.
        if grad_sq is None:
            grad_sq = self.variable_stats.grad_sums(grads)
        grad_norm = tf.sqrt(tf.reduce_sum(grad_sq))
        state = self.detector.read()
        outliers = self.detector.outliers(state, loss, grad_norm)
        full_until = self.rings.full_until.read_value()
        hot = tf.logical_or(count < full_until, outliers.precursor)
        computed = self._statistics(count, loss, grad_norm, grads, grad_sq,
                                    weights_before, hot)
        if guard_skip is not None:
            guard_skip = tf.reshape(tf.cast(guard_skip, tf.float32), [])
            computed = _no_update_when_skipped(computed, guard_skip)
        loss_bad = tf.cast(tf.logical_not(tf.math.is_finite(loss)), tf.float32)
        nonfinite = computed.glob["nonfinite"] + loss_bad
        flags, new_state, rms_high = self.detector.detect(
            state, loss, outliers, computed.glob["rms_ratio_max"], nonfinite,
            computed.computed)
        # An anomaly (or its first sign) keeps the next steps computed.
        extend = tf.logical_or(tf.logical_or(flags > 0, outliers.precursor),
                               rms_high)
        new_until = tf.where(
            extend,
            tf.maximum(full_until, count + 1 + self.config.detail_after),
            full_until)
        row = self._global_row(loss, grad_norm, batch_size, loss_scale,
                               computed.glob, nonfinite, flags,
                               _data_row(inputs, targets, predictions),
                               guard_skip)
        if step is None:
            step = self.rings.next_step.read_value()
        else:
            step = tf.cast(tf.reshape(step, []), tf.int64)
        return self.rings.put(
            count, step=step, global_row=row, stats=computed.stats,
            input_rows=computed.input_rows,
            input_stats=self._input_stats(inputs), medians=computed.medians,
            full_until=new_until, also=[self.detector.assign(new_state)])

    def _statistics(self, count, loss, grad_norm, grads, grad_sq,
                    weights_before, hot):
        """This step's `_StepStats`: computed in full, or light.

        In full during the first steps, on `hot` steps (a precursor, or
        until `detail_after` steps after the last flagged one), every
        `stats_every` steps and on non-finite steps; light (gradient norms
        only) otherwise. The median is computed every `median_every` steps
        and on the first and hot steps.
        """
        config, vstats = self.config, self.variable_stats
        first = count < config.first_steps
        median_carry = self.rings.median.read_value()
        F = vstats.input_rows

        def full(grads, weights_before, grad_sq, median_carry, count, first,
                 hot):
            with_median = tf.logical_or(
                tf.equal(count % config.effective_median_every, 0),
                tf.logical_or(first, hot))
            stats, rows, medians = vstats.compute(
                grads, weights_before=weights_before, with_median=with_median,
                median_carry=median_carry, grad_sq=grad_sq)
            if rows is None:
                rows = tf.fill([F], float("nan"))
            return stats, rows, medians, global_from_stats(stats, vstats.rms_mask)

        def light():
            return (vstats.light(grads, grad_sq),
                    tf.constant(np.full([F], np.nan, np.float32)),
                    median_carry, tf.constant(GLOBAL_LIGHT))

        args = (grads, weights_before, grad_sq, median_carry, count, first, hot)
        stats_every = config.effective_stats_every
        if stats_every == 1:
            computed = tf.constant(True)
            stats, input_rows, medians, glob = full(*args)
        else:
            finite = tf.logical_and(tf.math.is_finite(loss),
                                    tf.math.is_finite(grad_norm))
            computed = tf.logical_or(
                tf.logical_or(first, hot),
                tf.logical_or(tf.equal(count % stats_every, 0),
                              tf.logical_not(finite)))
            stats, input_rows, medians, glob = gated_cond(
                computed, full, light, args)
        return _StepStats(computed, stats, input_rows, medians,
                          dict(zip(GLOBAL_FROM_STATS, tf.unstack(glob))))

    def _global_row(self, loss, grad_norm, batch_size, loss_scale, glob,
                    nonfinite, flags, data, guard_skip=None):
        """The step's global row, float32 [len(GLOBAL_COLUMNS)].

        `data` is the {column: value} of `DATA_COLUMNS`; `guard_skip` the
        guard's decision (NaN without).
        """
        nan = tf.constant(float("nan"))
        scale = self.adapter.loss_scale() if loss_scale is None else loss_scale
        values = {
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": self.adapter.learning_rate(),
            "batch_size": nan
            if batch_size is None
            else tf.cast(tf.reshape(batch_size, []), tf.float32),
            "rms_ratio_max": glob["rms_ratio_max"],
            "nonfinite": nonfinite,
            "update_ratio": glob["update_ratio"],
            "weight_norm": glob["weight_norm"],
            "loss_scale": nan if scale is None else tf.reshape(scale, []),
            "flags": flags,
            "eff_step_max": glob["eff_step_max"],
            "guard_skip": nan if guard_skip is None else guard_skip,
            **data,
        }
        return tf.stack([values[name] for name in metadata.GLOBAL_COLUMNS])

    def _input_stats(self, inputs):
        """The step's input statistics for the inputs ring (None without)."""
        if self.rings.inputs is None:
            return None
        x = feature_tensor(inputs)
        width = feature_width(x)
        if x is None or width != self.input_features:
            if x is not None:
                warn_once(
                    ("input-width", width, self.input_features),
                    "tb_stability: the inputs have %s features on their last "
                    "axis, the recorder was made for %s; per-feature input "
                    "statistics are not recorded.", width, self.input_features)
            return tf.fill([self.input_features, len(metadata.INPUT_COLUMNS)],
                           float("nan"))
        return input_stats(x)

    # Host ------------------------------------------------------------------

    def run_info(self, extra=None):
        """The JSON-able description written once as `run_info`.

        Args:
          extra: a dict merged into it, if given.
        """
        input_index = self.variable_stats.input_index
        optimizer = self.adapter.describe()
        optimizer["variable_dtype"] = _dtype_of(self.variables)
        model = dict(self.model_info) if self.model_info else {
            "output": None, "loss": None}
        dtypes = dict(model.get("dtypes") or {})
        dtypes.setdefault("variable", optimizer["variable_dtype"])
        dtypes.setdefault("compute", None)
        model["dtypes"] = dtypes
        info = {
            "format_version": metadata.CONTENT_VERSION,
            "optimizer": optimizer,
            "variables": [
                {"name": n, "shape": [d if d is not None else -1 for d in v.shape]}
                for n, v in zip(self.names, self.variables)
            ],
            "stat_columns": list(metadata.STAT_COLUMNS),
            "global_columns": list(metadata.GLOBAL_COLUMNS),
            "window_aggregates": list(metadata.WINDOW_AGGREGATES),
            "input_columns": list(metadata.INPUT_COLUMNS),
            **self.config.to_run_info(),
            "input_kernel": None if input_index is None else self.names[input_index],
            "input_features": self.input_features,
            "model": model,
        }
        if extra:
            info.update(extra)
        return info

    def watch(self, alerts):
        """Runs the live analysis for `alerts` (a `live.Alerts`) from now on.

        Only where this process writes (the chief): the analysis reads what
        is written, kept in memory (`live.LiveRun`). Call it before the
        first flush.
        """
        if self.logdir is None or self._live_off or self.alerts is alerts:
            return
        self.alerts = alerts
        if self._live is None:
            self._live = live.LiveRun(str(self.logdir))
            self._out.tap = self._live.add
            if self._info_written:
                self._live.add(metadata.TAG_RUN_INFO, 0, self.run_info())

    def poll(self, force=False):
        """Flushes now when a new stretch of non-finite steps began (host call).

        One read of the row counter and, every `live.POLL_EVERY` rows (or
        now, `force`), of the global rows ring (not the per-variable
        rings): a non-finite step is analysed and reported within that many
        steps instead of at the end of its window. Does nothing without
        `watch`.
        """
        if self.alerts is None or self._broken:
            return
        count = int(self.rings.count.numpy())
        if count - self._polled < (1 if force else live.POLL_EVERY):
            return
        start = max(self._polled, self._seen, count - self.capacity)
        self._polled = count
        if start >= count:
            return
        index = np.arange(start, count) % self.capacity
        rows = self.rings.global_rows.numpy()[index]
        if self._poll_watch.new_stretch(start, rows):
            self.flush(urgent=live.NONFINITE)

    def due(self):
        """Whether a (non-final) `flush` has a window to write now (host call).

        One read of the row counter: a window of rows waiting, or rows
        older than `flush_secs` since the last write. A host loop that
        calls `flush` after every step (XLA, a distribution strategy) asks
        this first, so that the rings are read once per window, not once
        per step.
        """
        pending = int(self.rings.count.numpy()) - self._seen
        return pending >= self.config.window or (
            pending > 0
            and time.monotonic() - self._last_write > self.config.flush_secs)

    def flush(self, final=False, extra_info=None, urgent=None):
        """Writes what the rings hold (host call, outside compiled code).

        Never raises, except what the live analysis's action raises
        (`on_anomaly="raise"`: `live.TrainingInstability`, after everything
        recorded was written; a user's callable): an error of the recording
        is logged once and recording stops.

        Args:
          final: write the open window even if it is short (end of training).
          extra_info: dict merged into `run_info` when it is first written.
          urgent: `live.NONFINITE` to run the live analysis now (a new
            non-finite stretch).
        """
        with self._flush_lock:
            if self._broken:
                return
            self._urgent = live.sooner(self._urgent, urgent)
            try:
                self._flush(final, extra_info)
                error = self._take_alert_error()
            except live.TrainingInstability:
                raise
            except Exception as e:  # pylint: disable=broad-except
                if self.alerts is not None and self.alerts.user_error is e:
                    self.alerts.user_error = None
                    raise
                self._broken = True
                logger.warning(
                    "tb_stability: writing failed, recording stops (training "
                    "goes on): %s: %s", type(e).__name__, e, exc_info=True
                )
                return
        if error is not None:
            raise error

    def _take_alert_error(self):
        """The `TrainingInstability` to raise, everything written first; or None."""
        alerts = self.alerts
        if alerts is None or alerts.error is None:
            return None
        error, alerts.error = alerts.error, None
        if self._window.n > 0:
            self._out.write_window(self._window)
            self._window.reset()
            self._last_write = time.monotonic()
        self._out.flush()
        return error

    def _flush(self, final, extra_info):
        """`flush`'s body: process new rows, write the window when due."""
        count = int(self.rings.count.numpy())
        rows = None
        if count > self._seen:
            start = max(self._seen, count - self.capacity)
            if start > self._seen:
                warn_once(
                    "lost-rows",
                    "tb_stability: %d steps were overwritten before they could "
                    "be written; flush more often (a Monitor under "
                    "jit_compile needs monitor.flush() after each call).",
                    start - self._seen,
                )
            rows = self._process(start, count, extra_info, final)
            self._seen = count
        elif final and count > 0 and self._recheck is not None:
            # The rows held back for the analysis: their detail, if any.
            rows = self.rings.read(count, count)
            self._write_detail(rows, count, final)
        window = self._window
        due = final or window.n >= self.config.window or (
            window.n > 0
            and time.monotonic() - self._last_write > self.config.flush_secs
        )
        if due and window.n > 0:
            self._out.write_window(window)
            window.reset()
            self._last_write = time.monotonic()
        if final:
            self._out.flush()
        if self.alerts is not None:
            self._analyse_live(rows, count, final)

    def _analyse_live(self, rows, count, final):
        """The live analysis, when due, on what is written and what is held.

        Due at once on a new non-finite stretch, soon on a new onset of the
        recheck, else as the time budget allows (`live.Alerts.due`). An
        error of the analysis switches it off (logged once); what an
        action raises is left to `flush`.
        """
        alerts = self.alerts
        if count == 0 or not alerts.due(self._urgent, final):
            return  # a reason to analyse soon stays for the next flush
        self._urgent = None
        try:
            started = time.perf_counter()
            if rows is None:
                rows = self.rings.read(count, count)
            held = [r for r in self._detail.wanted(count, self.capacity)
                    if r > self._detail.written]
            run = self._live.run_data(live.pending_tags(self._window, rows, held))
            alerts.analyse(run, final, started)
            if final:
                alerts.close()
        except Exception as e:  # pylint: disable=broad-except
            if e is alerts.user_error:
                raise  # the on_anomaly callable's: `flush` lets it through
            self.alerts = None
            self._out.tap = None
            self._live = None
            self._live_off = True
            logger.warning(
                "tb_stability: the live analysis failed and is switched off "
                "(recording goes on): %s: %s", type(e).__name__, e, exc_info=True)

    def _process(self, start, count, extra_info, final=False):
        """Reads rows [start, count): window rows, flags, detail written."""
        rows = self.rings.read(start, count)
        writer = self._out.get()
        if writer is not None and not self._info_written:
            self._out.write_run_info(self.run_info(extra_info),
                                     step=int(rows.steps[0]))
            self._info_written = True
        marks, self._data_bad = _detail_marks(rows.global_rows, self._data_bad)
        if self.guard is not None:
            self.guard.warn_let_through(rows.steps, rows.global_rows)
        self._detail.note_flags(start, marks)
        if not self._resume_checked:
            self._resume_checked = True
            self._window.repeat_rows(
                rows_before_resume(self.logdir, int(rows.steps[0])))
        self._window.add(
            rows.steps, rows.global_rows, rows.layers_all[rows.index],
            None if rows.inputs_all is None else rows.inputs_all[rows.index])
        if self._recheck is not None:
            self._recheck.add(start, rows.steps, rows.global_rows)
        if self.alerts is not None and self._flush_watch.new_stretch(
                start, rows.global_rows):
            self._urgent = live.NONFINITE
        self._write_detail(rows, count, final)
        return rows

    def _write_detail(self, rows, count, final):
        """Writes the detail rows due, up to row `count`."""
        if self._recheck is not None and self._recheck.due(final):
            found = self._rechecked(final)
            if self.alerts is not None and not set(found) <= self._recheck_rows:
                # An onset or peak not found before.
                self._urgent = live.sooner(self._urgent, live.ONSET)
                self._recheck_rows.update(found)
            self._detail.note_rows(found, count, self.capacity)
        # Detail rows: ascending, each written once, only while in the ring;
        # the last ones wait for the next analysis.
        hold = 0 if final or self._recheck is None else self._recheck.hold
        wanted = self._detail.wanted(count, self.capacity, hold)
        if self._out.get() is None:
            if wanted:
                self._detail.written = wanted[-1]
            return
        self._out.write_detail(rows, wanted, self._detail)

    def _rechecked(self, final):
        """The rows `Recheck` finds; [] (and no more analysis) on an error.

        The analysis must never stop the recording: an error is logged once
        and the rows the detector flags are still written.
        """
        try:
            return self._recheck.rows(final)
        except Exception as e:  # pylint: disable=broad-except
            self._recheck = None
            logger.warning(
                "tb_stability: the offline analysis of the recent steps "
                "failed and is switched off (recording goes on): %s: %s",
                type(e).__name__, e, exc_info=True)
            return []

    def close(self):
        """Writes everything left and closes the event file."""
        try:
            self.flush(final=True)
        finally:
            self._out.close()


def _no_update_when_skipped(computed, guard_skip):
    """`computed` with zero update ratios where the guard skipped the update.

    The ratio derived from Adam's moments would show the previous step's
    update; nothing moved. NaN (not measured) stays NaN.
    """
    skipped = tf.equal(guard_skip, float(metadata.GUARD_SKIPPED))
    col = metadata.STAT["update_ratio"]
    stats = computed.stats
    mask = tf.logical_and(
        skipped,
        tf.logical_and(tf.equal(tf.range(tf.shape(stats)[1]), col)[None, :],
                       tf.logical_not(tf.math.is_nan(stats))))
    glob = dict(computed.glob)
    ratio = glob["update_ratio"]
    glob["update_ratio"] = tf.where(
        tf.logical_and(skipped, tf.logical_not(tf.math.is_nan(ratio))),
        0.0, ratio)
    return computed._replace(stats=tf.where(mask, 0.0, stats), glob=glob)


def _as_tensor(value):
    """A Python or NumPy number as a tensor; anything else as it is."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return tf.convert_to_tensor(value)
    return value


def _data_row(inputs, targets, predictions):
    """The step's `DATA_COLUMNS` ({name: float32 scalar}), in the graph.

    Counts and sums are added over the replicas under a distribution
    strategy, minima and maxima gathered (a replica's own values if the
    strategy cannot gather).
    """
    partials = data_partials(inputs, targets, predictions)
    if replica_count() > 1:
        partials = _reduce_data_partials(partials)
    return data_columns(partials)


def _reduce_data_partials(partials):
    """`data_partials` of every replica combined (replica context)."""
    ctx = tf.distribute.get_replica_context()
    summed = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                            partials[:DATA_SUMMED])
    try:
        gathered = ctx.all_gather(partials[None, DATA_SUMMED:], axis=0)
    except Exception:  # pylint: disable=broad-except
        warn_once("data-gather",
                  "tb_stability: this strategy cannot gather; target and "
                  "prediction minima and maxima are one replica's.")
        extrema = partials[DATA_SUMMED:]
    else:
        low = tf.reduce_min(gathered, axis=0)
        high = tf.reduce_max(gathered, axis=0)
        # target_min, target_max, pred_min, pred_max
        extrema = tf.stack([low[0], high[1], low[2], high[3]])
    return tf.concat([summed, extrema], axis=0)


def _detail_marks(global_rows, bad_before):
    """(marks, bad data on the last row): marks non-zero where detail is kept.

    The detector's flags, and the first row of each stretch of rows whose
    inputs or targets hold non-finite entries (its per-feature input
    statistics name the features; data that stays non-finite, e.g. masked
    missing values, costs one detail span, not one per step).

    Args:
      global_rows: float32 [n, len(GLOBAL_COLUMNS)], consecutive rows.
      bad_before: whether the row before the first had non-finite data.
    """
    g = metadata.GLOBAL
    bad = ((np.nan_to_num(global_rows[:, g["input_nonfinite"]]) > 0)
           | (np.nan_to_num(global_rows[:, g["target_nonfinite"]]) > 0))
    if not len(bad):
        return global_rows[:, g["flags"]], bad_before
    onset = bad & ~np.concatenate([[bad_before], bad[:-1]])
    marks = np.nan_to_num(global_rows[:, g["flags"]]) + onset
    return marks, bool(bad[-1])


def _dtype_of(variables):
    """The variables' dtype name ("float32"), a sorted list if mixed, or None."""
    names = sorted({str(getattr(getattr(v, "dtype", None), "name", None)
                        or getattr(v, "dtype", None)) for v in variables})
    if not names:
        return None
    return names[0] if len(names) == 1 else names


def _output_width(variables):
    """The last kernel's width (a classifier's C), as the analysis reads it."""
    kernels = [v for v in variables if len(v.shape) >= 2]
    if not kernels:
        return None
    width = kernels[-1].shape[-1]
    return int(width) if width else None


def _variable_index(variables):
    """{id(variable): position}, for Keras variables and what they wrap.

    Keras variables wrap a `tf.Variable`, which is what the backend's
    all-reduce pairs gradients with.
    """
    index = {}
    for i, v in enumerate(variables):
        index[id(v)] = i
        inner = keras_internals.backing_variable(v)
        if inner is not None:
            index.setdefault(id(inner), i)
    return index
