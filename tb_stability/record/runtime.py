"""Where the recording code runs: XLA or not, replicas, the chief worker.

Also a `tf.cond` that stays cheap inside a `tf.function` (`cond`, and
`gated_cond` for the step's statistics, which holds no gradient through the
optimizer's update), and the package's
warn-once log: instrumentation must never spam, so a warning is logged once
per distinct key.
"""

import logging

import tensorflow as tf

from tb_stability.record import keras_internals

logger = logging.getLogger("tb_stability")


def in_xla_context():
    """Whether the code being traced will be compiled by XLA.

    Returns:
      False in eager mode; in a graph, whether it or a parent graph is in an
      XLA context (`jit_compile=True`), where no summary can be written.
    """
    if tf.executing_eagerly():
        return False
    return keras_internals.graph_in_xla_context(tf.compat.v1.get_default_graph())


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
            keras_internals.keep_if_node(op)
    return out


def gated_cond(pred, true_fn, false_fn, args):
    """`cond(pred, lambda: true_fn(*args), false_fn)`, holding no input long.

    An `If` node keeps a reference to each of its inputs until it runs. The
    recording's `If` runs after the optimizer's update (it reads the new
    moments), so it held every gradient through the update, and Keras's
    Adam could no longer compute `g - m` in the gradient's own buffer: on
    100 small variables that cost more than all of the recording. Here each
    tensor of `args` passes a `Switch` on `pred` as soon as it exists,
    `true_fn` runs as one function call that is skipped whole when `pred`
    is false, and `Merge` nodes pick the branch taken: a step not taken
    releases the gradients at once and costs one `Switch` per tensor.

    Eagerly, under XLA (which compiles a conditional without these costs)
    and under a distribution strategy (where the recorder keeps out of
    nested functions, see `Recorder.push`) this is `cond`.

    Args:
      pred: bool scalar tensor.
      true_fn: called with `args` (a nest of tensors, None or Python
        values; only tensors are switched).
      false_fn: called with no argument; its outputs must have the
        structure and dtypes of `true_fn`'s.
      args: the arguments of `true_fn` (a tuple).

    Returns:
      The outputs of the branch taken.
    """
    if tf.executing_eagerly() or in_xla_context() or tf.distribute.has_strategy():
        return cond(pred, lambda: true_fn(*args), false_fn)
    flat = tf.nest.flatten(args, expand_composites=True)
    tensor_at = [i for i, a in enumerate(flat) if isinstance(a, tf.Tensor)]
    pivot_false, pivot_true = tf.raw_ops.Switch(data=pred, pred=pred)
    # A control edge carries the deadness of one output only from a node
    # with one output: an Identity of the Switch's false output.
    pivot_false = tf.identity(pivot_false)
    switched = [tf.raw_ops.Switch(data=flat[i], pred=pred)[1] for i in tensor_at]

    def call_true(pivot, *tensors):
        del pivot  # only there to make the call dead when pred is false
        values = list(flat)
        for i, t in zip(tensor_at, tensors):
            values[i] = t
        return true_fn(*tf.nest.pack_sequence_as(args, values,
                                                 expand_composites=True))

    call = tf.function(call_true, autograph=False,
                       experimental_attributes={"_noinline": True})
    out_true = call(pivot_true, *switched)
    with tf.control_dependencies([pivot_false]):
        # Ops made here (constants too) are dead when pred is true.
        out_false = tf.nest.map_structure(tf.identity, false_fn())
    merged = [tf.raw_ops.Merge(inputs=[f, t])[0] for f, t in zip(
        tf.nest.flatten(out_false), tf.nest.flatten(out_true))]
    return tf.nest.pack_sequence_as(out_false, merged)


def replica_count():
    """Replicas in sync in the current replica context; 0 in cross-replica."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        return 0  # cross-replica context
    return ctx.num_replicas_in_sync


def sum_over_replicas(tensors):
    """All-reduces (sums) `tensors` over the replicas, keeping None entries.

    Args:
      tensors: a list of tensors or None (a variable without gradient).

    Returns:
      The list with each tensor replaced by its sum over replicas, in one
      all-reduce call.
    """
    ctx = tf.distribute.get_replica_context()
    present = [t for t in tensors if t is not None]
    summed = iter(ctx.all_reduce(tf.distribute.ReduceOp.SUM, present))
    return [None if t is None else next(summed) for t in tensors]


def is_chief(strategy=None):
    """Whether this process writes the run.

    True unless a multi-worker strategy says this task is not the chief:
    the "chief" task, or worker 0 when the cluster has no chief, as Keras and
    TensorFlow decide it.

    Args:
      strategy: the distribution strategy; default: the current one.
    """
    if strategy is None:
        strategy = tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if resolver is None or task_type in (None, "chief"):
        return True
    if task_type == "worker":
        try:
            has_chief = "chief" in resolver.cluster_spec().as_dict()
        except Exception:  # pylint: disable=broad-except
            has_chief = False
        return not has_chief and int(getattr(resolver, "task_id", 0) or 0) == 0
    return False  # evaluator, parameter server


class _WarnOnce:
    """Logs each distinct key once: instrumentation must never spam."""

    def __init__(self):
        self._seen = set()

    def __call__(self, key, message, *args, level=logging.WARNING):
        """Logs `message % args` unless `key` was logged before."""
        if key in self._seen:
            return
        self._seen.add(key)
        logger.log(level, message, *args)


warn_once = _WarnOnce()
