"""Keras: `StabilityCallback`, one line in `model.fit(callbacks=[...])`.

Callbacks are not given gradients, so the callback instruments the model's
optimizer (`tb_stability.record.keras_hooks`): each step's loss, gradients
and batch size are pushed into the recorder's ring buffers inside the
training step, XLA included. The callback itself only writes, outside the
compiled step, once per window.
"""

import logging
import threading

import keras

from tb_stability.config import RecorderConfig
from tb_stability.record import keras_hooks, live

logger = logging.getLogger("tb_stability")


class StabilityCallback(keras.callbacks.Callback):
    """Records what explains a training blow-up, for TensorBoard.

    Usage, with no other change to the training code:

        model.fit(x, y, callbacks=[StabilityCallback("logs/run1")])

    Per step it records the loss, the global gradient norm, the learning
    rate, the batch size and Adam's RMS(g^2/v_hat); per variable the gradient
    and weight norms, non-finite counts, the update ratio and Adam's moments;
    from the data `compute_loss` sees, the non-finite inputs and targets, the
    range of the targets and predictions and per-feature input statistics;
    once, the model's output layer, loss and dtypes. Steps continue across
    `fit` calls. Works with `jit_compile=True`, `steps_per_execution > 1`,
    `LossScaleOptimizer` and `MirroredStrategy`.
    Errors inside it are logged once; training always goes on.

    While it trains, the report's analysis runs on the rows recorded so far
    (on the host, within a small share of the step time) and each new
    anomaly is acted on once, as `on_anomaly` says: by default one warning
    line through the `tb_stability` logger (kind, step, cause and
    confidence, layer, fix), the first of each kind and cause only. A
    non-finite step is reported within `live.POLL_EVERY` steps; anything
    else within a window or so.

    Args:
      logdir: the run's log directory (its event file goes there).
      on_anomaly: "warn" (default); "stop": the warning, then `fit` ends
        after the step that saw it (`model.stop_training`), everything
        written; "raise": everything written, then
        `tb_stability.TrainingInstability` (its `anomaly` is the report's
        anomaly dict) is raised out of `fit`; a callable: called with that
        dict (what it raises propagates); None: no live analysis at all.
      anomaly_kinds: the kinds acted on (default: every kind: "spike",
        "divergence", "nonfinite", "plateau", "instability"), e.g.
        `("nonfinite", "divergence")` to stop only on those.
      config: a `tb_stability.config.RecorderConfig` (default: its
        defaults: a 256-step window, detail around flagged steps, the
        per-variable statistics other than gradient norms every 8 steps).
      **options: `RecorderConfig` fields overriding `config`'s, for example
        `stats_every=1` (every statistic every step) or `full_detail=True`
        (every step's per-variable rows, exact). An unknown name raises
        TypeError.
    """

    # Keras may run on_train_batch_end in a worker thread instead of
    # converting every step's logs to Python numbers on the training thread
    # (a host synchronisation per step): it only counts steps and flushes
    # once per window, under a lock, reading rows the step no longer writes.
    async_safe = True

    def __init__(self, logdir, config=None, *, on_anomaly="warn",
                 anomaly_kinds=None, **options):
        super().__init__()
        self.logdir = str(logdir)
        self.config = (config or RecorderConfig()).replace(**options)
        self.alerts = live.Alerts(on_anomaly, anomaly_kinds, logdir=self.logdir)
        self._inst = None
        self._steps_since_flush = 0
        self._steps_since_poll = 0
        self._count_lock = threading.Lock()

    @property
    def anomalies(self):
        """The anomalies found while training so far, as the report's dicts."""
        return list(self.alerts.found)

    @property
    def recorder(self):
        """The `Recorder` in use (None before training starts)."""
        return None if self._inst is None else self._inst.recorder

    def on_train_begin(self, logs=None):
        """Instruments the model's optimizer (nothing recorded on failure)."""
        try:
            self._begin()
        except Exception as e:  # pylint: disable=broad-except
            self._inst = None
            logger.warning(
                "tb_stability: could not instrument the optimizer, nothing "
                "is recorded (training goes on): %s: %s",
                type(e).__name__, e, exc_info=True,
            )

    def _begin(self):
        model = self.model
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            raise ValueError("the model has no optimizer; call compile() first")
        spe = int(getattr(model, "steps_per_execution", 1) or 1)
        inst = keras_hooks.instrument(optimizer)
        inst.attach(model, self.logdir, self.config, spe)
        self._inst = inst
        self._steps_since_flush = 0
        self._steps_since_poll = 0
        self._spe = spe
        self.alerts.stop_requested = False

    def on_train_batch_end(self, batch, logs=None):
        """Counts steps; flushes the recorder once a window is full."""
        inst = self._inst
        if inst is None or inst.recorder is None:
            return
        rec = inst.recorder
        if rec.alerts is not self.alerts and self.alerts.action is not None:
            rec.watch(self.alerts)  # before the recorder's first flush
        with self._count_lock:
            self._steps_since_flush += self._spe
            self._steps_since_poll += self._spe
            due = self._steps_since_flush >= rec.config.window
            poll = self._steps_since_poll >= live.POLL_EVERY
            if due:
                self._steps_since_flush = 0
            if poll:
                self._steps_since_poll = 0
        if due:
            rec.flush()
        elif poll:
            rec.poll()
        self._stop_if_asked()

    def _stop_if_asked(self):
        if self.alerts.stop_requested and self.model is not None:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        """Writes a full or stale window."""
        inst = self._inst
        if inst is not None and inst.recorder is not None:
            inst.recorder.flush()  # writes only a full or stale window
            self._stop_if_asked()

    def on_train_end(self, logs=None):
        """Writes everything recorded (the event file stays open)."""
        inst = self._inst
        if inst is not None and inst.recorder is not None:
            inst.recorder.flush(final=True)
