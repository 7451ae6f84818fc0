"""`runtime.gated_cond`: the recording's conditional inside a `tf.function`.

It must give the outputs of the branch taken, run the expensive branch only
when taken, accept what the statistics pass it (None, Python values,
IndexedSlices), and give the same outputs eagerly and under XLA, where it
falls back to `cond`.
"""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tb_stability.record.runtime import gated_cond  # noqa: E402


def _branches(calls):
    def heavy(dense, sparse, missing, scale, carry):
        assert missing is None and scale == 3.0
        calls.assign_add(1)  # a side effect: counts the runs of this branch
        total = tf.reduce_sum(dense) + tf.reduce_sum(sparse.values)
        return dense * scale, tf.reshape(total, [1]), carry + 1.0

    def light():
        return tf.zeros([2, 2]), tf.constant([-1.0]), tf.constant(0.0)

    return heavy, light


def _args():
    dense = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    sparse = tf.IndexedSlices(tf.constant([[5.0, 6.0]]), tf.constant([1]),
                              tf.constant([2, 2]))
    return dense, sparse, None, 3.0, tf.constant(10.0)


@pytest.mark.parametrize("mode", ["function", "eager", "xla"])
def test_gated_cond_gives_the_branch_taken_and_runs_heavy_only_when_taken(mode):
    calls = tf.Variable(0)
    heavy, light = _branches(calls)

    def step(pred):
        return gated_cond(pred, heavy, light, _args())

    if mode == "function":
        step = tf.function(step)
    elif mode == "xla":
        step = tf.function(step, jit_compile=True)
    expected_true = ([[3.0, 6.0], [9.0, 12.0]], [21.0], 11.0)
    expected_false = (np.zeros([2, 2]), [-1.0], 0.0)
    for pred, expected, runs in ((True, expected_true, 1),
                                 (False, expected_false, 1),
                                 (False, expected_false, 1),
                                 (True, expected_true, 2)):
        out = step(tf.constant(pred))
        for got, want in zip(out, expected):
            np.testing.assert_array_equal(got.numpy(), want)
        assert int(calls.numpy()) == runs
    if mode == "function":
        # the gated form, not the fallback: Switch and Merge, no If
        ops = {op.type for op in step.get_concrete_function(
            tf.TensorSpec([], tf.bool)).graph.get_operations()}
        assert {"Switch", "Merge"} <= ops and "If" not in ops


def test_gated_cond_passes_tensors_untouched_to_the_light_branch():
    """A tensor the light branch returns as it is comes out on light steps
    only; on heavy steps the heavy branch's value does (never a mix)."""
    carry = tf.Variable([1.0, 2.0, 3.0])

    @tf.function
    def step(pred):
        value = carry.read_value()
        out = gated_cond(pred, lambda v: v * 2.0, lambda: value, (value,))
        carry.assign(out)
        return out

    for pred, want in ((False, [1, 2, 3]), (True, [2, 4, 6]),
                       (False, [2, 4, 6]), (True, [4, 8, 12])):
        np.testing.assert_array_equal(step(tf.constant(pred)).numpy(), want)
