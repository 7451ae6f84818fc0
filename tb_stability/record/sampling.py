"""Which entries of a large tensor the statistics see.

A tensor of more than `SAMPLE_SIZE` entries has its statistics other than
the gradient norm estimated from a fixed sample of about that many entries
(the same entries every step, so changes over time are measured on the same
weights). A sample is made of runs of `RUN_LENGTH` consecutive entries (one
cache line of float32) at random places: one gather of whole runs costs
about what a strided slice does, while a gather of single random entries
costs about as much as a pass over the whole tensor.
"""

import numpy as np
import tensorflow as tf

# Tensors of more entries than this have their statistics other than the
# gradient norm estimated from a fixed sample of this many entries
# (see VariableStats); 0 computes everything over every entry.
SAMPLE_SIZE = 8192
# Consecutive entries per run of a sample.
RUN_LENGTH = 16
# Entries sampled (strided) per tensor for the median of sqrt(v_hat)/eps.
MEDIAN_SAMPLE = 256


def sample_runs(n, k, seed):
    """The runs of a sample of about `k` of a tensor's `n` entries.

    Args:
      n: entries of the tensor.
      k: entries wanted.
      seed: the sample's seed: the same seed gives the same runs.

    Returns:
      Sorted int32 indices of runs, in the tensor seen as
      [n // RUN_LENGTH, RUN_LENGTH], drawn at random without replacement.
    """
    runs = max(1, k // RUN_LENGTH)
    return np.sort(np.random.default_rng(seed).choice(
        n // RUN_LENGTH, runs, replace=False)).astype(np.int32)


def strided_sample(x):
    """A strided sample of at most `MEDIAN_SAMPLE` entries of x (flat).

    Returns:
      A float tensor of the sample's entries, or None when the size of `x`
      is unknown.
    """
    flat = tf.reshape(x, [-1])
    n = flat.shape[0]
    if n is None:
        return None
    stride = max(1, n // MEDIAN_SAMPLE)
    count = min(MEDIAN_SAMPLE, (n + stride - 1) // stride)
    return flat[:stride * (count - 1) + 1:stride]


def strided_medians(xs):
    """The upper median of each tensor's strided sample, in one sort.

    The samples (`strided_sample`) are padded with +inf to `MEDIAN_SAMPLE`
    entries, stacked and sorted together: one sort for every tensor, a
    handful of graph nodes per tensor.

    Args:
      xs: a list of float32 tensors (None entries allowed).

    Returns:
      float32 [len(xs)]: each sample's upper median (sorted entry
      `count // 2`); NaN for a tensor of unknown size, 0 for None.
    """
    rows, index, where = [], [], []
    for x in xs:
        sample = None if x is None else strided_sample(x)
        if sample is None:
            where.append("zero" if x is None else "nan")
            continue
        count = int(sample.shape[0])
        if count < MEDIAN_SAMPLE:
            sample = tf.concat([sample, tf.constant(
                np.full([MEDIAN_SAMPLE - count], np.inf, np.float32))], 0)
        where.append(len(rows))
        index.append([len(rows), count // 2])
        rows.append(sample)
    # Appended after the medians: 0 (no tensor) and NaN (unknown size).
    extra = tf.constant([0.0, float("nan")])
    if rows:
        medians = tf.gather_nd(tf.sort(tf.stack(rows)), index)
        table = tf.concat([medians, extra], 0)
    else:
        table = extra
    after = {"zero": len(rows), "nan": len(rows) + 1}
    return tf.gather(table, [after.get(w, w) for w in where])


class Samples:
    """The fixed samples of a list of variables (one per large variable).

    Attributes:
      sizes: entries per variable.
      runs: per variable, the runs of its sample (`sample_runs`, seeded by
        the variable's position), or None when it is not sampled.
      indices: per variable, the flat indices of the entries its runs hold,
        or None.

    Args:
      variables: the variables, in a fixed order.
      sample_size: entries sampled from larger tensors; 0 for none; None
        for `SAMPLE_SIZE`.
    """

    def __init__(self, variables, sample_size=None):
        self.sizes = [v.shape.num_elements() or 0 for v in variables]
        k = SAMPLE_SIZE if sample_size is None else int(sample_size)
        self.runs = [
            sample_runs(n, k, seed=i)
            if k >= RUN_LENGTH and n > k and v.shape.is_fully_defined() else None
            for i, (n, v) in enumerate(zip(self.sizes, variables))
        ]
        self.indices = [
            None if r is None else
            (r.astype(np.int64)[:, None] * RUN_LENGTH
             + np.arange(RUN_LENGTH)[None, :]).ravel()
            for r in self.runs
        ]

    def take(self, i, x):
        """The sampled entries of `x`, a value shaped like variable i.

        Returns:
          Flat entries in the order of `indices[i]`; `x` itself when
          variable i is not sampled or `x` already is its sample.
        """
        runs = self.runs[i]
        if runs is None or x.shape.num_elements() == len(self.indices[i]):
            return x
        flat = tf.reshape(x, [-1])
        whole = (self.sizes[i] // RUN_LENGTH) * RUN_LENGTH
        if whole != self.sizes[i]:
            flat = flat[:whole]
        return tf.reshape(
            tf.gather(tf.reshape(flat, [-1, RUN_LENGTH]), runs), [-1])
