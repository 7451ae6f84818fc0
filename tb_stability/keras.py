"""Keras: `StabilityCallback`, one line in `model.fit(callbacks=[...])`.

Callbacks are not given gradients, and Keras's `logs["loss"]` is a running
mean over the epoch that smears a one-batch spike. So the callback
instruments the model's optimizer instead (instance attributes only, the
class and its serialisation are untouched):

* `scale_loss(loss)` receives each step's own loss inside `train_step`;
* `apply(grads, variables)` receives each step's gradients (after loss-scale
  unscaling, before clipping); after the update it pushes the step's
  statistics into the recorder's ring buffers, in the graph, XLA included;
* `_all_reduce_sum_gradients` hands over the all-reduced gradients under a
  distribution strategy, so the norms recorded are the global ones.

The callback itself only writes, outside the compiled step, once per window.
"""

import logging
import threading
import weakref

import keras
import tensorflow as tf

from tb_stability.config import RecorderConfig
from tb_stability.record import keras_internals as _slots
from tb_stability.record import recorder as _recorder

logger = logging.getLogger("tb_stability")

# optimizer -> _Instrumentation; weak so that nothing outlives the model.
_INSTRUMENTED = weakref.WeakKeyDictionary()


class _Instrumentation:
    """Per-optimizer hooks and the recorder they feed."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.inner, self.lso = _slots.unwrap(optimizer)
        self.model = None
        self.recorder = None
        self.settings = None  # (RecorderConfig, steps_per_call)
        self.logdir = None
        self.traced = False
        self.disabled = False
        # What one step's trace captured (loss, batch size, loss scale,
        # reduced gradients). Thread-local: MirroredStrategy traces its
        # replicas concurrently, one thread each.
        self._captured = threading.local()
        self._hooked_trackers = set()
        self._originals = {}
        self.capture_reduced = self.lso is None and not getattr(
            self.inner, "gradient_accumulation_steps", None
        )
        # Keras's own Adam update is alpha * m / (sqrt(v) + eps) with the
        # moments after the step, so the update is derived from them instead
        # of copying every weight before the step (one read per variable per
        # step saved). Not under a loss-scale optimizer (a skipped step moves
        # nothing) or gradient accumulation (most steps move nothing), nor
        # for other update rules (Nadam, Lamb, subclasses that override it).
        self.update_from_moments = self.capture_reduced and (
            getattr(type(self.inner), "update_step", None)
            is keras.optimizers.Adam.update_step
        )

    # Installation ----------------------------------------------------------

    def install(self):
        opt, inner = self.optimizer, self.inner
        self._patch(opt, "scale_loss", self._scale_loss)
        self._patch(opt, "apply", self._apply)
        if self.capture_reduced and hasattr(inner, "_all_reduce_sum_gradients"):
            self._patch(inner, "_all_reduce_sum_gradients", self._all_reduce)

    def _patch(self, obj, name, fn):
        original = getattr(obj, name)
        self._originals[(id(obj), name)] = (obj, name, original)
        # object.__setattr__: Keras/TF attribute tracking must not see this.
        object.__setattr__(obj, name, fn)

    def original(self, obj, name):
        return self._originals[(id(obj), name)][2]

    # Hooks -----------------------------------------------------------------

    def _scale_loss(self, loss):
        if not self.disabled:
            self._captured.loss = loss
            if self.lso is not None:
                # The scale this very call multiplies by (Keras's own rule).
                lso = self.lso
                scale = lso.dynamic_scale if lso.built else lso.initial_scale
                self._captured.scale = tf.cast(tf.convert_to_tensor(scale), tf.float32)
        return self.original(self.optimizer, "scale_loss")(loss)

    def _all_reduce(self, grads_and_vars):
        reduced = self.original(self.inner, "_all_reduce_sum_gradients")(
            grads_and_vars
        )
        if not self.disabled:
            self._captured.reduced = list(reduced)
        return reduced

    def _apply(self, grads, trainable_variables=None):
        apply = self.original(self.optimizer, "apply")
        if self.disabled:
            return apply(grads, trainable_variables)
        grads = list(grads)
        try:
            variables = (
                list(trainable_variables)
                if trainable_variables is not None
                else list(self.inner._trainable_variables)
            )
            if self.recorder is None:
                self.recorder = _make_recorder(self, variables)
            weights_before = (
                None if self.update_from_moments
                else self.recorder.snapshot(variables)
            )
            scale = self._take("scale")
            if self.lso is not None and scale is None:
                raise ValueError("train_step did not call optimizer.scale_loss "
                                 "under a LossScaleOptimizer")
        except Exception as e:  # pylint: disable=broad-except
            self._fail(e)
            return apply(grads, trainable_variables)
        self._captured.reduced = None
        result = apply(grads, trainable_variables)
        try:
            self._record(grads, variables, weights_before, scale)
        except Exception as e:  # pylint: disable=broad-except
            self._fail(e)
        self._captured.loss = None
        self._captured.batch = None
        self._captured.scale = None
        self._captured.reduced = None
        return result

    def _take(self, name):
        """A value captured by this thread's trace of the current step."""
        value = getattr(self._captured, name, None)
        return value if _in_current_graph(value) else None

    def _fail(self, error):
        self.disabled = True
        logger.warning(
            "tb_stability: instrumentation failed and is switched off "
            "(training goes on): %s: %s", type(error).__name__, error,
            exc_info=True,
        )

    def _record(self, grads, variables, weights_before, scale):
        rec = self.recorder  # made by _apply before the update
        replicas = _recorder._replica_count()
        ctx = tf.distribute.get_replica_context()
        reduced = getattr(self._captured, "reduced", None)
        if reduced is not None:
            g_list = [g for g, _ in reduced]
            v_list = [v for _, v in reduced]
        else:
            g_list, v_list = grads, variables
            if replicas > 1:
                present = [g for g in g_list if g is not None]
                summed = iter(ctx.all_reduce(tf.distribute.ReduceOp.SUM, present))
                g_list = [None if g is None else next(summed) for g in g_list]
        if scale is not None:
            g_list = [None if g is None else tf.cast(g, tf.float32) / scale
                      for g in g_list]
        ordered = rec.order_grads(g_list, v_list)
        before = (None if weights_before is None
                  else rec.order_grads(weights_before, variables))
        loss = self._take("loss")
        if loss is None:
            _recorder.warn_once(
                "no-loss",
                "tb_stability: train_step did not call optimizer.scale_loss; "
                "the per-step loss is recorded as NaN.",
            )
            loss = tf.constant(float("nan"))
        batch = self._take("batch")
        if replicas > 1:
            loss, batch = ctx.all_reduce(
                tf.distribute.ReduceOp.SUM,
                [tf.cast(loss, tf.float32),
                 tf.constant(float("nan")) if batch is None else batch],
            )
        if not tf.executing_eagerly():
            self.traced = True
        rec.push(loss, ordered, weights_before=before, batch_size=batch,
                 loss_scale=scale)

    def hook_model(self, model):
        """Captures the batch size Keras passes to its loss tracker."""
        self.model = model
        tracker = _slots.loss_tracker(model)
        if tracker is None or id(tracker) in self._hooked_trackers:
            return
        self._hooked_trackers.add(id(tracker))
        self._patch(tracker, "update_state", self._make_tracker_hook(tracker))

    def _make_tracker_hook(self, tracker):
        def update_state(values, sample_weight=None, **kwargs):
            if not self.disabled and sample_weight is not None:
                try:
                    self._captured.batch = tf.cast(
                        tf.reshape(tf.convert_to_tensor(sample_weight), []),
                        tf.float32,
                    )
                except Exception:  # pylint: disable=broad-except
                    self._captured.batch = None
            return self.original(tracker, "update_state")(
                values, sample_weight=sample_weight, **kwargs
            )

        return update_state


def _in_current_graph(tensor):
    """Whether a captured tensor belongs to the graph being traced now.

    The loss tracker is also updated by `test_step`; a tensor captured while
    tracing that function must not leak into the training step.
    """
    if tensor is None:
        return False
    if tf.executing_eagerly():
        return not hasattr(tensor, "graph") or isinstance(tensor, tf.Variable)
    return getattr(tensor, "graph", None) is tf.compat.v1.get_default_graph()


def _make_recorder(inst, variables):
    with tf.init_scope():
        initial_step = int(tf.convert_to_tensor(inst.optimizer.iterations).numpy())
    config, steps_per_call = inst.settings
    return _recorder.Recorder(
        inst.logdir, inst.optimizer, variables, config,
        steps_per_call=steps_per_call, initial_step=initial_step)


class StabilityCallback(keras.callbacks.Callback):
    """Records what explains a training blow-up, for TensorBoard.

    Usage, with no other change to the training code:

        model.fit(x, y, callbacks=[StabilityCallback("logs/run1")])

    Per step it records the loss, the global gradient norm, the learning
    rate, the batch size and Adam's RMS(g^2/v_hat); per variable the gradient
    and weight norms, non-finite counts, the update ratio and Adam's moments.
    Steps continue across `fit` calls. Works with `jit_compile=True`,
    `steps_per_execution > 1`, `LossScaleOptimizer` and `MirroredStrategy`.
    Errors inside it are logged once; training always goes on.

    Arguments:
      logdir: the run's log directory (its event file goes there).
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

    def __init__(self, logdir, config=None, **options):
        super().__init__()
        self.logdir = str(logdir)
        self.config = (config or RecorderConfig()).replace(**options)
        self._inst = None
        self._steps_since_flush = 0
        self._count_lock = threading.Lock()

    @property
    def recorder(self):
        """The `Recorder` in use (None before training starts)."""
        return None if self._inst is None else self._inst.recorder

    def on_train_begin(self, logs=None):
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
        inst = _INSTRUMENTED.get(optimizer)
        if inst is None:
            inst = _Instrumentation(optimizer)
            inst.install()
            _INSTRUMENTED[optimizer] = inst
        inst.hook_model(model)
        inst.disabled = False
        settings = (self.config, spe)
        if inst.recorder is not None and (
            inst.settings != settings or inst.logdir != self.logdir
        ):
            # Another configuration: start a fresh recorder (steps continue
            # from the optimizer's iterations) and retrace the step.
            inst.recorder.close()
            inst.recorder = None
            inst.traced = False
        inst.settings = settings
        inst.logdir = self.logdir
        strategy = model.distribute_strategy
        with strategy.scope():
            built_vars = list(model.trainable_variables)
            if inst.recorder is None and built_vars and (
                optimizer.built or tf.distribute.has_strategy()
            ):
                inst.recorder = _make_recorder(inst, built_vars)
        if getattr(model, "train_function", None) is not None and not inst.traced:
            # Traced before instrumentation (an earlier fit without us).
            model.make_train_function(force=True)
        self._inst = inst
        self._steps_since_flush = 0
        self._spe = spe

    def on_train_batch_end(self, batch, logs=None):
        inst = self._inst
        if inst is None or inst.recorder is None:
            return
        rec = inst.recorder
        with self._count_lock:
            self._steps_since_flush += self._spe
            due = self._steps_since_flush >= rec.window
            if due:
                self._steps_since_flush = 0
        if due:
            rec.flush()

    def on_epoch_end(self, epoch, logs=None):
        inst = self._inst
        if inst is not None and inst.recorder is not None:
            inst.recorder.flush()  # writes only a full or stale window

    def on_train_end(self, logs=None):
        inst = self._inst
        if inst is not None and inst.recorder is not None:
            inst.recorder.flush(final=True)
