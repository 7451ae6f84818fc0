"""In-graph statistics of gradients, weights and Adam moments.

Everything here runs inside the training step (eager, `tf.function` or XLA):
one pass of reductions per tensor, no host synchronisation, results stacked
into one `[variables, stats]` float32 matrix whose columns are
`metadata.STAT_COLUMNS`.
"""

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2

from tb_stability import metadata

_S = metadata.STAT
_TINY = 1e-30
# Entries sampled (strided) per tensor for the median of sqrt(v_hat)/eps.
MEDIAN_SAMPLE = 256
# Variables with fewer entries do not count towards rms_ratio_max: for a
# single entry g^2/v_hat is a chi-square(1) draw and exceeds 9 every ~400 steps.
RMS_MIN_SIZE = 32
# Tensors of more entries than this have their statistics other than the
# gradient norm estimated from a fixed sample of this many entries
# (see VariableStats); 0 computes everything over every entry.
SAMPLE_SIZE = 8192
# The first kernel's gradient row norms are kept up to this many rows.
MAX_INPUT_ROWS = 4096


def cond(pred, true_fn, false_fn):
    """`tf.cond` whose branches run as functions, only the one taken.

    Inside a `tf.function` (not XLA) TensorFlow lowers a `tf.cond` to
    Switch/Merge nodes, and the executor still walks every node of the
    branch not taken: for a branch of a few thousand nodes (the full
    statistics of 100 variables) that walk cost more on each step than
    computing the branch every eighth step. Kept as an `If` node, the branch
    not taken costs nothing.
    """
    if tf.executing_eagerly():
        return tf.cond(pred, true_fn, false_fn)
    graph = tf.compat.v1.get_default_graph()
    before = len(graph.get_operations())
    out = tf.cond(pred, true_fn, false_fn)
    for op in graph.get_operations()[before:]:
        if op.type in ("If", "StatelessIf"):
            op._set_attr("_lower_using_switch_merge",  # pylint: disable=protected-access
                         attr_value_pb2.AttrValue(b=False))
    return out


def _f32(x):
    return tf.cast(x, tf.float32)


def _nonfinite_count(x):
    return tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(x)), tf.float32))


def _median(x):
    """Median of a strided sample of at most MEDIAN_SAMPLE entries of x."""
    flat = tf.reshape(x, [-1])
    n = flat.shape[0]
    if n is None:
        return tf.constant(float("nan"))
    stride = max(1, n // MEDIAN_SAMPLE)
    sample = tf.sort(flat[::stride][:MEDIAN_SAMPLE])
    count = min(MEDIAN_SAMPLE, (n + stride - 1) // stride)
    return sample[count // 2]


# A sample is made of runs of RUN_LENGTH consecutive entries (one cache
# line of float32) at random places: one gather of whole runs costs about
# what a strided slice does, while a gather of single random entries cost
# about as much as a pass over the whole tensor.
RUN_LENGTH = 16


def _sample_runs(n, k, seed):
    """Sorted indices of the runs (of RUN_LENGTH entries, in the tensor
    seen as [n // RUN_LENGTH, RUN_LENGTH]) of a sample of about k of its n
    entries, drawn at random but the same for the same seed.
    """
    runs = max(1, k // RUN_LENGTH)
    return np.sort(np.random.default_rng(seed).choice(
        n // RUN_LENGTH, runs, replace=False)).astype(np.int32)


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

    Arguments:
      adapter: an `_slots.OptimizerAdapter`.
      variables: the trainable variables, in the order of the stats rows.
      sample_size: entries sampled from larger tensors; 0 for exact
        statistics over every entry; None for `SAMPLE_SIZE`.
    """

    def __init__(self, adapter, variables, sample_size=None):
        self.adapter = adapter
        self.variables = list(variables)
        self.sizes = [v.shape.num_elements() or 0 for v in self.variables]
        k = SAMPLE_SIZE if sample_size is None else int(sample_size)
        # Per variable: the runs of its sample (`_sample_runs`), or None;
        # `samples`: the flat indices of the entries they hold.
        self.runs = [
            _sample_runs(n, k, seed=i)
            if k >= RUN_LENGTH and n > k and v.shape.is_fully_defined() else None
            for i, (n, v) in enumerate(zip(self.sizes, self.variables))
        ]
        self.samples = [
            None if r is None else
            (r.astype(np.int64)[:, None] * RUN_LENGTH
             + np.arange(RUN_LENGTH)[None, :]).ravel()
            for r in self.runs
        ]
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
        """X (a value of variable i, or alike) as its statistics see it:
        the sampled entries (flat, in the order of `samples[i]`), or all of
        it.
        """
        runs = self.runs[i]
        if runs is None or x.shape.num_elements() == len(self.samples[i]):
            return x
        flat = tf.reshape(x, [-1])
        whole = (self.sizes[i] // RUN_LENGTH) * RUN_LENGTH
        if whole != self.sizes[i]:
            flat = flat[:whole]
        return tf.reshape(
            tf.gather(tf.reshape(flat, [-1, RUN_LENGTH]), runs), [-1])

    @property
    def input_rows(self):
        """Number of rows of the first kernel's gradient, or 0."""
        if self.input_index is None:
            return 0
        return int(self.variables[self.input_index].shape[-2])

    def grad_sums(self, grads):
        """Exact sums of squares of the gradients, float32 [V] (0 for a None
        gradient): the part of the statistics computed every step.
        """
        zero = tf.constant(0.0)
        return 2.0 * tf.stack([
            zero if g is None else tf.nn.l2_loss(_f32(tf.convert_to_tensor(g)))
            for g in grads])

    def no_grad(self, grads):
        """float32 [V]: NaN where a variable has no gradient, else 0."""
        return tf.constant(np.where([g is None for g in grads], np.nan, 0.0)
                           .astype(np.float32))

    def light(self, grads, grad_sq):
        """The stats matrix of a step whose statistics other than the
        gradient norms are not computed: NaN in those columns, zero
        non-finite counts (a step with a non-finite gradient or loss is
        always computed in full).
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
        """Returns (stats [V, S], input_row_norms [F] or None, medians [V]).

        Arguments:
          grads: gradients (as the optimizer saw them, before clipping), one
            per variable; None entries give NaN gradient statistics.
          grad_sq: `grad_sums(grads)` when already computed.
          weights_before: optional weight values before the update; when
            given, the update ratio is measured exactly, else it is derived
            from Adam's moments (Adam family) or from the gradient (plain SGD).
          with_median: bool tensor or Python bool: compute the median of
            sqrt(v_hat)/eps now (a sort on a strided sample), else reuse
            `median_carry` [V].
          median_carry: float32 [V] of the last medians.
        """
        adapter = self.adapter
        count = len(self.variables)
        lr = adapter.learning_rate()
        t = adapter.iterations()
        beta_1 = float(getattr(adapter.inner, "beta_1", 0.9))
        beta_2 = float(getattr(adapter.inner, "beta_2", 0.999))
        epsilon = float(getattr(adapter.inner, "epsilon", 1e-7))
        wd = float(getattr(adapter.inner, "weight_decay", 0.0) or 0.0)
        momentum = float(getattr(adapter.inner, "momentum", 0.0) or 0.0)
        bias_2 = 1.0 - tf.pow(beta_2, tf.maximum(t, 1.0))
        bias_1 = 1.0 - tf.pow(beta_1, tf.maximum(t, 1.0))
        alpha = lr * tf.sqrt(bias_2) / bias_1
        # max(v_hat, eps^2) = max(v, eps^2 * bias_2) / bias_2
        v_floor = epsilon * epsilon * bias_2

        g = [None if x is None else _f32(tf.convert_to_tensor(x)) for x in grads]
        w = [_f32(tf.convert_to_tensor(v)) for v in self.variables]
        m, v = [], []
        for var in self.variables:
            mu, nu = adapter.moments(var)
            ok = mu is not None and nu is not None
            m.append(_f32(tf.convert_to_tensor(mu)) if ok else None)
            v.append(_f32(tf.convert_to_tensor(nu)) if ok else None)
        w0 = [None] * count
        if weights_before is not None:
            w0 = [None if x is None else _f32(x) for x in weights_before]
        # Where each variable's update comes from (Python constants).
        exact = np.array([x is not None for x in w0])
        from_adam = np.array([x is not None for x in m]) & ~exact
        wd_mask = [bool(wd) and from_adam[i] and adapter.weight_decay_applies(var)
                   for i, var in enumerate(self.variables)]

        if grad_sq is None:
            grad_sq = self.grad_sums(grads)
        zero = tf.constant(0.0)
        rows = []  # per variable, the 7 sums below (squares halved)
        for i in range(count):
            # Fused L2Loss, sum(x^2) / 2, for the sums of squares: one node
            # and one pass over the tensor instead of two. (The gradient's,
            # exact, is grad_sq.)
            gi, mi, vi = g[i], m[i], v[i]
            if self.samples[i] is not None:
                gi = None if gi is None else self.sample(i, gi)
                mi = None if mi is None else self.sample(i, mi)
                vi = None if vi is None else self.sample(i, vi)
            wi = self.sample(i, w[i])
            q = [tf.nn.l2_loss(wi)]
            if mi is not None:
                q += [tf.nn.l2_loss(mi), tf.reduce_sum(vi),
                      zero if gi is None else tf.nn.l2_loss(
                          gi * tf.math.rsqrt(tf.maximum(vi, v_floor))),
                      tf.reduce_min(vi)]
            else:
                q += [zero] * 4
            q.append(tf.nn.l2_loss(wi - self.sample(i, w0[i])) if exact[i] else zero)
            if not from_adam[i]:
                q.append(zero)
            elif wd_mask[i]:
                q.append(tf.nn.l2_loss(alpha * mi / (tf.sqrt(vi) + epsilon)
                                       + lr * wd * wi))
            else:  # alpha^2 is applied to the sum
                q.append(tf.nn.l2_loss(mi / (tf.sqrt(vi) + epsilon)))
            rows.append(tf.stack(q))
        raw = tf.stack(rows)
        # Undo L2Loss's halving; scale sums over a sample to the whole tensor.
        scale = np.ones([count, 7], np.float32)
        scale[:, [0, 1, 3, 5, 6]] = 2.0
        for i, idx in enumerate(self.samples):
            if idx is not None:
                scale[i, [0, 1, 2, 3, 5, 6]] *= self.sizes[i] / len(idx)
        w_sq, m_sq, v_sum, ratio_sum, v_min, d_exact, d_adam = tf.unstack(
            raw * tf.constant(scale), axis=1)
        d_adam = d_adam * tf.where(tf.constant(wd_mask), 1.0, alpha * alpha)

        # NaN where a statistic does not exist (x + NaN is NaN, x + 0 is x).
        nan = float("nan")
        no_grad = self.no_grad(g)
        no_moments = tf.constant(np.where([x is None for x in m], nan, 0.0).astype(np.float32))
        n = tf.constant(np.maximum(self.sizes, 1).astype(np.float32))
        from_sgd = np.array([x is not None for x in g]) & ~exact & ~from_adam & (
            momentum == 0.0 and adapter.name == "SGD")
        d_sq = tf.where(tf.constant(exact), d_exact, tf.where(
            tf.constant(from_adam), d_adam,
            tf.where(tf.constant(from_sgd), tf.square(lr) * grad_sq, nan)))
        weight_norm = tf.sqrt(w_sq)
        mu_rms = tf.sqrt(m_sq / n) + no_moments
        nu_sqrt_rms = tf.sqrt(v_sum / bias_2 / n) + no_moments
        rms_ratio = tf.sqrt(ratio_sum * bias_2 / n) + no_moments + no_grad
        eff_step_max = lr * tf.sqrt(bias_2) / (
            tf.sqrt(tf.maximum(v_min, 0.0)) + epsilon) + no_moments
        update_ratio = tf.sqrt(d_sq) / tf.maximum(weight_norm, _TINY)

        def _medians():
            med_v = tf.stack([zero if v[i] is None else _median(self.sample(i, v[i]))
                              for i in range(count)])
            return tf.sqrt(tf.maximum(med_v, 0.0) / bias_2) / epsilon + no_moments

        if isinstance(with_median, bool):
            medians = _medians() if with_median else median_carry
        else:
            medians = cond(with_median, _medians, lambda: median_carry)

        # Non-finite entries are counted exactly, but only on steps where some
        # sum of squares is not finite: on healthy steps that costs nothing.
        all_finite = tf.logical_and(
            tf.reduce_all(tf.math.is_finite(raw[:, :3])),
            tf.reduce_all(tf.math.is_finite(grad_sq)))

        def _counts():
            return tf.stack([tf.stack([
                zero if g[i] is None else _nonfinite_count(g[i]),
                _nonfinite_count(w[i]),
                zero if m[i] is None
                else _nonfinite_count(m[i]) + _nonfinite_count(v[i]),
            ]) for i in range(count)])

        counts = cond(all_finite, lambda: tf.zeros([count, 3]), _counts)
        grad_bad, weight_bad, moment_bad = tf.unstack(counts, axis=1)
        columns = {
            "grad_norm": tf.sqrt(grad_sq) + no_grad,
            "grad_nonfinite": grad_bad,
            "weight_norm": weight_norm,
            "weight_nonfinite": weight_bad,
            "update_ratio": update_ratio,
            "mu_rms": mu_rms,
            "nu_sqrt_rms": nu_sqrt_rms,
            "rms_ratio": rms_ratio,
            "eff_step_max": eff_step_max,
            "sqrt_nu_over_eps_median": medians,
            "moment_nonfinite": moment_bad,
        }
        stats = tf.stack([columns[c] for c in metadata.STAT_COLUMNS], axis=1)

        input_row_norms = None
        i = self.input_index
        if i is not None and g[i] is not None:
            axes = [a for a in range(len(g[i].shape)) if a != len(g[i].shape) - 2]
            input_row_norms = tf.sqrt(tf.reduce_sum(tf.square(g[i]), axis=axes))
        return stats, input_row_norms, medians


# What `global_from_stats` returns, in this order.
GLOBAL_FROM_STATS = ("weight_norm", "update_ratio", "rms_ratio_max",
                     "eff_step_max", "nonfinite")
# ... for a step computed by `VariableStats.light`.
GLOBAL_LIGHT = np.array([np.nan, np.nan, np.nan, np.nan, 0.0], np.float32)


def global_from_stats(stats, rms_mask):
    """Global columns derived from the per-variable stats matrix: float32
    [5] in the order of `GLOBAL_FROM_STATS` (weight_norm, update_ratio,
    rms_ratio_max, eff_step_max, nonfinite: gradients, weights and moments).
    The global gradient norm comes from the gradients' sums of squares.
    """
    col = lambda name: stats[:, _S[name]]  # noqa: E731
    weight_norm = tf.sqrt(tf.reduce_sum(tf.square(col("weight_norm"))))
    update_norm = tf.sqrt(
        tf.reduce_sum(tf.square(col("update_ratio") * col("weight_norm")))
    )
    mask = tf.constant(rms_mask)
    rms = tf.boolean_mask(col("rms_ratio"), mask)
    # NaN (no Adam) stays NaN: reduce_max propagates it only if all are NaN.
    rms_ratio_max = tf.reduce_max(rms)
    eff_step_max = tf.reduce_max(col("eff_step_max"))
    nonfinite = (
        tf.reduce_sum(col("grad_nonfinite"))
        + tf.reduce_sum(col("weight_nonfinite"))
        + tf.reduce_sum(col("moment_nonfinite"))
    )
    return tf.stack([weight_norm, update_norm / tf.maximum(weight_norm, _TINY),
                     rms_ratio_max, eff_step_max, nonfinite])


def input_stats(inputs):
    """Per-feature (mean, std, min, max) of a batch: [features, 4] float32.

    Features are the last axis; all other axes are pooled.
    """
    x = _f32(inputs)
    if len(x.shape) == 0:
        x = tf.reshape(x, [1, 1])
    elif len(x.shape) == 1:
        x = tf.reshape(x, [-1, 1])
    x = tf.reshape(x, [-1, x.shape[-1]])
    mean = tf.reduce_mean(x, axis=0)
    std = tf.math.reduce_std(x, axis=0)
    return tf.stack(
        [mean, std, tf.reduce_min(x, axis=0), tf.reduce_max(x, axis=0)], axis=1
    )
