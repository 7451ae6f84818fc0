"""The hooks `StabilityCallback` installs on a Keras optimizer.

Callbacks are not given gradients, and Keras's `logs["loss"]` is a running
mean over the epoch that smears a one-batch spike. So the model's optimizer
is instrumented instead (instance attributes only, the class and its
serialisation are untouched):

* `scale_loss(loss)` receives each step's own loss inside `train_step`;
* `apply(grads, variables)` receives each step's gradients (after loss-scale
  unscaling, before clipping); after the update it pushes the step's
  statistics into the recorder's ring buffers, in the graph, XLA included;
* the optimizer's all-reduce of the gradients hands them over under a
  distribution strategy, so the norms recorded are the global ones;
* with a guard option (`skip_nonfinite`, `skip_outlier_z`), `apply` first
  lets the recorder's `Guard` decide on the step's gradients (their squared
  sums, computed once, go on to `push`) and runs the optimizer's own
  `apply` in a cond (`guard.apply_unless`);
* the model's loss tracker sees the batch size (`sample_weight`);
* the model's `compute_loss(x, y, y_pred, ...)` sees the step's inputs,
  targets and predictions (the data columns and per-feature input
  statistics); `test_step`'s calls are ignored.

Whatever is private in Keras is reached through `keras_internals`.
"""

import logging
import threading
import weakref

import tensorflow as tf

from tb_stability import metadata
from tb_stability.record import keras_internals
from tb_stability.record.guard import apply_unless
from tb_stability.record.model_info import input_features, model_info
from tb_stability.record.recorder import Recorder
from tb_stability.record.runtime import replica_count, sum_over_replicas, warn_once

logger = logging.getLogger("tb_stability")

# optimizer -> Instrumentation; weak so that nothing outlives the model.
_INSTRUMENTED = weakref.WeakKeyDictionary()


def instrument(optimizer):
    """The `Instrumentation` of `optimizer`, installed on first use."""
    inst = _INSTRUMENTED.get(optimizer)
    if inst is None:
        inst = Instrumentation(optimizer)
        inst.install()
        _INSTRUMENTED[optimizer] = inst
    return inst


class Instrumentation:
    """Per-optimizer hooks and the recorder they feed.

    Attributes:
      recorder: the `Recorder` fed, made on the first step (or at `attach`
        when the variables are known); None before.
      settings: (RecorderConfig, steps_per_call) of the current recorder.
      logdir: the run directory of the current recorder.
      traced: whether a training step was traced with the hooks.
      disabled: set after a failure: the hooks pass through.

    Args:
      optimizer: the Keras optimizer (possibly a `LossScaleOptimizer`).
    """

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.inner, self.lso = keras_internals.unwrap(optimizer)
        self.model = None
        self.model_info = None  # run_info's "model" record of self.model
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
        self._hooked_models = set()
        self._originals = {}
        self.capture_reduced = (
            self.lso is None and not keras_internals.accumulates_gradients(self.inner))
        # Keras's own Adam update is alpha * m / (sqrt(v) + eps) with the
        # moments after the step, so the update is derived from them instead
        # of copying every weight before the step (one read per variable per
        # step saved). Not under a loss-scale optimizer (a skipped step moves
        # nothing) or gradient accumulation (most steps move nothing), nor
        # for other update rules (Nadam, Lamb, subclasses that override it).
        self.update_from_moments = (
            self.capture_reduced and keras_internals.uses_keras_adam_update(self.inner))

    # Installation ----------------------------------------------------------

    def install(self):
        """Replaces the optimizer's methods by the hooks (instance only)."""
        opt, inner = self.optimizer, self.inner
        self._patch(opt, "scale_loss", self._scale_loss)
        self._patch(opt, "apply", self._apply)
        if self.capture_reduced and keras_internals.has_all_reduce(inner):
            self._patch(inner, keras_internals.ALL_REDUCE_METHOD, self._all_reduce)

    def _patch(self, obj, name, fn):
        original = getattr(obj, name)
        self._originals[(id(obj), name)] = (obj, name, original)
        # object.__setattr__: Keras/TF attribute tracking must not see this.
        object.__setattr__(obj, name, fn)

    def original(self, obj, name):
        """The method `obj.name` the hook replaced."""
        return self._originals[(id(obj), name)][2]

    def attach(self, model, logdir, config, steps_per_call):
        """Prepares a `fit`: hooks the model and (re)makes the recorder.

        Another configuration or run directory than the current recorder's
        starts a fresh recorder (steps continue from the optimizer's
        iterations) and retraces the training step.
        """
        self.hook_model(model)
        self.disabled = False
        settings = (config, steps_per_call)
        if self.recorder is not None and (
            self.settings != settings or self.logdir != logdir
        ):
            self.recorder.close()
            self.recorder = None
            self.traced = False
        self.settings = settings
        self.logdir = logdir
        with model.distribute_strategy.scope():
            built_vars = list(model.trainable_variables)
            if self.recorder is None and built_vars and (
                self.optimizer.built or tf.distribute.has_strategy()
            ):
                self.recorder = make_recorder(self, built_vars)
        if getattr(model, "train_function", None) is not None and not self.traced:
            # Traced before instrumentation (an earlier fit without us).
            model.make_train_function(force=True)

    def hook_model(self, model):
        """Hooks `model` for the training step's data; describes it.

        Captures the batch size Keras passes to its loss tracker and the
        x, y, y_pred its `compute_loss` gets; `model_info` for run_info.
        """
        self.model = model
        self.model_info = model_info(model)
        if id(model) not in self._hooked_models and callable(
                getattr(model, "compute_loss", None)):
            self._hooked_models.add(id(model))
            self._patch(model, "compute_loss", self._make_compute_loss_hook(model))
        tracker = keras_internals.loss_tracker(model)
        if tracker is None or id(tracker) in self._hooked_trackers:
            return
        self._hooked_trackers.add(id(tracker))
        self._patch(tracker, "update_state", self._make_tracker_hook(tracker))

    # Hooks -----------------------------------------------------------------

    def _scale_loss(self, loss):
        if not self.disabled:
            self._captured.loss = loss
            if self.lso is not None:
                # The scale this very call multiplies by.
                self._captured.scale = keras_internals.applied_loss_scale(self.lso)
        return self.original(self.optimizer, "scale_loss")(loss)

    def _all_reduce(self, grads_and_vars):
        reduced = self.original(self.inner, keras_internals.ALL_REDUCE_METHOD)(
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
                else keras_internals.optimizer_variables(self.inner)
            )
            if self.recorder is None:
                self.recorder = make_recorder(self, variables)
            weights_before = (
                None if self.update_from_moments
                else self.recorder.snapshot(variables)
            )
            scale = self._take("scale")
            if self.lso is not None and scale is None:
                raise ValueError("train_step did not call optimizer.scale_loss "
                                 "under a LossScaleOptimizer")
            guarded = self._guard(grads, variables, scale)
        except Exception as e:  # pylint: disable=broad-except
            self._fail(e)
            return apply(grads, trainable_variables)
        self._captured.reduced = None
        if guarded is None:
            result = apply(grads, trainable_variables)
        else:
            result = None
            apply_unless(guarded[2], apply, grads, trainable_variables)
        try:
            self._record(grads, variables, weights_before, scale, guarded)
        except Exception as e:  # pylint: disable=broad-except
            self._fail(e)
        self._captured.loss = self._captured.computed_loss = None
        self._captured.x = self._captured.y = self._captured.y_pred = None
        self._captured.batch = None
        self._captured.scale = None
        self._captured.reduced = None
        return result

    def _guard(self, grads, variables, scale):
        """The update guard's inputs and decision, before the update.

        Returns None with the guard off, else (ordered gradients, their
        sums of squares, skip: bool, decision: float32) computed from the
        gradients the recorder records (all-reduced, unscaled), so that
        `push` does not compute them again. Under a strategy the gradients
        are all-reduced here once more (the optimizer's own all-reduce runs
        inside the guarded update).
        """
        rec = self.recorder
        if rec.guard is None:
            return None
        if not self.optimizer.built:
            # Variables are made before the cond, never inside a branch.
            self.optimizer.build(variables)
        g_list, v_list = self._global_grads(grads, variables, replica_count(),
                                            scale)
        ordered = rec.order_grads(g_list, v_list)
        grad_sq = rec.variable_stats.grad_sums(ordered)
        decision, assign = rec.guard.decide(tf.reduce_sum(grad_sq),
                                            loss_scaled=self.lso is not None)
        with tf.control_dependencies([assign]):
            skip = tf.equal(decision, float(metadata.GUARD_SKIPPED))
        return ordered, grad_sq, skip, decision

    def _take(self, name):
        """A value captured by this thread's trace of the current step."""
        value = getattr(self._captured, name, None)
        return value if _in_current_graph(value) else None

    def _take_nest(self, name):
        """A nest captured by this thread's trace of the current step."""
        value = getattr(self._captured, name, None)
        if value is None:
            return None
        leaves = [t for t in tf.nest.flatten(value) if t is not None]
        return value if leaves and _in_current_graph(leaves[0]) else None

    def _fail(self, error):
        self.disabled = True
        logger.warning(
            "tb_stability: instrumentation failed and is switched off "
            "(training goes on): %s: %s", type(error).__name__, error,
            exc_info=True,
        )

    def _global_grads(self, grads, variables, replicas, scale):
        """(gradients, variables): all-reduced over replicas and unscaled."""
        reduced = getattr(self._captured, "reduced", None)
        if reduced is not None:
            g_list = [g for g, _ in reduced]
            v_list = [v for _, v in reduced]
        else:
            g_list, v_list = grads, variables
            if replicas > 1:
                g_list = sum_over_replicas(g_list)
        if scale is not None:
            g_list = [None if g is None else tf.cast(g, tf.float32) / scale
                      for g in g_list]
        return g_list, v_list

    def _record(self, grads, variables, weights_before, scale, guarded=None):
        rec = self.recorder  # made by _apply before the update
        replicas = replica_count()
        if guarded is None:
            g_list, v_list = self._global_grads(grads, variables, replicas, scale)
            ordered = rec.order_grads(g_list, v_list)
            grad_sq = decision = None
        else:
            ordered, grad_sq, _, decision = guarded
        before = (None if weights_before is None
                  else rec.order_grads(weights_before, variables))
        loss = self._take("loss")
        if loss is None:
            loss = self._take("computed_loss")  # a custom train_step's
        if loss is None:
            warn_once(
                "no-loss",
                "tb_stability: train_step called neither optimizer.scale_loss "
                "nor model.compute_loss; the per-step loss is recorded as NaN.",
            )
            loss = tf.constant(float("nan"))
        batch = self._take("batch")
        if replicas > 1:
            loss, batch = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM,
                [tf.cast(loss, tf.float32),
                 tf.constant(float("nan")) if batch is None else batch],
            )
        if not tf.executing_eagerly():
            self.traced = True
        rec.push(loss, ordered, weights_before=before, batch_size=batch,
                 loss_scale=scale, inputs=self._take_nest("x"),
                 targets=self._take_nest("y"),
                 predictions=self._take_nest("y_pred"), grad_sq=grad_sq,
                 guard_skip=decision)

    def _make_compute_loss_hook(self, model):
        def compute_loss(*args, **kwargs):
            training = False
            if not self.disabled:
                try:
                    training = self._capture_data(args, kwargs)
                except Exception:  # pylint: disable=broad-except
                    self._captured.x = self._captured.y = None
                    self._captured.y_pred = None
            result = self.original(model, "compute_loss")(*args, **kwargs)
            if training:
                # The step's loss when a custom train_step never calls
                # optimizer.scale_loss (Keras's guide to customising fit).
                self._captured.computed_loss = result
            return result

        return compute_loss

    def _capture_data(self, args, kwargs):
        """Keeps x, y and y_pred of a training call of `compute_loss` (True if one)."""
        names = ("x", "y", "y_pred", "sample_weight", "training")
        bound = dict(zip(names, args))
        bound.update({k: v for k, v in kwargs.items() if k in names})
        if bound.get("training", True) is False:
            return False  # test_step
        self._captured.x = bound.get("x")
        self._captured.y = bound.get("y")
        self._captured.y_pred = bound.get("y_pred")
        return True

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


def make_recorder(inst, variables):
    """A `Recorder` for `inst`'s settings, starting at the optimizer's step."""
    with tf.init_scope():
        initial_step = int(tf.convert_to_tensor(inst.optimizer.iterations).numpy())
    config, steps_per_call = inst.settings
    return Recorder(
        inst.logdir, inst.optimizer, variables, config,
        steps_per_call=steps_per_call, initial_step=initial_step,
        input_features=input_features(inst.model, inst._take_nest("x")),  # pylint: disable=protected-access
        model_info=inst.model_info)

