"""The update guard: skip one step's update inside the compiled step.

Opt-in (`RecorderConfig.skip_nonfinite`, `skip_outlier_z`). Before the
optimizer applies a step's gradients, `Guard.decide` looks at their global
squared norm (the sum the recorder computes anyway, handed over so that
nothing is computed twice) and says whether to skip the update:

* non-finite: the squared norm is NaN or Inf (a NaN/Inf entry, or a
  gradient so large its square overflows float32). Not under a
  LossScaleOptimizer: those steps are its own skips, and its loss scale
  must go down;
* outlier: after `WARMUP_STEPS` finite steps, the log of the norm is more
  than `skip_outlier_z` running standard deviations and at least a factor
  `MIN_FACTOR` above its running mean. Mean and variance are EMAs of the
  log norm fed with values winsorised at `WINSOR_SIGMAS`, as the online
  detector's, so the outlier itself barely moves them;
* a bound: after `max_skips_in_a_row` skips in a row, updates go through
  again until one needs no skip (the recorder's host side warns once).

`apply_unless(skip, apply, grads, variables)` then runs the optimizer's own
`apply` in a `tf.cond`: eager, in a `tf.function`, under XLA, and under a
distribution strategy that needs a merge call for its update (the cond then
runs in the cross-replica context, as Keras's LossScaleOptimizer does).
A skipped step leaves the weights, the moments and the optimizer's
`iterations` as they were.

The state is one float32 variable: [mean, variance, finite steps seen,
skips in a row, last decision].

`OptimizerGuard` installs the guard on an optimizer's `apply` (the
instance's attribute only) for `Monitor`: the user's loop calls
`apply_gradients` as before.
"""

import math
import threading

import numpy as np
import tensorflow as tf

from tb_stability import metadata
from tb_stability.record import keras_internals
from tb_stability.record.rings import replicated_variable
from tb_stability.record.runtime import (
    cond,
    logger,
    replica_count,
    sum_over_replicas,
)

# Finite steps seen before the outlier test is armed.
WARMUP_STEPS = 32.0
# Weight of a new value in the running EMAs once warm (about 64 steps).
EMA_ALPHA = 1.0 / 64.0
# Values fed to the EMAs are clipped this many standard deviations around
# the running mean once warm.
WINSOR_SIGMAS = 3.0
# An outlier is at least this factor above the running mean.
MIN_FACTOR = 2.0
# Smallest squared norm whose log is taken.
SQ_FLOOR = 1e-30

_LN_MIN = math.log(MIN_FACTOR)


class Guard:
    """The guard's thresholds (from the config) and its running state.

    Args:
      config: the `RecorderConfig` (`skip_nonfinite`, `skip_outlier_z`,
        `max_skips_in_a_row`).
    """

    def __init__(self, config):
        self.skip_nonfinite = bool(config.skip_nonfinite)
        self.z = float(config.skip_outlier_z)
        self.bound = float(config.max_skips_in_a_row)
        self._warned = False  # warn_let_through, once
        with tf.init_scope():
            self.variable = replicated_variable(
                [0.0, 0.0, 0.0, 0.0, float("nan")], tf.float32)

    def warn_let_through(self, steps, global_rows):
        """Logs once (host) when rows show updates let through at the bound.

        Args:
          steps: int [n], the rows' steps.
          global_rows: float32 [n, len(GLOBAL_COLUMNS)].
        """
        if self._warned:
            return
        through = global_rows[:, metadata.GLOBAL["guard_skip"]] == float(
            metadata.GUARD_LET_THROUGH)
        if through.any():
            self._warned = True
            logger.warning(
                "tb_stability: the update guard skipped %d updates in a row "
                "(max_skips_in_a_row); from step %d on it lets them through "
                "until one needs no skip: the run is not frozen, but its "
                "gradients stay bad.", int(self.bound),
                int(steps[int(np.argmax(through))]))

    def last_decision(self):
        """The decision of the last step decided (NaN before any)."""
        return self.variable.read_value()[4]

    def decide(self, grad_sq_total, loss_scaled=False):
        """This step's decision (float32 `metadata.GUARD_*`) and state update.

        Args:
          grad_sq_total: float32 scalar, the sum of squares of all the
            step's gradients (unscaled, all-reduced).
          loss_scaled: True under a LossScaleOptimizer (non-finite steps are
            its own skips: not skipped here).

        Returns:
          (decision, assign op): `GUARD_SKIPPED` where the update must be
          skipped, `GUARD_LET_THROUGH` where it would be but the bound is
          reached, else `GUARD_APPLIED`.
        """
        mu, var, n, run, _ = tf.unstack(self.variable.read_value())
        total = tf.reshape(tf.cast(grad_sq_total, tf.float32), [])
        finite = tf.math.is_finite(total)
        y = 0.5 * tf.math.log(tf.maximum(total, SQ_FLOOR))
        warm = n >= WARMUP_STEPS
        want = tf.constant(False)
        if self.skip_nonfinite and not loss_scaled:
            want = tf.logical_not(finite)
        if self.z > 0:
            limit = tf.maximum(self.z * tf.sqrt(var), _LN_MIN)
            outlier = tf.logical_and(tf.logical_and(warm, finite),
                                     y - mu > limit)
            want = tf.logical_or(want, outlier)
        skip = tf.logical_and(want, run < self.bound)
        decision = tf.where(
            skip, float(metadata.GUARD_SKIPPED),
            tf.where(want, float(metadata.GUARD_LET_THROUGH),
                     float(metadata.GUARD_APPLIED)))
        # The running level of the log norm, fed winsorised finite values.
        alpha = tf.where(warm, EMA_ALPHA, 1.0 / (n + 1.0))
        sd = tf.sqrt(var)
        value = tf.where(warm, tf.clip_by_value(y, mu - WINSOR_SIGMAS * sd,
                                                mu + WINSOR_SIGMAS * sd), y)
        delta = value - mu
        new_mu = tf.where(finite, mu + alpha * delta, mu)
        new_var = tf.where(finite, (1.0 - alpha) * (var + alpha * delta * delta),
                           var)
        new_n = n + tf.cast(finite, tf.float32)
        new_run = tf.where(want, tf.minimum(run + 1.0, self.bound), 0.0)
        op = self.variable.assign(
            tf.stack([new_mu, new_var, new_n, new_run, decision]))
        return decision, op


def apply_unless(skip, apply, grads, variables):
    """Runs `apply(grads, variables)` unless `skip` (a bool scalar).

    `skip` must be the same on every replica (it is computed from
    all-reduced gradients). Under a strategy whose update needs a merge call
    (MirroredStrategy outside XLA on GPUs), the cond is taken in the
    cross-replica context and `apply` runs for each replica inside it.
    """

    def run_apply():
        apply(grads, variables)
        return tf.constant(True)

    def skipped():
        return tf.constant(False)

    ctx = tf.distribute.get_replica_context()
    if (ctx is None or ctx.num_replicas_in_sync <= 1
            or tf.__internal__.distribute.strategy_supports_no_merge_call()):
        cond(skip, skipped, run_apply)
        return

    def merged(distribution, skip, grads, variables):
        # Every replica decided the same: take the first one's decision.
        first = distribution.experimental_local_results(skip)[0]

        def run_each():
            distribution.extended.call_for_each_replica(
                apply, args=(grads, variables))
            return tf.constant(True)

        tf.cond(first, skipped, run_each)

    ctx.merge_call(merged, args=(skip, list(grads), variables))


def squared_sums(grads):
    """float32 [len(grads)]: each gradient's sum of squares (0 for None).

    The same sums as the recorder's `VariableStats.grad_sums`.
    """
    zero = tf.constant(0.0)
    return 2.0 * tf.stack([
        zero if g is None
        else tf.nn.l2_loss(tf.cast(tf.convert_to_tensor(g), tf.float32))
        for g in grads])


def _current(tensor):
    """Whether `tensor` can be used where the code runs now."""
    if tf.executing_eagerly():
        return not hasattr(tensor, "graph")
    return getattr(tensor, "graph", None) is tf.compat.v1.get_default_graph()


class OptimizerGuard:
    """The guard on an optimizer's `apply`, for loops that call it themselves.

    Replaces `optimizer.apply` on the instance (Keras's `apply_gradients`
    calls it); `restore` puts the method back. A failure logs a warning
    once and lets every update through from then on.

    Args:
      optimizer: the Keras optimizer (possibly a `LossScaleOptimizer`).
      config: the `RecorderConfig` with the skip options.
    """

    def __init__(self, optimizer, config):
        self.optimizer = optimizer
        self.guard = Guard(config)
        self.inner, self.lso = keras_internals.unwrap(optimizer)
        self.disabled = False
        self._original = optimizer.apply
        self._local = threading.local()  # one replica per thread
        # object.__setattr__: Keras/TF attribute tracking must not see this.
        object.__setattr__(optimizer, "apply", self._apply)

    def restore(self):
        """Puts the optimizer's own `apply` back."""
        if self.optimizer.__dict__.get("apply") == self._apply:
            object.__delattr__(self.optimizer, "apply")
            if getattr(self.optimizer, "apply", None) != self._original:
                object.__setattr__(self.optimizer, "apply", self._original)

    def _apply(self, grads, trainable_variables=None):
        apply = self._original
        if self.disabled:
            return apply(grads, trainable_variables)
        grads = list(grads)
        try:
            variables = (list(trainable_variables)
                         if trainable_variables is not None
                         else keras_internals.optimizer_variables(self.inner))
            if not self.optimizer.built:
                # Variables are made before the cond, never inside a branch.
                self.optimizer.build(variables)
            g_list = grads
            if replica_count() > 1:
                g_list = sum_over_replicas(g_list)
            if self.lso is not None:
                scale = keras_internals.applied_loss_scale(self.lso)
                g_list = [None if g is None else tf.cast(g, tf.float32) / scale
                          for g in g_list]
            sq = squared_sums(g_list)
            decision, assign = self.guard.decide(
                tf.reduce_sum(sq), loss_scaled=self.lso is not None)
            with tf.control_dependencies([assign]):
                skip = tf.equal(decision, float(metadata.GUARD_SKIPPED))
        except Exception as e:  # pylint: disable=broad-except
            self.disabled = True
            logger.warning(
                "tb_stability: the update guard failed and is switched off "
                "(updates are applied): %s: %s", type(e).__name__, e,
                exc_info=True)
            return apply(grads, trainable_variables)
        apply_unless(skip, apply, grads, trainable_variables)
        # Under a loss-scale optimizer the recorder gets what the loop
        # passes to `record`: its own sums there.
        by_id = None if self.lso is not None else {
            id(v): sq[i] for i, v in enumerate(variables)}
        self._local.last = (decision, by_id)
        return None

    def take(self, variables):
        """(sums of squares or None, decision) for the step being recorded.

        The sums computed for the decision, in the order of `variables`,
        when the update ran in the same graph (else None: the recorder
        computes them); the decision of the last update guarded.
        """
        last = getattr(self._local, "last", None)
        self._local.last = None
        if last is not None and _current(last[0]):
            decision, by_id = last
            if by_id is not None and all(id(v) in by_id for v in variables):
                return tf.stack([by_id[id(v)] for v in variables]), decision
            return None, decision
        return None, self.guard.last_decision()
