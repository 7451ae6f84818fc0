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
as the named fields of `DetectorState`; the loss and the gradient norm are
tested as one 2-vector.
"""

import math
from typing import NamedTuple

import numpy as np
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
    """The detector's running state (float32, log space).

    The loss and the global gradient norm are tested alike, so their running
    statistics are 2-vectors (loss first) and each test is one vector
    operation: the executor runs a handful of nodes per step instead of one
    per scalar.

    Attributes:
      mu: [2], EMAs of the log loss and of the log gradient norm.
      var: [2], their EMA variances.
      n: steps with a finite loss and gradient norm seen.
      prev_rms: RMS(g^2/v_hat) of the last computed step (0 if not finite).
      floor: the lowest loss EMA seen once warm (inf before).
      above: 1 while the loss is above `RISE_FACTOR` times `floor` (until
        back under `REARM_FACTOR` times), else 0.
    """

    mu: tf.Tensor
    var: tf.Tensor
    n: tf.Tensor
    prev_rms: tf.Tensor
    floor: tf.Tensor
    above: tf.Tensor


# The state variable's layout: mu (2), var (2), then the four scalars.
INITIAL_STATE = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, float("inf"), 0.0]


class Outliers(NamedTuple):
    """One step's values against the running state (`Detector.outliers`).

    Attributes:
      xy: [2], the logs of the loss and of the global gradient norm.
      x: the log of the loss (`xy[0]`).
      loss_jump: bool, the loss is a jump.
      grad_jump: bool, the gradient norm is an outlier.
      precursor: bool, the step is worth computing in full.
    """

    xy: tf.Tensor
    x: tf.Tensor
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
        # Rows: the outlier test (jump), the precursor test; columns: the
        # loss, the gradient norm.
        self._z = np.array([[self.loss_z, self.grad_z],
                            [PRECURSOR_Z, PRECURSOR_Z]], np.float32)
        self._least = np.array([[_LN_MIN_JUMP] * 2, [_LN_PRECURSOR] * 2],
                               np.float32)
        with tf.init_scope():
            self.variable = replicated_variable(INITIAL_STATE, tf.float32)

    def read(self):
        """The current state, as a `DetectorState`."""
        mu, var, rest = tf.split(self.variable.read_value(), [2, 2, 4])
        return DetectorState(mu, var, *tf.unstack(rest))

    def assign(self, state):
        """The op storing `state` (a `DetectorState`) as the new state."""
        return self.variable.assign(tf.concat(
            [state.mu, state.var,
             tf.stack([state.n, state.prev_rms, state.floor, state.above])], 0))

    def outliers(self, state, loss, grad_norm):
        """This step's loss and gradient norm against the running state.

        A value is an outlier (a jump) when it is above its running mean by
        more than its z (`loss_z`, `grad_z`) running standard deviations and
        at least `MIN_JUMP_FACTOR`. A precursor is the loss or the gradient
        norm above its running mean by `PRECURSOR_Z` standard deviations and
        at least `PRECURSOR_FACTOR`, or the loss above
        `PRECURSOR_RISE_FACTOR` times its lowest smoothed level (a slow
        rise, which the running mean follows, as Adam's does from a tiny
        loss).

        Args:
          state: the `DetectorState` read at the start of the step.
          loss: float32 scalar.
          grad_norm: float32 scalar, the global gradient norm.

        Returns:
          `Outliers`.
        """
        warm = state.n >= WARMUP_STEPS
        xy = tf.math.log(tf.maximum(tf.stack([loss, grad_norm]), LOG_FLOOR))
        finite = tf.math.is_finite(xy)
        limit = tf.maximum(tf.constant(self._z) * tf.sqrt(state.var),
                           tf.constant(self._least))
        # [2, 2]: (jump, precursor) x (loss, gradient norm).
        hit = tf.logical_and(xy - state.mu > limit,
                             tf.logical_and(finite, warm))
        loss_jump, grad_jump, loss_near, grad_near = tf.unstack(
            tf.reshape(hit, [4]))
        x, _ = tf.unstack(xy)
        loss_finite, _ = tf.unstack(finite)
        precursor = tf.logical_or(
            tf.logical_or(loss_near, grad_near),
            tf.logical_and(tf.logical_and(warm, loss_finite),
                           x - state.floor > _LN_PRECURSOR_RISE))
        return Outliers(xy, x, loss_jump, grad_jump, precursor)

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
        bits = tf.constant([metadata.FLAG_LOSS_RISE, metadata.FLAG_LOSS_JUMP,
                            metadata.FLAG_GRAD_OUTLIER, metadata.FLAG_NONFINITE,
                            metadata.FLAG_RMS_RATIO], tf.float32)
        flags = tf.reduce_sum(bits * tf.cast(tf.stack(
            [rise, outliers.loss_jump, outliers.grad_jump, bad, rms]),
            tf.float32))
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
        n, mu, var, xy = state.n, state.mu, state.var, outliers.xy
        alpha = tf.where(warm, EMA_ALPHA, 1.0 / (n + 1.0))
        band = WINSOR_SIGMAS * tf.sqrt(var)
        clipped = tf.where(warm, tf.clip_by_value(xy, mu - band, mu + band), xy)
        ok = tf.math.is_finite(clipped)
        delta = clipped - mu
        new_mu = tf.where(ok, mu + alpha * delta, mu)
        new_var = tf.where(ok, (1.0 - alpha) * (var + alpha * delta * delta), var)
        n = n + tf.cast(tf.reduce_all(tf.math.is_finite(xy)), tf.float32)
        prev_rms = tf.where(
            computed,
            tf.where(tf.math.is_finite(rms_ratio_max), rms_ratio_max, 0.0),
            state.prev_rms)
        loss_mu, _ = tf.unstack(new_mu)
        floor = tf.where(n >= WARMUP_STEPS, tf.minimum(state.floor, loss_mu),
                         state.floor)
        return DetectorState(mu=new_mu, var=new_var, n=n, prev_rms=prev_rms,
                             floor=floor, above=above)
