"""The online spike detector, run in the graph of every training step.

It decides which steps get their full per-variable rows written (the rows
around flagged steps) and which steps are computed in full although
`stats_every` would skip them. It works on the logs of the loss and of the
global gradient norm:

* a *loss jump* (or a *gradient-norm outlier*) is a value above its running
  mean by more than `loss_z` (`grad_z`) running standard deviations and by
  at least a factor `MIN_JUMP_FACTOR`;
* the running statistics are EMAs (about `1 / EMA_ALPHA` steps) fed with
  values winsorised at `WINSOR_SIGMAS` on both sides, so a spike does not
  mask the next one and a zero loss does not drag the level down;
* a slow geometric rise (Adam's effective step passing the stability limit)
  drags the EMA along and never looks like an outlier: it is flagged as the
  loss crossing `RISE_FACTOR` times its lowest smoothed level, once per
  excursion (re-armed when back under `REARM_FACTOR` times);
* RMS(g^2/v_hat) exists on computed steps only; its flag needs two computed
  steps in a row above `rms_threshold` (one above makes the next step
  computed);
* a non-finite loss or any non-finite entry flags the step.

The state is one float32 variable (one read and one write per step) viewed
as the named fields of `DetectorState`.
"""

import math
from typing import NamedTuple

import tensorflow as tf

from tb_stability import metadata
from tb_stability.record.rings import replicated_variable

# Smallest loss or gradient norm whose log is taken (a zero stays finite).
LOG_FLOOR = 1e-38
# Steps with a finite loss and gradient norm before the detector flags
# anything (the EMAs are plain means until then).
WARMUP_STEPS = 16.0
# Weight of a new value in the running EMAs once warm (about 64 steps).
EMA_ALPHA = 1.0 / 64.0
# Values fed to the EMAs are clipped this many standard deviations around
# the running mean.
WINSOR_SIGMAS = 3.0
# A loss jump or gradient outlier is at least this factor above the mean.
MIN_JUMP_FACTOR = 2.0
# Standard deviations above its running mean that make a step's loss or
# gradient norm a precursor: it and the next steps are computed in full.
PRECURSOR_Z = 3.0
# ... and the factor above the mean a precursor is at least.
PRECURSOR_FACTOR = 1.5
# A loss this many times its lowest smoothed level is a precursor.
PRECURSOR_RISE_FACTOR = 10.0
# A loss this many times its lowest smoothed level is flagged as a rise ...
RISE_FACTOR = 100.0
# ... and the rise flag is re-armed once the loss is back under this factor.
REARM_FACTOR = 10.0

_LN_MIN_JUMP = math.log(MIN_JUMP_FACTOR)
_LN_PRECURSOR = math.log(PRECURSOR_FACTOR)
_LN_PRECURSOR_RISE = math.log(PRECURSOR_RISE_FACTOR)
_LN_RISE = math.log(RISE_FACTOR)
_LN_REARM = math.log(REARM_FACTOR)


class DetectorState(NamedTuple):
    """The detector's running state (all float32 scalars, log space).

    Attributes:
      loss_mu: EMA of the log loss.
      loss_var: EMA variance of the log loss.
      grad_mu: EMA of the log gradient norm.
      grad_var: EMA variance of the log gradient norm.
      n: steps with a finite loss and gradient norm seen.
      prev_rms: RMS(g^2/v_hat) of the last computed step (0 if not finite).
      floor: the lowest `loss_mu` seen once warm (inf before).
      above: 1 while the loss is above `RISE_FACTOR` times `floor` (until
        back under `REARM_FACTOR` times), else 0.
    """

    loss_mu: tf.Tensor
    loss_var: tf.Tensor
    grad_mu: tf.Tensor
    grad_var: tf.Tensor
    n: tf.Tensor
    prev_rms: tf.Tensor
    floor: tf.Tensor
    above: tf.Tensor


INITIAL_STATE = DetectorState(
    loss_mu=0.0, loss_var=0.0, grad_mu=0.0, grad_var=0.0, n=0.0,
    prev_rms=0.0, floor=float("inf"), above=0.0)


class Outliers(NamedTuple):
    """One step's values against the running state (`Detector.outliers`).

    Attributes:
      x: log of the loss.
      y: log of the global gradient norm.
      loss_jump: bool, the loss is a jump.
      grad_jump: bool, the gradient norm is an outlier.
      precursor: bool, the step is worth computing in full.
    """

    x: tf.Tensor
    y: tf.Tensor
    loss_jump: tf.Tensor
    grad_jump: tf.Tensor
    precursor: tf.Tensor


class Detector:
    """The online detector: thresholds from the config, state in a variable.

    Args:
      config: the `RecorderConfig` (`loss_z`, `grad_z`, `rms_threshold`).
    """

    def __init__(self, config):
        self.loss_z = config.loss_z
        self.grad_z = config.grad_z
        self.rms_threshold = config.rms_threshold
        with tf.init_scope():
            self.variable = replicated_variable(list(INITIAL_STATE), tf.float32)

    def read(self):
        """The current state, as a `DetectorState` of scalar tensors."""
        return DetectorState(*tf.unstack(self.variable.read_value()))

    def assign(self, state):
        """The op storing `state` (a `DetectorState`) as the new state."""
        return self.variable.assign(tf.stack(list(state)))

    def outliers(self, state, loss, grad_norm):
        """This step's loss and gradient norm against the running state.

        A precursor is the loss or the gradient norm above its running mean
        by `PRECURSOR_Z` standard deviations and at least
        `PRECURSOR_FACTOR`, or the loss above `PRECURSOR_RISE_FACTOR` times
        its lowest smoothed level (a slow rise, which the running mean
        follows, as Adam's does from a tiny loss).

        Args:
          state: the `DetectorState` read at the start of the step.
          loss: float32 scalar.
          grad_norm: float32 scalar, the global gradient norm.

        Returns:
          `Outliers`.
        """
        warm = state.n >= WARMUP_STEPS
        x = tf.math.log(tf.maximum(loss, LOG_FLOOR))
        y = tf.math.log(tf.maximum(grad_norm, LOG_FLOOR))

        def outlier(value, mu, var, z, least):
            excess = value - mu
            limit = tf.maximum(z * tf.sqrt(var), least)
            return tf.logical_and(
                warm,
                tf.logical_and(tf.math.is_finite(value), excess > limit),
            )

        loss_jump = outlier(x, state.loss_mu, state.loss_var, self.loss_z,
                            _LN_MIN_JUMP)
        grad_jump = outlier(y, state.grad_mu, state.grad_var, self.grad_z,
                            _LN_MIN_JUMP)
        precursor = tf.logical_or(
            tf.logical_or(
                outlier(x, state.loss_mu, state.loss_var, PRECURSOR_Z,
                        _LN_PRECURSOR),
                outlier(y, state.grad_mu, state.grad_var, PRECURSOR_Z,
                        _LN_PRECURSOR)),
            tf.logical_and(tf.logical_and(warm, tf.math.is_finite(x)),
                           x - state.floor > _LN_PRECURSOR_RISE))
        return Outliers(x, y, loss_jump, grad_jump, precursor)

    def detect(self, state, loss, outliers, rms_ratio_max, nonfinite, computed):
        """This step's flags and the detector's next state.

        Args:
          state: the `DetectorState` read at the start of the step.
          loss: float32 scalar.
          outliers: `outliers(state, loss, grad_norm)`.
          rms_ratio_max: float32, this step's max RMS(g^2/v_hat) (NaN on a
            step not computed, or without Adam).
          nonfinite: float32, non-finite entries counted this step.
          computed: bool, whether the statistics were computed this step.

        Returns:
          (flags, new state, rms_high): the float32 bit mask of
          `metadata.FLAG_*`, a `DetectorState`, and whether RMS(g^2/v_hat)
          is above its threshold now.
        """
        warm = state.n >= WARMUP_STEPS
        bad = tf.logical_or(nonfinite > 0, tf.logical_not(tf.math.is_finite(loss)))
        # Sustained: above the threshold on this step and the one before (a
        # single-step excursion of a 64-entry tensor is ordinary noise; the
        # Adam-epsilon mechanism keeps the ratio high for several steps).
        rms_high = tf.logical_and(tf.math.is_finite(rms_ratio_max),
                                  rms_ratio_max > self.rms_threshold)
        rms = tf.logical_and(rms_high, state.prev_rms > self.rms_threshold)
        rise, above = self._rise(state, warm, outliers.x)
        flags = (
            tf.cast(rise, tf.float32) * metadata.FLAG_LOSS_RISE
            + tf.cast(outliers.loss_jump, tf.float32) * metadata.FLAG_LOSS_JUMP
            + tf.cast(outliers.grad_jump, tf.float32) * metadata.FLAG_GRAD_OUTLIER
            + tf.cast(bad, tf.float32) * metadata.FLAG_NONFINITE
            + tf.cast(rms, tf.float32) * metadata.FLAG_RMS_RATIO
        )
        return flags, self._next_state(state, warm, outliers, rms_ratio_max,
                                       computed, above), rms_high

    @staticmethod
    def _rise(state, warm, x):
        """(rise flag, new `above`): the loss crossing `RISE_FACTOR` x floor."""
        rise_level = x - state.floor
        rise = tf.logical_and(
            tf.logical_and(warm, tf.math.is_finite(x)),
            tf.logical_and(rise_level > _LN_RISE, state.above < 0.5),
        )
        above = tf.where(
            rise_level > _LN_RISE, 1.0,
            tf.where(rise_level < _LN_REARM, 0.0, state.above)
        )
        return rise, above

    @staticmethod
    def _next_state(state, warm, outliers, rms_ratio_max, computed, above):
        """The state after this step: EMAs fed winsorised values."""
        n = state.n
        alpha = tf.where(warm, EMA_ALPHA, 1.0 / (n + 1.0))

        def update(value, mu, var):
            sd = tf.sqrt(var)
            clipped = tf.where(
                warm,
                tf.clip_by_value(value, mu - WINSOR_SIGMAS * sd,
                                 mu + WINSOR_SIGMAS * sd),
                value,
            )
            ok = tf.math.is_finite(clipped)
            delta = clipped - mu
            new_mu = mu + alpha * delta
            new_var = (1.0 - alpha) * (var + alpha * delta * delta)
            return tf.where(ok, new_mu, mu), tf.where(ok, new_var, var)

        x, y = outliers.x, outliers.y
        loss_mu, loss_var = update(x, state.loss_mu, state.loss_var)
        grad_mu, grad_var = update(y, state.grad_mu, state.grad_var)
        finite = tf.logical_and(tf.math.is_finite(x), tf.math.is_finite(y))
        n = n + tf.cast(finite, tf.float32)
        prev_rms = tf.where(
            computed,
            tf.where(tf.math.is_finite(rms_ratio_max), rms_ratio_max, 0.0),
            state.prev_rms)
        floor = tf.where(n >= WARMUP_STEPS, tf.minimum(state.floor, loss_mu),
                         state.floor)
        return DetectorState(loss_mu=loss_mu, loss_var=loss_var,
                             grad_mu=grad_mu, grad_var=grad_var, n=n,
                             prev_rms=prev_rms, floor=floor, above=above)
