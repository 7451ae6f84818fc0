"""In-graph global columns of a step and per-feature input statistics.

`global_from_stats` reduces the per-variable stats matrix to the global
row's columns it determines; `input_stats` summarises an input batch.
"""

import numpy as np
import tensorflow as tf

from tb_stability import metadata

_S = metadata.STAT
_TINY = 1e-30  # smallest weight norm an update is divided by

# What `global_from_stats` returns, in this order.
GLOBAL_FROM_STATS = ("weight_norm", "update_ratio", "rms_ratio_max",
                     "eff_step_max", "nonfinite")
# ... for a step computed by `VariableStats.light`.
# (NaN where not computed; zero non-finite entries, as a step with any is
# always computed.)
GLOBAL_LIGHT = np.array(
    [0.0 if name == "nonfinite" else np.nan for name in GLOBAL_FROM_STATS],
    np.float32)


def global_from_stats(stats, rms_mask):
    """Global columns derived from the per-variable stats matrix.

    The global gradient norm is not among them: it comes from the gradients'
    sums of squares, on every step.

    Args:
      stats: float32 [V, S], the step's per-variable stats.
      rms_mask: bool per variable, whether it counts towards rms_ratio_max.

    Returns:
      float32 [len(GLOBAL_FROM_STATS)] in the order of `GLOBAL_FROM_STATS`:
      weight_norm, update_ratio, rms_ratio_max, eff_step_max and nonfinite
      (gradients, weights and moments).
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
    """Per-feature statistics of a batch: [features, len(INPUT_COLUMNS)].

    Features are the last axis; all other axes are pooled. Mean, std, min
    and max are over each feature's finite entries (NaN for a feature with
    none); `nonfinite` counts its NaN/Inf entries.
    """
    x = tf.cast(inputs, tf.float32)
    if len(x.shape) == 0:
        x = tf.reshape(x, [1, 1])
    elif len(x.shape) == 1:
        x = tf.reshape(x, [-1, 1])
    x = tf.reshape(x, [-1, x.shape[-1]])
    finite = tf.math.is_finite(x)
    n = tf.reduce_sum(tf.cast(finite, tf.float32), axis=0)
    some = n > 0
    nan = tf.fill(tf.shape(n), float("nan"))
    zero = tf.zeros_like(x)
    mean = tf.where(some, tf.reduce_sum(tf.where(finite, x, zero), axis=0)
                    / tf.maximum(n, 1.0), nan)
    dev = tf.where(finite, x - mean, zero)
    std = tf.where(some, tf.sqrt(tf.reduce_sum(tf.square(dev), axis=0)
                                 / tf.maximum(n, 1.0)), nan)
    inf = tf.fill(tf.shape(x), float("inf"))
    low = tf.where(some, tf.reduce_min(tf.where(finite, x, inf), axis=0), nan)
    high = tf.where(some, tf.reduce_max(tf.where(finite, x, -inf), axis=0), nan)
    rows = tf.cast(tf.shape(x)[0], tf.float32)
    columns = {"mean": mean, "std": std, "min": low, "max": high,
               "nonfinite": rows - n}
    return tf.stack([columns[name] for name in metadata.INPUT_COLUMNS], axis=1)


# The per-replica partial sums `data_partials` returns, in this order: the
# first ones add over replicas, the last four are minima and maxima.
DATA_PARTIALS = ("input_nonfinite", "target_nonfinite", "target_count",
                 "target_sum", "pred_count", "pred_sum",
                 "target_min", "target_max", "pred_min", "pred_max")
DATA_SUMMED = 6


def data_tensors(nest):
    """The numeric tensors of a (possibly nested) batch, in flatten order.

    Leaves that are None, not convertible to a dense tensor (sparse, ragged,
    strings) or not numeric are left out.
    """
    out = []
    if nest is None:
        return out
    for leaf in tf.nest.flatten(nest):
        if leaf is None:
            continue
        try:
            t = tf.convert_to_tensor(leaf)
        except (TypeError, ValueError):
            continue
        if t.dtype.is_floating or t.dtype.is_integer or t.dtype == tf.bool:
            out.append(t)
    return out


def feature_tensor(nest):
    """The tensor whose last axis is recorded per feature, or None.

    The first floating-point tensor of the batch (else its first numeric
    one).
    """
    tensors = data_tensors(nest)
    floats = [t for t in tensors if t.dtype.is_floating]
    return (floats or tensors or [None])[0]


def feature_width(t):
    """Features `input_stats` finds in `t`, or None when unknown.

    Its static last dimension; 1 for a scalar or a vector.
    """
    if t is None:
        return None
    try:
        dims = list(t.shape)  # a TensorShape or a Keras tensor's tuple
    except (TypeError, ValueError):  # unknown rank
        return None
    if len(dims) <= 1:
        return 1
    return None if dims[-1] is None else int(dims[-1])


def _nonfinite(t):
    """Count of NaN/Inf entries of one tensor (float32; 0 if not floating)."""
    if not t.dtype.is_floating:
        return tf.constant(0.0)
    return tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(t)), tf.float32))


def _moments(t):
    """(nonfinite, finite count, finite sum, finite min, finite max) of `t`."""
    x = tf.reshape(tf.cast(t, tf.float32), [-1])
    finite = tf.math.is_finite(x)
    n = tf.reduce_sum(tf.cast(finite, tf.float32))
    size = tf.cast(tf.size(x), tf.float32)
    zero = tf.zeros_like(x)
    inf = tf.fill(tf.shape(x), float("inf"))
    return (size - n, n, tf.reduce_sum(tf.where(finite, x, zero)),
            tf.reduce_min(tf.where(finite, x, inf)),
            tf.reduce_max(tf.where(finite, x, -inf)))


def data_partials(inputs, targets, predictions):
    """One replica's partial data statistics: float32 [len(DATA_PARTIALS)].

    Args:
      inputs: the input batch (any nest of tensors) or None.
      targets: the targets (the first tensor is used) or None.
      predictions: the model's outputs (the first tensor) or None.

    Missing data gives NaN counts, zero finite counts and infinite extrema,
    so that `data_columns` yields NaN for them, alone or summed over
    replicas.
    """
    nan, inf = float("nan"), float("inf")
    values = dict.fromkeys(DATA_PARTIALS, tf.constant(nan))
    xs = data_tensors(inputs)
    if xs:
        values["input_nonfinite"] = tf.add_n([_nonfinite(t) for t in xs])
    for prefix, nest in (("target", targets), ("pred", predictions)):
        ts = data_tensors(nest)
        if ts:
            bad, n, total, low, high = _moments(ts[0])
            if prefix == "target":
                values["target_nonfinite"] = bad
        else:
            n, total = tf.constant(0.0), tf.constant(0.0)
            low, high = tf.constant(inf), tf.constant(-inf)
        values.update({f"{prefix}_count": n, f"{prefix}_sum": total,
                       f"{prefix}_min": low, f"{prefix}_max": high})
    return tf.stack([values[name] for name in DATA_PARTIALS])


def data_columns(partials):
    """{column: float32 scalar} of `DATA_COLUMNS` from (reduced) partials."""
    p = dict(zip(DATA_PARTIALS, tf.unstack(partials)))
    nan = tf.constant(float("nan"))
    out = {"input_nonfinite": p["input_nonfinite"],
           "target_nonfinite": p["target_nonfinite"]}
    for prefix in ("target", "pred"):
        some = p[f"{prefix}_count"] > 0
        out[f"{prefix}_min"] = tf.where(some, p[f"{prefix}_min"], nan)
        out[f"{prefix}_max"] = tf.where(some, p[f"{prefix}_max"], nan)
        out[f"{prefix}_mean"] = tf.where(
            some, p[f"{prefix}_sum"] / tf.maximum(p[f"{prefix}_count"], 1.0), nan)
    return out
