"""In-graph statistics of gradients, weights and Adam moments.

Everything here runs inside the training step (eager, `tf.function` or XLA):
one pass of reductions per tensor, no host synchronisation, results stacked
into one `[variables, stats]` float32 matrix whose columns are
`metadata.STAT_COLUMNS`.
"""

from typing import Callable, List, NamedTuple, Optional

import numpy as np
import tensorflow as tf

from tb_stability import metadata
from tb_stability.record.runtime import cond
from tb_stability.record.sampling import Samples, strided_medians

_S = metadata.STAT
_TINY = 1e-30  # smallest weight norm an update is divided by
# Variables with fewer entries do not count towards rms_ratio_max: for a
# single entry g^2/v_hat is a chi-square(1) draw and exceeds 9 every ~400 steps.
RMS_MIN_SIZE = 32
# The first kernel's gradient row norms are kept up to this many rows.
MAX_INPUT_ROWS = 4096
# Variables of one shape (and kind) summed together in the full statistics
# once there are this many (`VariableStats._all_sums`).
GROUP_MIN = 4


def _f32(x):
    """`x` as float32."""
    return tf.cast(x, tf.float32)


def _nan_where(mask):
    """float32 [len(mask)] constant: NaN where `mask`, else 0."""
    return tf.constant(np.where(mask, np.nan, 0.0).astype(np.float32))


# The sums `VariableStats.compute` takes per variable (over its sample), in
# the order of its [V, len(SUMS)] matrix:
SUMS = (
    "weight_sq",  # sum w^2
    "mu_sq",  # sum m^2
    "nu_sum",  # sum v
    "ratio_sq",  # sum g^2 / max(v, eps^2 * bias_2)
    "nu_min",  # min v
    "update_sq_exact",  # sum (w - w_before)^2
    "update_sq_adam",  # sum of the Adam update's squares (see compute)
)
_SUM = {name: i for i, name in enumerate(SUMS)}
# ... those taken with L2Loss (halved) ...
_HALVED = ("weight_sq", "mu_sq", "ratio_sq", "update_sq_exact", "update_sq_adam")
# ... those that grow with the entries summed (scaled from a sample) ...
_EXTENSIVE = tuple(name for name in SUMS if name != "nu_min")
# ... and those whose finiteness says there is no non-finite weight or
# moment entry to count (with the gradients' exact sums of squares).
_FINITE_CHECKED = ("weight_sq", "mu_sq", "nu_sum")
# The non-finite count columns, in the order they are counted.
_COUNTS = ("grad_nonfinite", "weight_nonfinite", "moment_nonfinite")


class _StepConstants(NamedTuple):
    """The update rule's constants at this step.

    Attributes:
      lr: the learning rate (float32 tensor).
      epsilon: Adam's epsilon.
      weight_decay: decoupled weight decay (0 without).
      momentum: SGD's momentum (0 without).
      bias_2: 1 - beta_2^t (tensor).
      alpha: lr * sqrt(bias_2) / (1 - beta_1^t), Adam's step size (tensor).
      nu_floor: eps^2 * bias_2: max(v_hat, eps^2) = max(v, nu_floor) / bias_2.
    """

    lr: tf.Tensor
    epsilon: float
    weight_decay: float
    momentum: float
    bias_2: tf.Tensor
    alpha: tf.Tensor
    nu_floor: tf.Tensor


class _Tensors(NamedTuple):
    """One step's tensors per variable, float32, None where absent.

    Attributes:
      grads: the gradients.
      weights: the weights after the update.
      mu: Adam's first moments.
      nu: Adam's second moments (AMSGrad's maximum under amsgrad).
      weights_before: the weights before the update (sampled), if given.
    """

    grads: List[Optional[tf.Tensor]]
    weights: List[tf.Tensor]
    mu: List[Optional[tf.Tensor]]
    nu: List[Optional[tf.Tensor]]
    weights_before: List[Optional[tf.Tensor]]


class _UpdateSources(NamedTuple):
    """Where each variable's update size comes from (Python constants).

    Attributes:
      exact: bool [V], from the weights before the update.
      from_adam: bool [V], derived from Adam's moments.
      from_sgd: bool [V], lr * g (plain SGD without momentum).
      decayed: bool per variable, the Adam update includes weight decay.
    """

    exact: np.ndarray
    from_adam: np.ndarray
    from_sgd: np.ndarray
    decayed: List[bool]


class _Reductions(NamedTuple):
    """How `_sums` reduces: over one whole tensor, or over each row.

    Attributes:
      half_sq: sum(t^2) / 2.
      total: sum(t).
      least: min(t).
      zero: the value of a sum that does not exist.
    """

    half_sq: Callable
    total: Callable
    least: Callable
    zero: tf.Tensor


def _sums(reduce, g, m, v, w, w0, sources, i, step, axis):
    """The `SUMS` of one variable's tensors (or of rows of stacked ones).

    Args:
      reduce: the `_Reductions` to use.
      g: the gradient (None without), as the statistics see it.
      m: Adam's first moment (None without).
      v: Adam's second moment (None without).
      w: the weights after the update.
      w0: the weights before the update (None unless measured).
      sources: the `_UpdateSources`.
      i: the variable (of the group) whose update source applies.
      step: the `_StepConstants`.
      axis: the axis the sums are stacked along.

    Returns:
      float32 [len(SUMS)] (or [rows, len(SUMS)]).
    """
    sums = dict.fromkeys(SUMS, reduce.zero)
    sums["weight_sq"] = reduce.half_sq(w)
    if m is not None:
        sums["mu_sq"] = reduce.half_sq(m)
        sums["nu_sum"] = reduce.total(v)
        if g is not None:
            sums["ratio_sq"] = reduce.half_sq(
                g * tf.math.rsqrt(tf.maximum(v, step.nu_floor)))
        sums["nu_min"] = reduce.least(v)
    if sources.exact[i]:
        sums["update_sq_exact"] = reduce.half_sq(w - w0)
    if sources.decayed[i]:  # implies from_adam
        sums["update_sq_adam"] = reduce.half_sq(
            step.alpha * m / (tf.sqrt(v) + step.epsilon)
            + step.lr * step.weight_decay * w)
    elif sources.from_adam[i]:  # alpha^2 is applied to the sum
        sums["update_sq_adam"] = reduce.half_sq(m / (tf.sqrt(v) + step.epsilon))
    return tf.stack([sums[name] for name in SUMS], axis=axis)


class VariableStats:
    """Computes the per-variable statistics of one training step.

    `grad_sums` (the exact gradient norms) runs every step, `compute` (all
    the statistics) every few steps and around anomalies, `light` (the
    gradient norms alone in the stats matrix) on the other steps. Their cost
    is kept to what Adam's own update costs or less:

    * each variable gets one sum of squares of its gradient and seven more
      sums in `compute` (fused `L2Loss` for the sums of squares, one pass
      each) and nothing else; everything after them is arithmetic on
      `[variables]` vectors, a fixed number of graph nodes. (Flattening the
      small variables into one vector and reducing by segment was measured
      too: on CPU the concatenation costs what it saves.)
    * a tensor of more than `sample_size` entries has its statistics
      estimated from a fixed sample of that many entries, runs of
      `RUN_LENGTH` consecutive entries at random places (the same entries
      every step, so changes over time are measured on the same weights):
      weight norm, update ratio, Adam's moments, RMS(g^2/v_hat), the
      smallest v. Its gradient norm is always exact, and so are the
      non-finite counts whenever a gradient norm is not finite. Without the
      sample, a 1M-parameter MLP's step cost about 1.5x; sums over 8192
      entries estimate a mean to about 1-2%.

    Args:
      adapter: a `keras_internals.OptimizerAdapter`.
      variables: the trainable variables, in the order of the stats rows.
      sample_size: entries sampled from larger tensors; 0 for exact
        statistics over every entry; None for `SAMPLE_SIZE`.
    """

    def __init__(self, adapter, variables, sample_size=None):
        self.adapter = adapter
        self.variables = list(variables)
        self.sizes = [v.shape.num_elements() or 0 for v in self.variables]
        self._samples = Samples(self.variables, sample_size)
        # Per variable: the flat indices of the entries its sample holds, or
        # None (every entry).
        self.samples = self._samples.indices
        self.rms_mask = [s >= RMS_MIN_SIZE for s in self.sizes]
        if not any(self.rms_mask):
            self.rms_mask = [True] * len(self.variables)
        self.input_index = None
        for i, v in enumerate(self.variables):
            if len(v.shape) >= 2 and v.shape[-2] is not None:
                if v.shape[-2] <= MAX_INPUT_ROWS:
                    self.input_index = i
                break

    def sample(self, i, x):
        """X (a value of variable i, or alike) as its statistics see it.

        Returns:
          The sampled entries of `x` (flat, in the order of `samples[i]`),
          or `x` itself when variable i is not sampled.
        """
        return self._samples.take(i, x)

    @property
    def input_rows(self):
        """Number of rows of the first kernel's gradient, or 0."""
        if self.input_index is None:
            return 0
        return int(self.variables[self.input_index].shape[-2])

    def grad_sums(self, grads):
        """Exact sums of squares of the gradients, float32 [V].

        The part of the statistics computed every step; 0 for a None
        gradient.
        """
        zero = tf.constant(0.0)
        return 2.0 * tf.stack([
            zero if g is None else tf.nn.l2_loss(_f32(tf.convert_to_tensor(g)))
            for g in grads])

    def no_grad(self, grads):
        """float32 [V]: NaN where a variable has no gradient, else 0."""
        return _nan_where([g is None for g in grads])

    def light(self, grads, grad_sq):
        """The stats matrix of a step computed light: gradient norms only.

        NaN in the other columns, zero non-finite counts (a step with a
        non-finite gradient or loss is always computed in full).
        """
        # A constant with NaN and zeros, plus the norms in their column: a
        # handful of graph nodes, for a path taken on most steps.
        base = np.full([len(self.variables), len(metadata.STAT_COLUMNS)],
                       np.nan, np.float32)
        for c, name in enumerate(metadata.STAT_COLUMNS):
            if name.endswith("nonfinite"):
                base[:, c] = 0.0
        base[:, _S["grad_norm"]] = np.where([g is None for g in grads],
                                            np.nan, 0.0)
        column = np.zeros([1, len(metadata.STAT_COLUMNS)], np.float32)
        column[0, _S["grad_norm"]] = 1.0
        return tf.constant(base) + tf.sqrt(grad_sq)[:, None] * tf.constant(column)

    def compute(self, grads, weights_before=None, with_median=True,
                median_carry=None, grad_sq=None):
        """All the statistics of one step.

        Args:
          grads: gradients (as the optimizer saw them, before clipping), one
            per variable; None entries give NaN gradient statistics.
          weights_before: optional weight values before the update; when
            given, the update ratio is measured exactly, else it is derived
            from Adam's moments (Adam family) or from the gradient (plain SGD).
          with_median: bool tensor or Python bool: compute the median of
            sqrt(v_hat)/eps now (a sort on a strided sample), else reuse
            `median_carry` [V].
          median_carry: float32 [V] of the last medians.
          grad_sq: `grad_sums(grads)` when already computed.

        Returns:
          (stats [V, S], input_row_norms [F] or None, medians [V]).
        """
        step = self._step_constants()
        x = self._tensors(grads, weights_before)
        sources = self._update_sources(x, step)
        if grad_sq is None:
            grad_sq = self.grad_sums(grads)
        raw = self._all_sums(x, sources, step)
        sums = self._scaled_sums(raw, sources, step)
        no_moments = _nan_where([m is None for m in x.mu])
        columns = self._derived_columns(x, sums, sources, step, grad_sq,
                                        no_moments)
        medians = self._medians(x, step, no_moments, with_median, median_carry)
        columns["sqrt_nu_over_eps_median"] = medians
        columns.update(self._nonfinite_counts(x, raw, grad_sq))
        stats = tf.stack([columns[c] for c in metadata.STAT_COLUMNS], axis=1)
        return stats, self._input_row_norms(x.grads), medians

    def _step_constants(self):
        """This step's `_StepConstants` (bias corrections at t >= 1)."""
        adapter = self.adapter
        lr = adapter.learning_rate()
        t = adapter.iterations()
        h = adapter.hyperparameters()
        bias_2 = 1.0 - tf.pow(h.beta_2, tf.maximum(t, 1.0))
        bias_1 = 1.0 - tf.pow(h.beta_1, tf.maximum(t, 1.0))
        return _StepConstants(
            lr=lr, epsilon=h.epsilon, weight_decay=h.weight_decay,
            momentum=h.momentum, bias_2=bias_2,
            alpha=lr * tf.sqrt(bias_2) / bias_1,
            # max(v_hat, eps^2) = max(v, eps^2 * bias_2) / bias_2
            nu_floor=h.epsilon * h.epsilon * bias_2,
        )

    def _tensors(self, grads, weights_before):
        """The step's `_Tensors`, float32 (None where absent)."""
        g = [None if x is None else _f32(tf.convert_to_tensor(x)) for x in grads]
        w = [_f32(tf.convert_to_tensor(v)) for v in self.variables]
        m, v = [], []
        for var in self.variables:
            mu, nu = self.adapter.moments(var)
            ok = mu is not None and nu is not None
            m.append(_f32(tf.convert_to_tensor(mu)) if ok else None)
            v.append(_f32(tf.convert_to_tensor(nu)) if ok else None)
        w0 = [None] * len(self.variables)
        if weights_before is not None:
            w0 = [None if x is None else _f32(x) for x in weights_before]
        return _Tensors(grads=g, weights=w, mu=m, nu=v, weights_before=w0)

    def _update_sources(self, x, step):
        """Where each variable's update comes from (`_UpdateSources`)."""
        exact = np.array([w0 is not None for w0 in x.weights_before])
        from_adam = np.array([m is not None for m in x.mu]) & ~exact
        decayed = [bool(step.weight_decay) and from_adam[i]
                   and self.adapter.weight_decay_applies(var)
                   for i, var in enumerate(self.variables)]
        from_sgd = np.array([g is not None for g in x.grads]) & ~exact & ~from_adam & (
            step.momentum == 0.0 and self.adapter.name == "SGD")
        return _UpdateSources(exact=exact, from_adam=from_adam,
                              from_sgd=from_sgd, decayed=decayed)

    def _all_sums(self, x, sources, step):
        """Every variable's `SUMS`, float32 [V, len(SUMS)].

        Variables of one shape, small enough to be summed whole (not
        sampled), and alike in what they have (gradient, moments) and where
        their update comes from, are stacked and summed in one op per sum
        (`GROUP_MIN` or more of them): on a model of many small layers of
        one width that is a few nodes per group instead of a dozen per
        variable. The others are summed one by one (`_variable_sums`).
        """
        groups = {}
        for i, var in enumerate(self.variables):
            if self.samples[i] is not None or not var.shape.is_fully_defined():
                continue
            key = (tuple(var.shape), x.grads[i] is None, x.mu[i] is None,
                   bool(sources.exact[i]), bool(sources.from_adam[i]),
                   bool(sources.decayed[i]))
            groups.setdefault(key, []).append(i)
        parts, order = [], []
        for members in groups.values():
            if len(members) >= GROUP_MIN:
                parts.append(self._group_sums(members, x, sources, step))
                order += members
        grouped = set(order)
        for i in range(len(self.variables)):
            if i not in grouped:
                parts.append(self._variable_sums(i, x, sources, step)[None])
                order.append(i)
        raw = tf.concat(parts, 0)
        if order != sorted(order):
            raw = tf.gather(raw, np.argsort(order))
        return raw

    def _group_sums(self, members, x, sources, step):
        """`SUMS` [len(members), len(SUMS)] of variables of one shape.

        The sums of `_variable_sums` over the stacked tensors flattened to
        rows, one reduction per row (halved sums of squares, as L2Loss
        gives them).
        """
        k = len(members)

        def rows(tensors):
            if tensors[members[0]] is None:
                return None
            return tf.reshape(tf.stack([tensors[i] for i in members]), [k, -1])

        return _sums(
            _Reductions(
                half_sq=lambda t: 0.5 * tf.reduce_sum(tf.square(t), axis=1),
                total=lambda t: tf.reduce_sum(t, axis=1),
                least=lambda t: tf.reduce_min(t, axis=1),
                zero=tf.zeros([k])),
            rows(x.grads), rows(x.mu), rows(x.nu), rows(x.weights),
            rows(x.weights_before), sources, members[0], step, axis=1)

    def _variable_sums(self, i, x, sources, step):
        """Variable i's `SUMS`, float32 [len(SUMS)], over its sample.

        Fused L2Loss, sum(x^2) / 2, for the sums of squares: one node and one
        pass over the tensor instead of two. (The gradient's, exact, is
        `grad_sums`.)
        """
        def sample(t):
            return None if t is None else self.sample(i, t)

        return _sums(
            _Reductions(half_sq=tf.nn.l2_loss, total=tf.reduce_sum,
                        least=tf.reduce_min, zero=tf.constant(0.0)),
            sample(x.grads[i]), sample(x.mu[i]), sample(x.nu[i]),
            sample(x.weights[i]), sample(x.weights_before[i]), sources, i,
            step, axis=0)

    def _scaled_sums(self, raw, sources, step):
        """The sums of `raw` [V, len(SUMS)] over whole tensors, by name.

        Undoes L2Loss's halving and scales sums over a sample to the whole
        tensor; the Adam-derived update gets its alpha^2 where it was left
        out of the sum.
        """
        scale = np.ones([len(self.variables), len(SUMS)], np.float32)
        scale[:, [_SUM[name] for name in _HALVED]] = 2.0
        for i, idx in enumerate(self.samples):
            if idx is not None:
                scale[i, [_SUM[name] for name in _EXTENSIVE]] *= (
                    self.sizes[i] / len(idx))
        sums = dict(zip(SUMS, tf.unstack(raw * tf.constant(scale), axis=1)))
        sums["update_sq_adam"] = sums["update_sq_adam"] * tf.where(
            tf.constant(sources.decayed), 1.0, step.alpha * step.alpha)
        return sums

    def _derived_columns(self, x, sums, sources, step, grad_sq, no_moments):
        """The stats columns computed from the sums ([V] each, by name).

        NaN where a statistic does not exist (x + NaN is NaN, x + 0 is x).
        """
        nan = float("nan")
        no_grad = self.no_grad(x.grads)
        n = tf.constant(np.maximum(self.sizes, 1).astype(np.float32))
        update_sq = tf.where(
            tf.constant(sources.exact), sums["update_sq_exact"], tf.where(
                tf.constant(sources.from_adam), sums["update_sq_adam"],
                tf.where(tf.constant(sources.from_sgd),
                         tf.square(step.lr) * grad_sq, nan)))
        weight_norm = tf.sqrt(sums["weight_sq"])
        bias_2 = step.bias_2
        return {
            "grad_norm": tf.sqrt(grad_sq) + no_grad,
            "weight_norm": weight_norm,
            "mu_rms": tf.sqrt(sums["mu_sq"] / n) + no_moments,
            "nu_sqrt_rms": tf.sqrt(sums["nu_sum"] / bias_2 / n) + no_moments,
            "rms_ratio": (tf.sqrt(sums["ratio_sq"] * bias_2 / n) + no_moments
                          + no_grad),
            "eff_step_max": (step.lr * tf.sqrt(bias_2) / (
                tf.sqrt(tf.maximum(sums["nu_min"], 0.0)) + step.epsilon)
                + no_moments),
            "update_ratio": tf.sqrt(update_sq) / tf.maximum(weight_norm, _TINY),
        }

    def _medians(self, x, step, no_moments, with_median, median_carry):
        """Medians of sqrt(v_hat)/eps [V] now, or `median_carry`."""

        def medians():
            med_v = strided_medians([
                None if x.nu[i] is None else self.sample(i, x.nu[i])
                for i in range(len(self.variables))])
            return (tf.sqrt(tf.maximum(med_v, 0.0) / step.bias_2) / step.epsilon
                    + no_moments)

        if isinstance(with_median, bool):
            return medians() if with_median else median_carry
        return cond(with_median, medians, lambda: median_carry)

    def _nonfinite_counts(self, x, raw, grad_sq):
        """The non-finite count columns ([V] each, by name).

        Counted exactly, but only on steps where some sum of squares is not
        finite: on healthy steps that costs nothing.
        """
        checked = tf.gather(raw, [_SUM[name] for name in _FINITE_CHECKED], axis=1)
        all_finite = tf.logical_and(
            tf.reduce_all(tf.math.is_finite(checked)),
            tf.reduce_all(tf.math.is_finite(grad_sq)))
        count = len(self.variables)

        def counts():
            # A variable's gradient, weights and moments have its shape:
            # stacked, one count per tensor takes a few nodes per variable.
            # Each count goes to its (variable, column) cell, the two
            # moments to the same one.
            per_variable, cells = [], []
            for i in range(count):
                tensors = [(x.grads[i], 0), (x.weights[i], 1), (x.mu[i], 2),
                           (x.nu[i], 2)]
                tensors = [(t, c) for t, c in tensors if t is not None]
                stacked = tf.reshape(tf.stack([t for t, _ in tensors]),
                                     [len(tensors), -1])
                per_variable.append(tf.reduce_sum(tf.cast(
                    tf.logical_not(tf.math.is_finite(stacked)), tf.float32),
                    axis=1))
                cells += [i * len(_COUNTS) + c for _, c in tensors]
            found = tf.math.unsorted_segment_sum(
                tf.concat(per_variable, 0), cells, count * len(_COUNTS))
            return tf.reshape(found, [count, len(_COUNTS)])

        found = cond(all_finite, lambda: tf.zeros([count, len(_COUNTS)]), counts)
        return dict(zip(_COUNTS, tf.unstack(found, axis=1)))

    def _input_row_norms(self, g):
        """The first kernel's gradient row norms [F], or None."""
        i = self.input_index
        if i is None or g[i] is None:
            return None
        axes = [a for a in range(len(g[i].shape)) if a != len(g[i].shape) - 2]
        return tf.sqrt(tf.reduce_sum(tf.square(g[i]), axis=axes))
