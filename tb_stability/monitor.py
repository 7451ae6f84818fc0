"""Custom training loops: `Monitor`.

    monitor = tb_stability.Monitor("logs/run1", optimizer=opt,
                                   variables=model.trainable_variables,
                                   model=model)          # optional
    for step, (x, y) in enumerate(data):
        loss, grads, pred = train_step(x, y)  # applies the gradients
        monitor.record(step, loss, grads, inputs=x, targets=y,
                       predictions=pred)      # the data: optional

`record` may also be called inside the `tf.function` that applies the
gradients (after `apply_gradients`), including under `jit_compile=True`; see
`Monitor.record` for how writing happens then.
"""

import logging

import numpy as np
import tensorflow as tf

from tb_stability.config import RecorderConfig
from tb_stability.record import guard as guard_lib
from tb_stability.record import live
from tb_stability.record import model_info as model_description
from tb_stability.record.compiled_push import CompiledPush
from tb_stability.record.global_stats import feature_tensor, feature_width
from tb_stability.record.recorder import Recorder
from tb_stability.record.runtime import (
    cond,
    in_xla_context,
    replica_count,
    sum_over_replicas,
    warn_once,
)

logger = logging.getLogger("tb_stability")


class Monitor:
    """Records what explains a blow-up of a custom training loop.

    Args:
      logdir: the run's log directory.
      optimizer: the Keras optimizer that applies the gradients (its Adam
        moments are read after each update; any optimizer works, Adam-family
        ones give the full Adam internals).
      variables: the trainable variables, in the order `record` gets their
        gradients.
      input_features: number of input features, needed only when `record`
        gets `inputs=` under a distribution strategy (elsewhere it is read
        from the first batch, or from `model`'s first input).
      model: optional Keras model being trained: its output layer
        (activation, units) and dtype policy go into run_info's "model"
        record (the loss of a custom loop is unknown: "loss" is null).
        Without it, only the variables' dtype is recorded there.
      config: a `tb_stability.config.RecorderConfig` (default: its
        defaults).
      on_anomaly: what to do with each new anomaly the live analysis finds
        while training runs, as for `keras.StabilityCallback`: "warn"
        (default: one line through the `tb_stability` logger, the first of
        each kind and cause only), "stop" (the warning, everything written,
        then `should_stop` is True: the loop checks it), "raise"
        (everything written, then `record` or `flush` raises
        `tb_stability.TrainingInstability`), a callable (called with the
        report's anomaly dict) or None (no live analysis).
      anomaly_kinds: the kinds acted on (default: all).
      **options: `RecorderConfig` fields overriding `config`'s, as for
        `keras.StabilityCallback`.

    Usable as a context manager: leaving it writes everything and closes the
    event file.
    """

    def __init__(self, logdir, optimizer, variables, *, input_features=None,
                 model=None, config=None, on_anomaly="warn", anomaly_kinds=None,
                 **options):
        self.logdir = str(logdir)
        self.alerts = live.Alerts(on_anomaly, anomaly_kinds, logdir=self.logdir)
        self._since_poll = 0
        self.optimizer = optimizer
        self.variables = list(variables)
        self.config = (config or RecorderConfig()).replace(**options)
        self._input_features = input_features
        self._model_info = (None if model is None
                            else model_description.model_info(model, loss=False))
        if input_features is None and model is not None and tf.distribute.has_strategy():
            self._input_features = model_description.input_features(model)
        self._recorder = None
        self._push_fn = None  # the CompiledPush of eager record() calls
        self._pending = 0
        self._disabled = False
        if not self.variables:
            raise ValueError("Monitor needs the list of trainable variables")
        # With a skip option, the update guard on the optimizer's `apply`.
        self._guard = (guard_lib.OptimizerGuard(optimizer, self.config)
                       if self.config.guard_on else None)
        if tf.distribute.has_strategy():
            # Mirrored state must be created in the strategy's scope, not
            # inside the replica function.
            self._make_recorder(None)

    @property
    def recorder(self):
        """The `Recorder` in use (None before the first `record`)."""
        return self._recorder

    @property
    def anomalies(self):
        """The anomalies found while training so far, as the report's dicts."""
        return list(self.alerts.found)

    @property
    def should_stop(self):
        """True once `on_anomaly="stop"` saw an anomaly: end the loop."""
        return self.alerts.stop_requested

    def _make_recorder(self, inputs):
        features = self._input_features
        if features is None and inputs is not None:
            features = feature_width(feature_tensor(inputs))
        self._recorder = Recorder(
            self.logdir, self.optimizer, self.variables, self.config,
            input_features=features, model_info=self._model_info,
            guard=None if self._guard is None else self._guard.guard)
        if self.alerts.action is not None:
            self._recorder.watch(self.alerts)

    @tf.autograph.experimental.do_not_convert  # see Recorder.push
    def record(self, step, loss, gradients, *, batch_size=None, inputs=None,
               targets=None, predictions=None):
        """Records one step; call it after the gradients were applied.

        Args:
          step: the step number (int or scalar tensor).
          loss: the step's scalar loss.
          gradients: one gradient per variable given to the constructor, in
            that order (None for a variable without gradient).
          batch_size: optional batch size of the step.
          inputs: optional input batch (a tensor or a nest of them): the
            count of its NaN/Inf entries every step (`input_nonfinite`), and
            per feature (the last axis of its first float tensor) mean, std,
            min and max of the finite entries and the non-finite count.
          targets: optional targets of the step (any float or integer
            tensor; the first of a nest): their non-finite count and the
            min, max and mean of their finite entries, every step.
          predictions: optional model outputs of the step (the first of a
            nest): min, max and mean of their finite entries, every step.

        In eager mode the summaries are written from here, once per window.
        Inside a `tf.function` the write is triggered from the graph once per
        window. Under `jit_compile=True` no summary can be written inside the
        compiled function: call `monitor.flush()` after each call of it (it
        reads one counter and writes only when a window is full). Under a
        distribution strategy call it in the replica function: gradients and
        loss are all-reduced (summed) for the statistics, and `flush()` is
        called from the host loop, as under XLA.

        Returns nothing. Never raises: an error is logged once and recording
        stops, training goes on.
        """
        if self._disabled:
            return
        try:
            self._record(step, loss, gradients, batch_size, inputs, targets,
                         predictions)
        except live.TrainingInstability:
            raise  # on_anomaly="raise"
        except Exception as e:  # pylint: disable=broad-except
            if e is self.alerts.user_error:
                self.alerts.user_error = None
                raise  # the on_anomaly callable's
            self._disabled = True
            logger.warning(
                "tb_stability: Monitor.record failed and is switched off "
                "(training goes on): %s: %s", type(e).__name__, e,
                exc_info=True,
            )

    def _record(self, step, loss, gradients, batch_size, inputs, targets,
                predictions):
        gradients = list(gradients)
        if len(gradients) != len(self.variables):
            raise ValueError(
                f"record() got {len(gradients)} gradients for "
                f"{len(self.variables)} variables"
            )
        if self._recorder is None:
            self._make_recorder(inputs)
        rec = self._recorder
        replicas = replica_count()
        if replicas > 1:
            gradients, loss, batch_size = _sum_over_replicas(
                gradients, loss, batch_size)
        if inputs is not None and rec.input_features is None:
            warn_once(
                "late-inputs",
                "tb_stability: inputs= given after the first record() without "
                "input_features=; per-feature input statistics are not "
                "recorded.",
            )
        grad_sq = guard_skip = None
        if self._guard is not None:
            grad_sq, guard_skip = self._guard.take(self.variables)
        if tf.executing_eagerly() and not tf.distribute.has_strategy():
            # Called from Python: run the step's work as one compiled call
            # (traced once per layout of the arguments), not op by op.
            if self._push_fn is None:
                self._push_fn = CompiledPush(rec)
            count = self._push_fn(
                step, loss, gradients, batch_size, _tensors(inputs),
                _tensors(targets), _tensors(predictions), grad_sq, guard_skip)
        else:
            count = rec.push(loss, gradients, batch_size=batch_size,
                             inputs=inputs, targets=targets,
                             predictions=predictions, step=step,
                             grad_sq=grad_sq, guard_skip=guard_skip)
        self._write_when_due(rec, count, replicas, loss)

    def _write_when_due(self, rec, count, replicas, loss):
        """Flushes once per window where a write can be triggered from here.

        Eagerly, from Python; inside a `tf.function`, from the graph; not
        under XLA or a distribution strategy (`flush()` is called from the
        host loop there).
        """
        window = rec.config.window
        if tf.executing_eagerly():
            self._pending += 1
            self._since_poll += 1
            if self._pending >= window:
                self._pending = self._since_poll = 0
                rec.flush()
            elif self._since_poll >= live.POLL_EVERY:
                self._since_poll = 0
                rec.poll()
        elif replicas <= 1 and not in_xla_context():

            def _write():
                return tf.py_function(self._host_flush, [], Tout=tf.int64)

            # Once per window, and on a step whose loss is not finite (the
            # live analysis reports it now, not at the window's end).
            cond(
                tf.logical_or(tf.equal(count % window, 0),
                              tf.logical_not(tf.math.is_finite(
                                  tf.reduce_sum(tf.cast(loss, tf.float32))))),
                _write,
                lambda: tf.constant(0, tf.int64),
            )

    def _host_flush(self):
        rec = self._recorder
        if rec.due():
            rec.flush()
        else:
            rec.poll(force=True)
        return tf.constant(0, tf.int64)

    def flush(self, final=False):
        """Writes whatever is due (host call).

        Cheap to call after every step: it reads the row counter and reads
        the rings and writes only once a window is full (or `flush_secs`
        passed).

        Args:
          final: also write a partial window.
        """
        rec = self._recorder
        if rec is None:
            return
        try:
            if not final and not rec.due():
                rec.poll()  # a new non-finite stretch flushes now
                return
        except Exception as e:  # pylint: disable=broad-except
            if isinstance(e, live.TrainingInstability) or e is self.alerts.user_error:
                self.alerts.user_error = None
                raise
            # flush() itself logs what is wrong
        rec.flush(final=final)

    def close(self):
        """Writes everything recorded and closes the event file.

        The optimizer's own `apply` is put back (the update guard's ends).
        """
        if self._guard is not None:
            self._guard.restore()
        if self._recorder is not None:
            self._recorder.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _tensors(nest):
    """A nest of data (`inputs=`, ...) with its arrays as tensors."""
    if nest is None:
        return None
    return tf.nest.map_structure(
        lambda x: tf.convert_to_tensor(x)
        if isinstance(x, (np.ndarray, np.generic)) else x, nest)


def _sum_over_replicas(gradients, loss, batch_size):
    """(gradients, loss, batch_size) summed over the replicas."""
    gradients = sum_over_replicas(gradients)
    scalars = [tf.cast(loss, tf.float32)]
    if batch_size is not None:
        scalars.append(tf.cast(batch_size, tf.float32))
    ctx = tf.distribute.get_replica_context()
    scalars = ctx.all_reduce(tf.distribute.ReduceOp.SUM, scalars)
    loss = scalars[0]
    if batch_size is not None:
        batch_size = scalars[1]
    return gradients, loss, batch_size
