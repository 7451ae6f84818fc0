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
    """Per-feature (mean, std, min, max) of a batch: [features, 4] float32.

    Features are the last axis; all other axes are pooled.
    """
    x = tf.cast(inputs, tf.float32)
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
