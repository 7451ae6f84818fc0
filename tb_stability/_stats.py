"""In-graph statistics of gradients, weights and Adam moments.

Everything here runs inside the training step (eager, `tf.function` or XLA):
one pass of reductions per tensor, no host synchronisation, results stacked
into one `[variables, stats]` float32 matrix whose columns are
`metadata.STAT_COLUMNS`.
"""

import numpy as np
import tensorflow as tf

from tb_stability import metadata

_S = {name: i for i, name in enumerate(metadata.STAT_COLUMNS)}
_TINY = 1e-30
# Entries sampled (strided) per tensor for the median of sqrt(v_hat)/eps.
MEDIAN_SAMPLE = 256
# Variables with fewer entries do not count towards rms_ratio_max: for a
# single entry g^2/v_hat is a chi-square(1) draw and exceeds 9 every ~400 steps.
RMS_MIN_SIZE = 32
# Variables of at most this many entries are reduced together (see
# VariableStats); larger ones one by one.
PACK_MAX = 1 << 14
# ... up to this many entries in all (the segment ids are a graph constant).
PACK_TOTAL = 1 << 21
# The first kernel's gradient row norms are kept up to this many rows.
MAX_INPUT_ROWS = 4096


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


class VariableStats:
    """Computes the per-variable statistics of one training step.

    The cost of this runs every step, so it is counted in graph nodes:
    variables of at most `PACK_MAX` entries are flattened into one vector
    per quantity (gradient, weight, m, v, previous weight) and reduced by
    segment, a fixed number of nodes for all of them; larger variables are
    reduced one by one (their arithmetic outweighs the nodes). Everything
    after the reductions works on `[variables]` vectors.

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
        fully_defined = [v.shape.is_fully_defined() for v in self.variables]
        self.packed, total = [], 0
        for i, size in enumerate(self.sizes):
            if 0 < size <= PACK_MAX and fully_defined[i] and (
                    total + size <= PACK_TOTAL):
                self.packed.append(i)
                total += size
        packed = set(self.packed)
        self.solo = [i for i in range(len(self.variables)) if i not in packed]
        # Row i of the [packed + solo] matrices is variable order[i].
        order = self.packed + self.solo
        self._perm = np.argsort(np.array(order, np.int64)).astype(np.int32)
        sizes = [self.sizes[i] for i in self.packed]
        self._segments = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
        # Strided samples of each packed v for the median of sqrt(v_hat)/eps:
        # a [packed, MEDIAN_SAMPLE] gather into v (padding points at an
        # appended +inf) and the row position of each median.
        total = int(sum(sizes))
        idx = np.full([len(sizes), MEDIAN_SAMPLE], total, np.int32)
        mid = np.zeros([len(sizes)], np.int32)
        start = 0
        for r, n in enumerate(sizes):
            stride = max(1, n // MEDIAN_SAMPLE)
            picks = np.arange(0, n, stride)[:MEDIAN_SAMPLE]
            idx[r, : len(picks)] = start + picks
            mid[r] = len(picks) // 2
            start += n
        self._median_idx, self._median_mid = idx, mid

    @property
    def input_rows(self):
        """Number of rows of the first kernel's gradient, or 0."""
        if self.input_index is None:
            return 0
        return int(self.variables[self.input_index].shape[-2])

    def compute(self, grads, weights_before=None, with_median=True,
                median_carry=None):
        """Returns (stats [V, S], input_row_norms [F] or None, medians [V]).

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

        def step_of(i, m_i, v_i, w_i):
            step = alpha * m_i / (tf.sqrt(v_i) + epsilon)
            return step + lr * wd * w_i if wd_mask[i] else step

        zero = tf.constant(0.0)
        cols = []  # [P, 8] packed, then [1, 8] per solo variable
        if self.packed:
            P = self.packed
            ids = tf.constant(self._segments)

            def flat(parts):
                return tf.concat(
                    [tf.zeros([self.sizes[i]]) if x is None
                     else x if len(x.shape) == 1 else tf.reshape(x, [-1])
                     for i, x in zip(P, parts)], 0)

            def seg_sum(x):  # the unsorted form is the one XLA compiles
                return tf.math.unsorted_segment_sum(x, ids, len(P))

            zeros = tf.zeros([len(P)])
            gf, wf = flat([g[i] for i in P]), flat([w[i] for i in P])
            g_sq_e = tf.square(gf)
            q = [seg_sum(g_sq_e), seg_sum(tf.square(wf))]
            if any(m[i] is not None for i in P):
                mf, vf = flat([m[i] for i in P]), flat([v[i] for i in P])
                q += [seg_sum(tf.square(mf)), seg_sum(vf),
                      seg_sum(g_sq_e / tf.maximum(vf, v_floor)),
                      tf.math.unsorted_segment_min(vf, ids, len(P))]
            else:
                mf = vf = None
                q += [zeros] * 4
            q.append(seg_sum(tf.square(wf - flat([w0[i] for i in P])))
                     if exact[P].any() else zeros)
            if from_adam[P].any():
                step = alpha * mf / (tf.sqrt(vf) + epsilon)
                if any(wd_mask[i] for i in P):
                    mask = np.repeat([wd_mask[i] for i in P],
                                     [self.sizes[i] for i in P])
                    step = step + tf.constant(mask.astype(np.float32)) * (lr * wd) * wf
                q.append(seg_sum(tf.square(step)))
            else:
                q.append(zeros)
            cols.append(tf.stack(q, axis=1))
            flats = (gf, wf, mf, vf)
        for i in self.solo:
            g_sq = zero if g[i] is None else tf.reduce_sum(tf.square(g[i]))
            q = [g_sq, tf.reduce_sum(tf.square(w[i]))]
            if m[i] is not None:
                ratio = (zero if g[i] is None else tf.reduce_sum(
                    tf.square(g[i]) / tf.maximum(v[i], v_floor)))
                q += [tf.reduce_sum(tf.square(m[i])), tf.reduce_sum(v[i]),
                      ratio, tf.reduce_min(v[i])]
            else:
                q += [zero] * 4
            q.append(tf.reduce_sum(tf.square(w[i] - w0[i])) if exact[i] else zero)
            q.append(tf.reduce_sum(tf.square(step_of(i, m[i], v[i], w[i])))
                     if from_adam[i] else zero)
            cols.append(tf.stack(q)[None])
        raw = tf.gather(tf.concat(cols, 0), self._perm)
        g_sq, w_sq, m_sq, v_sum, ratio_sum, v_min, d_exact, d_adam = tf.unstack(
            raw, axis=1)

        # NaN where a statistic does not exist (x + NaN is NaN, x + 0 is x).
        nan = float("nan")
        no_grad = tf.constant(np.where([x is None for x in g], nan, 0.0).astype(np.float32))
        no_moments = tf.constant(np.where([x is None for x in m], nan, 0.0).astype(np.float32))
        n = tf.constant(np.maximum(self.sizes, 1).astype(np.float32))
        from_sgd = np.array([x is not None for x in g]) & ~exact & ~from_adam & (
            momentum == 0.0 and adapter.name == "SGD")
        d_sq = tf.where(tf.constant(exact), d_exact, tf.where(
            tf.constant(from_adam), d_adam,
            tf.where(tf.constant(from_sgd), tf.square(lr) * g_sq, nan)))
        weight_norm = tf.sqrt(w_sq)
        mu_rms = tf.sqrt(m_sq / n) + no_moments
        nu_sqrt_rms = tf.sqrt(v_sum / bias_2 / n) + no_moments
        rms_ratio = tf.sqrt(ratio_sum * bias_2 / n) + no_moments + no_grad
        eff_step_max = lr * tf.sqrt(bias_2) / (
            tf.sqrt(tf.maximum(v_min, 0.0)) + epsilon) + no_moments
        update_ratio = tf.sqrt(d_sq) / tf.maximum(weight_norm, _TINY)

        def _medians():
            parts = []
            if self.packed:
                packed_v = flats[3]
                if packed_v is None:
                    parts.append(tf.zeros([len(self.packed)]))
                else:
                    padded = tf.concat([packed_v, [float("inf")]], 0)
                    sample = tf.sort(tf.gather(padded, self._median_idx), axis=1)
                    parts.append(tf.gather(sample, self._median_mid, batch_dims=1))
            for i in self.solo:
                parts.append(zero[None] if v[i] is None
                             else _median(v[i])[None])
            med_v = tf.gather(tf.concat(parts, 0), self._perm)
            return tf.sqrt(tf.maximum(med_v, 0.0) / bias_2) / epsilon + no_moments

        if isinstance(with_median, bool):
            medians = _medians() if with_median else median_carry
        else:
            medians = tf.cond(with_median, _medians, lambda: median_carry)

        # Non-finite entries are counted exactly, but only on steps where some
        # sum of squares is not finite: on healthy steps that costs nothing.
        all_finite = tf.reduce_all(tf.math.is_finite(raw[:, :4]))

        def _counts():
            parts = []
            if self.packed:
                ids = tf.constant(self._segments)
                gf, wf, mf, vf = flats
                bad = lambda x: tf.math.unsorted_segment_sum(  # noqa: E731
                    tf.cast(tf.logical_not(tf.math.is_finite(x)), tf.float32),
                    ids, len(self.packed))
                m_bad = (tf.zeros([len(self.packed)]) if mf is None
                         else bad(mf) + bad(vf))
                parts.append(tf.stack([bad(gf), bad(wf), m_bad], axis=1))
            for i in self.solo:
                parts.append(tf.stack([
                    zero if g[i] is None else _nonfinite_count(g[i]),
                    _nonfinite_count(w[i]),
                    zero if m[i] is None
                    else _nonfinite_count(m[i]) + _nonfinite_count(v[i]),
                ])[None])
            return tf.gather(tf.concat(parts, 0), self._perm)

        counts = tf.cond(all_finite, lambda: tf.zeros([count, 3]), _counts)
        grad_bad, weight_bad, moment_bad = tf.unstack(counts, axis=1)
        columns = {
            "grad_norm": tf.sqrt(g_sq) + no_grad,
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
