"""Recording: in-graph ring buffers and detector, host-side writing.

The work is split in two so that it runs under XLA and never costs a host
synchronisation per step:

* `Recorder.push` runs inside the training step (eager, `tf.function`, XLA,
  replica context). It computes the step's statistics, runs the online spike
  detector and stores one row per step into ring buffers held in variables.
* `Recorder.flush` runs on the host, outside any compiled function, every
  `window` steps or so. It reads the rings once, writes every step's global
  row, one per-variable aggregate per window, and the full per-variable rows
  of the steps around whatever the detector flagged (and of the first steps).
  Summaries are written there, never inside the compiled step.

The format written is described in FORMAT.md.
"""

import logging
import math
import threading
import time

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import control_flow_util

from tb_stability import metadata, summary
from tb_stability.config import RecorderConfig
from tb_stability.record import stats as _stats
from tb_stability.record.keras_internals import OptimizerAdapter

logger = logging.getLogger("tb_stability")

_LOG_FLOOR = 1e-38
_LN2 = math.log(2.0)
_LN10 = math.log(10.0)
_LN100 = math.log(100.0)
_LN1_5 = math.log(1.5)
# Standard deviations above its running mean that make a step's loss or
# gradient norm a precursor: it and the next steps are computed in full.
PRECURSOR_Z = 3.0


def in_xla_context():
    """Whether the code being traced will be compiled by XLA."""
    if tf.executing_eagerly():
        return False
    graph = tf.compat.v1.get_default_graph()
    return bool(control_flow_util.GraphOrParentsInXlaContext(graph))


def _replica_count():
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        return 0  # cross-replica context
    return ctx.num_replicas_in_sync


def is_chief(strategy=None):
    """Whether this process writes the run: True unless a multi-worker
    strategy says this task is not the chief (the "chief" task, or worker 0
    when the cluster has no chief, as Keras and TensorFlow decide it).
    """
    if strategy is None:
        strategy = tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if resolver is None or task_type in (None, "chief"):
        return True
    if task_type == "worker":
        try:
            has_chief = "chief" in resolver.cluster_spec().as_dict()
        except Exception:  # pylint: disable=broad-except
            has_chief = False
        return not has_chief and int(getattr(resolver, "task_id", 0) or 0) == 0
    return False  # evaluator, parameter server


class _WarnOnce:
    """Logs each distinct key once: instrumentation must never spam."""

    def __init__(self):
        self._seen = set()

    def __call__(self, key, message, *args, level=logging.WARNING):
        if key in self._seen:
            return
        self._seen.add(key)
        logger.log(level, message, *args)


warn_once = _WarnOnce()


class Recorder:
    """Records stability evidence for one optimizer and variable list.

    Arguments:
      logdir: directory of the run's event file; None to write nothing.
        Under a multi-worker strategy only the chief writes (`is_chief`).
      optimizer: the Keras optimizer (possibly a `LossScaleOptimizer`).
      variables: the trainable variables, in a fixed order.
      config: a `RecorderConfig` (default: its defaults).
      steps_per_call: steps that may run between two host calls (Keras's
        `steps_per_execution`); sizes the rings.
      input_features: number of input features when inputs are recorded.
      initial_step: the step of the first row when steps are not given.
      **options: `RecorderConfig` fields overriding `config`'s.
    """

    def __init__(self, logdir, optimizer, variables, config=None, *,
                 steps_per_call=1, input_features=None, initial_step=0,
                 **options):
        config = (config or RecorderConfig()).replace(**options)
        if logdir is not None and not is_chief():
            # Every worker computes the statistics (the all-reduces need all
            # of them); only the chief writes.
            logger.info("tb_stability: not the chief worker; writing nothing")
            logdir = None
        self.config = config
        self.logdir = logdir
        self.adapter = OptimizerAdapter(optimizer)
        self.variables = list(variables)
        self.names = [getattr(v, "path", None) or v.name for v in self.variables]
        self.window = config.window
        self.detail_before = config.detail_before
        self.detail_after = config.detail_after
        self.first_steps = config.first_steps
        self.loss_z = config.loss_z
        self.grad_z = config.grad_z
        self.rms_threshold = config.rms_threshold
        self.full_detail = config.full_detail
        self.stats_every = config.effective_stats_every
        self.median_every = config.effective_median_every
        self.flush_secs = config.flush_secs
        self.input_features = input_features
        self.capacity = 2 * (self.window + max(1, int(steps_per_call))) + 64
        self._vstats = _stats.VariableStats(
            self.adapter, self.variables,
            sample_size=0 if self.full_detail else None)
        self._var_index = {}
        for i, v in enumerate(self.variables):
            self._var_index[id(v)] = i
            # Keras variables wrap a tf.Variable, which is what the backend's
            # all-reduce pairs gradients with.
            inner = getattr(v, "_value", None)
            if inner is not None:
                self._var_index.setdefault(id(inner), i)
        self._make_state(int(initial_step))
        # Host-side state.
        self._writer = None
        self._seen = 0  # rows processed by flush
        self._detail_written = -1  # last row written in detail
        self._flag_rows = []  # recent flagged rows
        self._win_rows = []  # (step, global row) of the open window
        self._win_max = None
        self._win_sum = None
        self._win_n = 0
        self._inp_win = None
        self._last_write = time.monotonic()
        self._info_written = False
        self._resume_checked = False
        self._broken = False
        # flush() may be called from Keras's callback threads.
        self._flush_lock = threading.Lock()
        if self.adapter.is_adam is False:
            warn_once(
                ("no-adam", self.adapter.name),
                "tb_stability: %s has no Adam moments; recording gradients, "
                "weights and update ratios only.",
                self.adapter.name,
            )

    # State -----------------------------------------------------------------

    def _variable(self, value, dtype):
        return tf.Variable(
            value,
            dtype=dtype,
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    def _make_state(self, initial_step):
        R, V, S, G = (
            self.capacity,
            len(self.variables),
            len(metadata.STAT_COLUMNS),
            len(metadata.GLOBAL_COLUMNS),
        )
        with tf.init_scope():
            self._count = self._variable(0, tf.int64)
            self._next_step = self._variable(initial_step, tf.int64)
            self._steps = self._variable(tf.zeros([R], tf.int64), tf.int64)
            self._global = self._variable(tf.zeros([R, G]), tf.float32)
            self._layers = self._variable(tf.zeros([R, V, S]), tf.float32)
            self._median = self._variable(
                tf.fill([V], float("nan")), tf.float32
            )
            # Rows (counts) before which every step is computed in full.
            self._full_until = self._variable(0, tf.int64)
            # loss_mu, loss_var, grad_mu, grad_var, n (log space EMAs),
            # previous rms_ratio_max, lowest loss_mu seen, above-rise state
            self._detector = self._variable(
                [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, float("inf"), 0.0], tf.float32
            )
            F = self._vstats.input_rows
            self._input_rows = (
                self._variable(tf.zeros([R, F]), tf.float32) if F else None
            )
            self._inputs = (
                self._variable(
                    tf.zeros([R, self.input_features, 4]), tf.float32
                )
                if self.input_features
                else None
            )

    # In-graph --------------------------------------------------------------

    def snapshot(self, variables):
        """The weights before an update, as `push(weights_before=)` wants
        them (only the sampled entries of large tensors), in the order of
        `variables`; reorder with `order_grads`.
        """
        out = []
        for var in variables:
            i = self._var_index.get(id(var))
            value = tf.convert_to_tensor(var)
            out.append(value if i is None else self._vstats.sample(i, value))
        return out

    def order_grads(self, grads, variables):
        """Reorders (grads, variables) into this recorder's variable order."""
        ordered = [None] * len(self.variables)
        for g, v in zip(grads, variables):
            i = self._var_index.get(id(v))
            if i is not None:
                ordered[i] = g
        return ordered

    def push(
        self,
        loss,
        grads,
        *,
        weights_before=None,
        batch_size=None,
        inputs=None,
        step=None,
        loss_scale=None,
    ):
        """Records one training step (runs in the graph of the step).

        Arguments:
          loss: scalar loss of this step (as a tensor); NaN if unknown.
          grads: one gradient per recorder variable (None allowed), already
            all-reduced when training is distributed.
          weights_before: optional weight values before the update.
          batch_size: optional scalar.
          inputs: optional input batch (features on the last axis).
          step: optional explicit step; else the recorder's own counter.
          loss_scale: the loss scale this step's loss was multiplied by;
            defaults to the optimizer's current dynamic scale, if any.
        """
        count = self._count.read_value()
        first = count < self.first_steps
        loss = tf.reshape(tf.cast(loss, tf.float32), [])
        vstats = self._vstats
        # Every step: the gradients' exact norms and the detector's outlier
        # tests on the loss and the global gradient norm.
        grad_sq = vstats.grad_sums(grads)
        grad_norm = tf.sqrt(tf.reduce_sum(grad_sq))
        state = self._detector.read_value()
        x, y, loss_jump, grad_jump, precursor = self._outliers(
            state, loss, grad_norm)
        finite = tf.logical_and(tf.math.is_finite(loss),
                                tf.math.is_finite(grad_norm))
        full_until = self._full_until.read_value()
        hot = tf.logical_or(count < full_until, precursor)
        median_carry = self._median.read_value()
        F = vstats.input_rows

        def _full():
            with_median = tf.logical_or(
                tf.equal(count % self.median_every, 0),
                tf.logical_or(first, hot))
            stats, rows, medians = vstats.compute(
                grads, weights_before=weights_before, with_median=with_median,
                median_carry=median_carry, grad_sq=grad_sq)
            if rows is None:
                rows = tf.fill([F], float("nan"))
            return (stats, rows, medians,
                    _stats.global_from_stats(stats, vstats.rms_mask))

        def _light():
            return (vstats.light(grads, grad_sq),
                    tf.constant(np.full([F], np.nan, np.float32)),
                    median_carry, tf.constant(_stats.GLOBAL_LIGHT))

        if self.stats_every == 1:
            computed = tf.constant(True)
            stats, input_rows, medians, glob = _full()
        else:
            computed = tf.logical_or(
                tf.logical_or(first, hot),
                tf.logical_or(tf.equal(count % self.stats_every, 0),
                              tf.logical_not(finite)))
            stats, input_rows, medians, glob = _stats.cond(computed, _full, _light)
        glob = dict(zip(_stats.GLOBAL_FROM_STATS, tf.unstack(glob)))
        loss_bad = tf.cast(tf.logical_not(tf.math.is_finite(loss)), tf.float32)
        nonfinite = glob["nonfinite"] + loss_bad
        flags, detector, rms_high = self._detect(
            state, loss, x, y, glob["rms_ratio_max"], nonfinite,
            loss_jump, grad_jump, computed,
        )
        # An anomaly (or its first sign) keeps the next steps computed.
        extend = tf.logical_or(tf.logical_or(flags > 0, precursor), rms_high)
        new_until = tf.where(
            extend, tf.maximum(full_until, count + 1 + self.detail_after),
            full_until)
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
        }
        row = tf.stack([values[name] for name in metadata.GLOBAL_COLUMNS])
        if step is None:
            step_t = self._next_step.read_value()
        else:
            step_t = tf.cast(tf.reshape(step, []), tf.int64)
        index = tf.reshape(count % self.capacity, [1])

        def put(ring, value):
            # scatter_update: the one row update MirroredVariables implement.
            return ring.scatter_update(tf.IndexedSlices(value[None], index))

        updates = [put(self._steps, step_t), put(self._global, row),
                   put(self._layers, stats)]
        if self._input_rows is not None:
            updates.append(put(self._input_rows, input_rows))
        if self._inputs is not None:
            if inputs is None:
                in_stats = tf.fill([self.input_features, 4], float("nan"))
            else:
                in_stats = _stats.input_stats(inputs)
            updates.append(put(self._inputs, in_stats))
        updates.append(self._median.assign(medians))
        updates.append(self._detector.assign(detector))
        updates.append(self._full_until.assign(new_until))
        updates.append(self._next_step.assign(step_t + 1))
        # The count moves last: whatever is triggered by it (the host flush
        # of a Monitor inside a tf.function) must see the whole row. Automatic
        # control dependencies only order ops on the same resource.
        with tf.control_dependencies(updates):
            return self._count.assign_add(1)

    def _outliers(self, state, loss, grad_norm):
        """(x, y, loss_jump, grad_jump, precursor) of this step against the
        detector's running state (see `_detect`): x and y the logs of the
        loss and the gradient norm; precursor, a step worth
        computing in full: the loss or the gradient norm above its running
        mean by `PRECURSOR_Z` standard deviations and at least x1.5, or the
        loss above 10x its lowest smoothed level (a slow rise, which the
        running mean follows, as Adam's does from a tiny loss).
        """
        (loss_mu, loss_var, grad_mu, grad_var, n, _, floor,
         _) = tf.unstack(state)
        warm = n >= 16.0
        x = tf.math.log(tf.maximum(loss, _LOG_FLOOR))
        y = tf.math.log(tf.maximum(grad_norm, _LOG_FLOOR))

        def outlier(value, mu, var, z, least):
            excess = value - mu
            limit = tf.maximum(z * tf.sqrt(var), least)
            return tf.logical_and(
                warm,
                tf.logical_and(tf.math.is_finite(value), excess > limit),
            )

        loss_jump = outlier(x, loss_mu, loss_var, self.loss_z, _LN2)
        grad_jump = outlier(y, grad_mu, grad_var, self.grad_z, _LN2)
        precursor = tf.logical_or(
            tf.logical_or(
                outlier(x, loss_mu, loss_var, PRECURSOR_Z, _LN1_5),
                outlier(y, grad_mu, grad_var, PRECURSOR_Z, _LN1_5)),
            tf.logical_and(tf.logical_and(warm, tf.math.is_finite(x)),
                           x - floor > _LN10))
        return x, y, loss_jump, grad_jump, precursor

    def _detect(self, state, loss, x, y, rms_ratio_max, nonfinite,
                loss_jump, grad_jump, computed):
        """The online detector: flags for this step, the new state, and
        whether RMS(g^2/v_hat) is above its threshold now.

        A loss jump (or gradient-norm outlier) is a value above its running
        log-space mean by more than z running standard deviations and by at
        least a factor 2 (`_outliers`); the running statistics are EMAs
        (about 64 steps) fed with values winsorised at 3 sigma on both
        sides, so a spike does not mask the next one and a zero loss does
        not drag the level down. RMS(g^2/v_hat) exists on computed steps
        only (`computed`); its flag needs two computed steps in a row above
        the threshold (one above makes the next step computed).
        """
        (loss_mu, loss_var, grad_mu, grad_var, n, prev_rms, floor,
         above) = tf.unstack(state)
        warm = n >= 16.0
        bad = tf.logical_or(nonfinite > 0, tf.logical_not(tf.math.is_finite(loss)))
        # Sustained: above the threshold on this step and the one before (a
        # single-step excursion of a 64-entry tensor is ordinary noise; the
        # Adam-epsilon mechanism keeps the ratio high for several steps).
        rms_high = tf.logical_and(tf.math.is_finite(rms_ratio_max),
                                  rms_ratio_max > self.rms_threshold)
        rms = tf.logical_and(rms_high, prev_rms > self.rms_threshold)
        # A slow geometric rise (Adam's effective step passing the stability
        # limit) drags the EMA along and never looks like an outlier; it is
        # caught as the loss crossing 100x its lowest smoothed level, once
        # per excursion (re-armed when back under 10x).
        rise_level = x - floor
        rise = tf.logical_and(
            tf.logical_and(warm, tf.math.is_finite(x)),
            tf.logical_and(rise_level > _LN100, above < 0.5),
        )
        above = tf.where(
            rise_level > _LN100, 1.0, tf.where(rise_level < _LN10, 0.0, above)
        )
        flags = (
            tf.cast(rise, tf.float32) * metadata.FLAG_LOSS_RISE
            + tf.cast(loss_jump, tf.float32) * metadata.FLAG_LOSS_JUMP
            + tf.cast(grad_jump, tf.float32) * metadata.FLAG_GRAD_OUTLIER
            + tf.cast(bad, tf.float32) * metadata.FLAG_NONFINITE
            + tf.cast(rms, tf.float32) * metadata.FLAG_RMS_RATIO
        )
        alpha = tf.where(warm, 1.0 / 64.0, 1.0 / (n + 1.0))

        def update(value, mu, var):
            sd = tf.sqrt(var)
            clipped = tf.where(
                warm,
                tf.clip_by_value(value, mu - 3.0 * sd, mu + 3.0 * sd),
                value,
            )
            ok = tf.math.is_finite(clipped)
            delta = clipped - mu
            new_mu = mu + alpha * delta
            new_var = (1.0 - alpha) * (var + alpha * delta * delta)
            return tf.where(ok, new_mu, mu), tf.where(ok, new_var, var)

        loss_mu, loss_var = update(x, loss_mu, loss_var)
        grad_mu, grad_var = update(y, grad_mu, grad_var)
        finite = tf.logical_and(tf.math.is_finite(x), tf.math.is_finite(y))
        n = n + tf.cast(finite, tf.float32)
        rms_now = tf.where(
            computed,
            tf.where(tf.math.is_finite(rms_ratio_max), rms_ratio_max, 0.0),
            prev_rms)
        floor = tf.where(n >= 16.0, tf.minimum(floor, loss_mu), floor)
        return flags, tf.stack(
            [loss_mu, loss_var, grad_mu, grad_var, n, rms_now, floor, above]
        ), rms_high

    # Host ------------------------------------------------------------------

    def _get_writer(self):
        if self._writer is None and self.logdir is not None:
            self._writer = tf.summary.create_file_writer(
                self.logdir, max_queue=64, flush_millis=10_000
            )
        return self._writer

    def run_info(self, extra=None):
        """The JSON-able description written once as `run_info`."""
        info = {
            "format_version": metadata.CONTENT_VERSION,
            "optimizer": self.adapter.describe(),
            "variables": [
                {"name": n, "shape": [d if d is not None else -1 for d in v.shape]}
                for n, v in zip(self.names, self.variables)
            ],
            "stat_columns": list(metadata.STAT_COLUMNS),
            "global_columns": list(metadata.GLOBAL_COLUMNS),
            "window_aggregates": list(metadata.WINDOW_AGGREGATES),
            **self.config.to_run_info(),
            "input_kernel": None
            if self._vstats.input_index is None
            else self.names[self._vstats.input_index],
            "input_features": self.input_features,
        }
        if extra:
            info.update(extra)
        return info

    def flush(self, final=False, extra_info=None):
        """Writes what the rings hold (host call, outside compiled code).

        Arguments:
          final: write the open window even if it is short (end of training).
          extra_info: dict merged into `run_info` when it is first written.

        Never raises: an error is logged once and recording stops.
        """
        with self._flush_lock:
            if self._broken:
                return
            try:
                self._flush(final, extra_info)
            except Exception as e:  # pylint: disable=broad-except
                self._broken = True
                logger.warning(
                    "tb_stability: writing failed, recording stops (training "
                    "goes on): %s: %s", type(e).__name__, e, exc_info=True
                )

    def _flush(self, final, extra_info):
        count = int(self._count.numpy())
        R = self.capacity
        if count > self._seen:
            start = max(self._seen, count - R)
            if start > self._seen:
                warn_once(
                    "lost-rows",
                    "tb_stability: %d steps were overwritten before they could "
                    "be written; flush more often (a Monitor under "
                    "jit_compile needs monitor.flush() after each call).",
                    start - self._seen,
                )
            self._process(start, count, extra_info)
            self._seen = count
        due = final or self._win_n >= self.window or (
            self._win_n > 0
            and time.monotonic() - self._last_write > self.flush_secs
        )
        if due and self._win_n > 0:
            self._write_window()
        if final and self._writer is not None:
            self._writer.flush()

    def _process(self, start, count, extra_info):
        R = self.capacity
        idx = np.arange(start, count) % R
        steps_all = self._steps.numpy()  # one read of the ring, used twice
        steps = steps_all[idx]
        glob = self._global.numpy()[idx]
        layers_all = self._layers.numpy()
        input_rows_all = (
            self._input_rows.numpy() if self._input_rows is not None else None
        )
        inputs_all = self._inputs.numpy() if self._inputs is not None else None
        writer = self._get_writer()
        if writer is not None and not self._info_written:
            info = self.run_info(extra_info)
            with writer.as_default():
                summary.run_info(None, info, step=int(steps[0]))
            self._info_written = True

        flags = glob[:, metadata.GLOBAL["flags"]]
        for r, f in zip(range(start, count), flags):
            if f != 0:
                self._flag_rows.append(r)
        # Window aggregates over the new rows.
        new_layers = layers_all[idx]
        if not self._resume_checked:
            self._resume_checked = True
            self._win_rows.extend(self._rows_before_resume(int(steps[0])))
        self._accumulate(steps, glob, new_layers,
                         None if inputs_all is None else inputs_all[idx])
        # Detail rows: ascending, each written once, only while in the ring.
        lo = max(self._detail_written + 1, count - R)
        self._flag_rows = [
            f for f in self._flag_rows if f + self.detail_after >= lo
        ]
        wanted = [
            r
            for r in range(lo, count)
            if self.full_detail
            or r < self.first_steps
            or any(
                f - self.detail_before <= r <= f + self.detail_after
                for f in self._flag_rows
            )
        ]
        if writer is None:
            if wanted:
                self._detail_written = wanted[-1]
            return
        with writer.as_default():
            for r in wanted:
                i = r % R
                step = int(steps_all[i])
                summary.layers_detail(None, layers_all[i], step=step)
                if input_rows_all is not None:
                    summary.input_grad_rows(None, input_rows_all[i], step=step)
                if inputs_all is not None:
                    summary.inputs_detail(None, inputs_all[i], step=step)
                self._detail_written = r

    def _rows_before_resume(self, first_step):
        """(step, row) the run's earlier attempt wrote before `first_step`
        in the same window event, when this recorder resumes a run (its first
        step is one the logdir already has).

        TensorBoard's data server drops a whole earlier event once an event
        with a lower step arrives (a restart): the window event that holds
        the resume step would take its rows before that step with it. They
        are written again, at the head of this recorder's first window;
        readers keep the later copy of each step.
        """
        if first_step <= 0 or self.logdir is None:
            return []
        try:
            from tb_stability.events import reader  # pure NumPy, lazy

            events = reader.read_tags(self.logdir).get(metadata.TAG_GLOBAL, [])
        except Exception as e:  # pylint: disable=broad-except
            logger.warning("tb_stability: could not read the earlier attempt "
                           "of this run: %s: %s", type(e).__name__, e)
            return []
        for event_step, table in reversed(events):  # the last written wins
            if event_step < first_step or table.ndim != 2 or not len(table):
                continue
            steps = event_step + table[:, 0].astype(np.int64)
            if steps[0] >= first_step:
                continue
            keep = steps < first_step
            rows = table[keep, 1:].astype(np.float32)
            return [(int(st), row) for st, row in zip(steps[keep], rows)]
        return []

    def _accumulate(self, steps, glob, layers, inputs):
        for k in range(len(steps)):
            self._win_rows.append((int(steps[k]), glob[k]))
        with np.errstate(invalid="ignore"):
            batch_max = np.nanmax(
                np.where(np.isnan(layers), -np.inf, layers), axis=0
            )
            batch_sum = np.nansum(layers, axis=0)
            batch_n = np.sum(~np.isnan(layers), axis=0)
        if self._win_max is None:
            self._win_max, self._win_sum, self._win_cnt = (
                batch_max, batch_sum, batch_n
            )
        else:
            self._win_max = np.maximum(self._win_max, batch_max)
            self._win_sum = self._win_sum + batch_sum
            self._win_cnt = self._win_cnt + batch_n
        if inputs is not None:
            with np.errstate(invalid="ignore"):
                agg = np.stack(
                    [
                        np.nanmean(inputs[:, :, 0], axis=0),
                        np.nanmax(inputs[:, :, 1], axis=0),
                        np.nanmin(inputs[:, :, 2], axis=0),
                        np.nanmax(inputs[:, :, 3], axis=0),
                    ],
                    axis=1,
                )
            if self._inp_win is None:
                self._inp_win = agg
            else:
                self._inp_win = np.stack(
                    [
                        (self._inp_win[:, 0] + agg[:, 0]) / 2.0,
                        np.fmax(self._inp_win[:, 1], agg[:, 1]),
                        np.fmin(self._inp_win[:, 2], agg[:, 2]),
                        np.fmax(self._inp_win[:, 3], agg[:, 3]),
                    ],
                    axis=1,
                )
        self._win_n += len(steps)

    def _write_window(self):
        writer = self._get_writer()
        last_step = self._win_rows[-1][0]
        if writer is not None:
            steps = np.array([s for s, _ in self._win_rows], dtype=np.int64)
            rows = np.stack([g for _, g in self._win_rows]).astype(np.float32)
            offsets = (steps - last_step).astype(np.float32)[:, None]
            table = np.concatenate([offsets, rows], axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(
                    self._win_cnt > 0, self._win_sum / np.maximum(self._win_cnt, 1),
                    np.nan,
                )
            win_max = np.where(np.isneginf(self._win_max), np.nan, self._win_max)
            agg = np.stack([win_max, mean], axis=-1).astype(
                np.float32
            )
            with writer.as_default():
                summary.global_rows(None, table, step=last_step)
                summary.layers_window(None, agg, step=last_step)
                if self._inp_win is not None:
                    summary.inputs_window(
                        None, self._inp_win.astype(np.float32), step=last_step
                    )
        self._win_rows = []
        self._win_max = self._win_sum = self._win_cnt = None
        self._inp_win = None
        self._win_n = 0
        self._last_write = time.monotonic()

    def close(self):
        """Writes everything left and closes the event file."""
        self.flush(final=True)
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # pylint: disable=broad-except
                pass
            self._writer = None
