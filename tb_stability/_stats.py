"""In-graph statistics of gradients, weights and Adam moments.

Everything here runs inside the training step (eager, `tf.function` or XLA):
one pass of reductions per tensor, no host synchronisation, results stacked
into one `[variables, stats]` float32 matrix whose columns are
`metadata.STAT_COLUMNS`.
"""

import tensorflow as tf

from tb_stability import metadata

_S = {name: i for i, name in enumerate(metadata.STAT_COLUMNS)}
_TINY = 1e-30
# Entries sampled (strided) per tensor for the median of sqrt(v_hat)/eps.
MEDIAN_SAMPLE = 256
# Variables with fewer entries do not count towards rms_ratio_max: for a
# single entry g^2/v_hat is a chi-square(1) draw and exceeds 9 every ~400 steps.
RMS_MIN_SIZE = 32
# The first kernel's gradient row norms are kept up to this many rows.
MAX_INPUT_ROWS = 4096


def _f32(x):
    return tf.cast(x, tf.float32)


def _nonfinite_count(x):
    return tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(x)), tf.float32))


def _median_sqrt_nu_over_eps(v_hat, epsilon):
    flat = tf.reshape(v_hat, [-1])
    n = flat.shape[0]
    if n is None:
        return tf.constant(float("nan"))
    stride = max(1, n // MEDIAN_SAMPLE)
    sample = tf.sort(flat[::stride])
    count = (n + stride - 1) // stride
    median = sample[count // 2]
    return tf.sqrt(tf.maximum(median, 0.0)) / epsilon


class VariableStats:
    """Computes the per-variable statistics of one training step.

    Arguments:
      adapter: an `_slots.OptimizerAdapter`.
      variables: the trainable variables, in the order of the stats rows.
    """

    def __init__(self, adapter, variables):
        self.adapter = adapter
        self.variables = list(variables)
        self.sizes = [v.shape.num_elements() or 0 for v in self.variables]
        self.rms_mask = [s >= RMS_MIN_SIZE for s in self.sizes]
        if not any(self.rms_mask):
            self.rms_mask = [True] * len(self.variables)
        self.input_index = None
        for i, v in enumerate(self.variables):
            if len(v.shape) >= 2 and v.shape[-2] is not None:
                if v.shape[-2] <= MAX_INPUT_ROWS:
                    self.input_index = i
                break

    @property
    def input_rows(self):
        """Number of rows of the first kernel's gradient, or 0."""
        if self.input_index is None:
            return 0
        return int(self.variables[self.input_index].shape[-2])

    def compute(self, grads, weights_before=None, with_median=True,
                median_carry=None):
        """Returns (stats [V, S], input_row_norms [F] or None).

        Arguments:
          grads: gradients (as the optimizer saw them, before clipping), one
            per variable; None entries give NaN gradient statistics.
          weights_before: optional weight values before the update; when
            given, the update ratio is measured exactly, else it is derived
            from Adam's moments (Adam family) or from the gradient (plain SGD).
          with_median: bool tensor or Python bool: compute the median of
            sqrt(v_hat)/eps now (a sort on a strided sample), else reuse
            `median_carry` [V].
          median_carry: float32 [V] of the last medians.
        """
        adapter = self.adapter
        lr = adapter.learning_rate()
        t = adapter.iterations()
        beta_1 = float(getattr(adapter.inner, "beta_1", 0.9))
        beta_2 = float(getattr(adapter.inner, "beta_2", 0.999))
        epsilon = float(getattr(adapter.inner, "epsilon", 1e-7))
        wd = float(getattr(adapter.inner, "weight_decay", 0.0) or 0.0)
        momentum = float(getattr(adapter.inner, "momentum", 0.0) or 0.0)
        nan = tf.constant(float("nan"))
        bias_2 = 1.0 - tf.pow(beta_2, tf.maximum(t, 1.0))
        bias_1 = 1.0 - tf.pow(beta_1, tf.maximum(t, 1.0))
        alpha = lr * tf.sqrt(bias_2) / bias_1

        rows = []
        medians = []
        finite_probe = []
        count_inputs = []
        input_row_norms = None
        for i, (g, var) in enumerate(zip(grads, self.variables)):
            w = _f32(tf.convert_to_tensor(var))
            n = float(max(self.sizes[i], 1))
            w_sq = tf.reduce_sum(tf.square(w))
            if g is None:
                g_sq = nan
            else:
                g = _f32(tf.convert_to_tensor(g))
                g_sq = tf.reduce_sum(tf.square(g))
                if i == self.input_index:
                    axes = [a for a in range(len(g.shape)) if a != len(g.shape) - 2]
                    input_row_norms = tf.sqrt(
                        tf.reduce_sum(tf.square(g), axis=axes)
                    )
            mu, nu = adapter.moments(var)
            has_moments = mu is not None and nu is not None
            if has_moments:
                m = _f32(tf.convert_to_tensor(mu))
                v = _f32(tf.convert_to_tensor(nu))
                v_hat = v / bias_2
                m_sq = tf.reduce_sum(tf.square(m))
                mu_rms = tf.sqrt(m_sq / n)
                nu_sqrt_rms = tf.sqrt(tf.reduce_sum(v_hat) / n)
                if g is None:
                    rms_ratio = nan
                else:
                    ratio = tf.square(g) / tf.maximum(v_hat, epsilon * epsilon)
                    rms_ratio = tf.sqrt(tf.reduce_sum(ratio) / n)
                eff_step_max = lr * tf.sqrt(bias_2) / (
                    tf.sqrt(tf.maximum(tf.reduce_min(v), 0.0)) + epsilon
                )
                if isinstance(with_median, bool):
                    median = (
                        _median_sqrt_nu_over_eps(v_hat, epsilon)
                        if with_median
                        else median_carry[i]
                    )
                else:
                    median = tf.cond(
                        with_median,
                        lambda v_hat=v_hat: _median_sqrt_nu_over_eps(v_hat, epsilon),
                        lambda i=i: median_carry[i],
                    )
                moment_sum = m_sq + tf.reduce_sum(v)
                count_inputs.append((m, v))
            else:
                mu_rms = nu_sqrt_rms = rms_ratio = eff_step_max = median = nan
                moment_sum = tf.constant(0.0)
                count_inputs.append(None)

            if weights_before is not None and weights_before[i] is not None:
                d_sq = tf.reduce_sum(tf.square(w - _f32(weights_before[i])))
            elif has_moments:
                step = alpha * m / (tf.sqrt(v) + epsilon)
                if wd and adapter.weight_decay_applies(var):
                    step = step + lr * wd * w
                d_sq = tf.reduce_sum(tf.square(step))
            elif g is not None and momentum == 0.0 and adapter.name == "SGD":
                d_sq = tf.square(lr) * g_sq
            else:
                d_sq = nan
            update_ratio = tf.sqrt(d_sq) / tf.maximum(tf.sqrt(w_sq), _TINY)

            rows.append([
                tf.sqrt(g_sq), tf.constant(0.0), tf.sqrt(w_sq), tf.constant(0.0),
                update_ratio, mu_rms, nu_sqrt_rms, rms_ratio, eff_step_max,
                median, tf.constant(0.0),
            ])
            medians.append(median)
            finite_probe.append(
                (g_sq if g is not None else tf.constant(0.0)) + w_sq + moment_sum
            )

        stats = tf.stack([tf.stack(r) for r in rows])
        # Non-finite entries are counted exactly, but only on steps where some
        # sum of squares is not finite: on healthy steps that costs nothing.
        probe = tf.stack(finite_probe)
        all_finite = tf.reduce_all(tf.math.is_finite(probe))

        def _counts():
            cols = []
            for g, var, moments in zip(grads, self.variables, count_inputs):
                g_bad = _nonfinite_count(_f32(g)) if g is not None else tf.constant(0.0)
                w_bad = _nonfinite_count(_f32(tf.convert_to_tensor(var)))
                m_bad = (
                    _nonfinite_count(moments[0]) + _nonfinite_count(moments[1])
                    if moments is not None
                    else tf.constant(0.0)
                )
                cols.append(tf.stack([g_bad, w_bad, m_bad]))
            return tf.stack(cols)

        zeros = tf.zeros([len(self.variables), 3])
        counts = tf.cond(all_finite, lambda: zeros, _counts)
        col_idx = [_S["grad_nonfinite"], _S["weight_nonfinite"], _S["moment_nonfinite"]]
        indices = [[r, c] for r in range(len(self.variables)) for c in col_idx]
        stats = tf.tensor_scatter_nd_update(
            stats, indices, tf.reshape(counts, [-1])
        )
        return stats, input_row_norms, tf.stack(medians)


def global_from_stats(stats, rms_mask):
    """Global columns derived from the per-variable stats matrix.

    Returns a dict: grad_norm, weight_norm, update_ratio, rms_ratio_max,
    eff_step_max, nonfinite (gradients, weights and moments).
    """
    col = lambda name: stats[:, _S[name]]  # noqa: E731
    grad_norm = tf.sqrt(tf.reduce_sum(tf.square(col("grad_norm"))))
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
    return {
        "grad_norm": grad_norm,
        "weight_norm": weight_norm,
        "update_ratio": update_norm / tf.maximum(weight_norm, _TINY),
        "rms_ratio_max": rms_ratio_max,
        "eff_step_max": eff_step_max,
        "nonfinite": nonfinite,
    }


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
