"""The ring buffers one recorder's steps are stored into, in the graph.

The training step writes one row per step (`Rings.put`); the host reads the
rings once per flush (`Rings.read`). Every ring is a non-trainable
`tf.Variable` synchronised on write and aggregated from the first replica,
so the same code runs eagerly, in a `tf.function`, under XLA and in a
replica context.
"""

from typing import NamedTuple, Optional

import numpy as np
import tensorflow as tf

from tb_stability import metadata

# Rows kept beyond two windows of steps and two host calls' worth of steps,
# so a late flush does not lose rows.
_SLACK = 64


def replicated_variable(value, dtype):
    """A non-trainable variable that replicas share (first replica's write).

    Args:
      value: the initial value.
      dtype: its dtype.
    """
    return tf.Variable(
        value,
        dtype=dtype,
        trainable=False,
        synchronization=tf.VariableSynchronization.ON_WRITE,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


def ring_capacity(window, steps_per_call):
    """Rows per ring: two windows and two host calls of steps, plus slack.

    Args:
      window: steps per written window.
      steps_per_call: steps that may run between two host calls.
    """
    return 2 * (window + max(1, int(steps_per_call))) + _SLACK


class RingRows(NamedTuple):
    """What one host read of the rings gives, for rows [start, count).

    Attributes:
      index: the ring slots of the rows read, int [n].
      steps: the steps of those rows, int64 [n].
      global_rows: their global rows, float32 [n, len(GLOBAL_COLUMNS)].
      steps_all: the whole steps ring, int64 [R] (detail rows index it).
      layers_all: the whole per-variable ring, float32 [R, V, S].
      input_rows_all: the whole input-gradient-row ring, or None.
      inputs_all: the whole input-statistics ring, or None.
    """

    index: np.ndarray
    steps: np.ndarray
    global_rows: np.ndarray
    steps_all: np.ndarray
    layers_all: np.ndarray
    input_rows_all: Optional[np.ndarray]
    inputs_all: Optional[np.ndarray]


class Rings:
    """The recorder's in-graph state: counters and one ring per series.

    Attributes:
      capacity: rows per ring (R).
      count: rows pushed so far (int64); moves last in each `put`.
      next_step: the step of the next row when none is given (int64).
      steps: int64 [R], each row's step.
      global_rows: float32 [R, len(GLOBAL_COLUMNS)].
      layers: float32 [R, V, len(STAT_COLUMNS)].
      median: float32 [V], the last medians of sqrt(v_hat)/eps.
      full_until: rows (counts) before which every step is computed in full.
      input_rows: float32 [R, F], the first kernel's gradient row norms, or
        None without such a kernel.
      inputs: float32 [R, input_features, len(INPUT_COLUMNS)], or None
        without inputs.

    Args:
      capacity: rows per ring (`ring_capacity`).
      variables: number of recorded variables (V).
      input_rows: rows of the first kernel's gradient (F), or 0.
      input_features: input features recorded, or None.
      initial_step: the step of the first row when steps are not given.
    """

    def __init__(self, capacity, variables, input_rows, input_features,
                 initial_step):
        R, V = capacity, variables
        S, G = len(metadata.STAT_COLUMNS), len(metadata.GLOBAL_COLUMNS)
        self.capacity = capacity
        self.input_features = input_features
        with tf.init_scope():
            self.count = replicated_variable(0, tf.int64)
            self.next_step = replicated_variable(initial_step, tf.int64)
            self.steps = replicated_variable(tf.zeros([R], tf.int64), tf.int64)
            self.global_rows = replicated_variable(tf.zeros([R, G]), tf.float32)
            self.layers = replicated_variable(tf.zeros([R, V, S]), tf.float32)
            self.median = replicated_variable(
                tf.fill([V], float("nan")), tf.float32)
            self.full_until = replicated_variable(0, tf.int64)
            self.input_rows = (
                replicated_variable(tf.zeros([R, input_rows]), tf.float32)
                if input_rows else None)
            self.inputs = (
                replicated_variable(
                    tf.zeros([R, input_features, len(metadata.INPUT_COLUMNS)]),
                    tf.float32)
                if input_features else None)

    def put(self, count, *, step, global_row, stats, input_rows, input_stats,
            medians, full_until, also=()):
        """Stores one step's row at slot `count % capacity` (in the graph).

        Args:
          count: this row's count (`self.count` read at the step's start).
          step: int64 scalar, the row's step.
          global_row: float32 [len(GLOBAL_COLUMNS)].
          stats: float32 [V, S].
          input_rows: float32 [F] (ignored without that ring).
          input_stats: float32 [input_features, len(INPUT_COLUMNS)] (ignored
            without inputs).
          medians: float32 [V], the medians carried to the next step.
          full_until: int64, the new end of the steps computed in full.
          also: further updates the count must wait for (the detector's).

        Returns:
          The new count. It moves last: whatever is triggered by it (the
          host flush of a Monitor inside a `tf.function`) sees the whole
          row; automatic control dependencies only order ops on the same
          resource.
        """
        index = tf.reshape(count % self.capacity, [1])

        def put_row(ring, value):
            # scatter_update: the one row update MirroredVariables implement.
            return ring.scatter_update(tf.IndexedSlices(value[None], index))

        updates = [put_row(self.steps, step), put_row(self.global_rows, global_row),
                   put_row(self.layers, stats)]
        if self.input_rows is not None:
            updates.append(put_row(self.input_rows, input_rows))
        if self.inputs is not None:
            updates.append(put_row(self.inputs, input_stats))
        updates.append(self.median.assign(medians))
        updates.extend(also)
        updates.append(self.full_until.assign(full_until))
        updates.append(self.next_step.assign(step + 1))
        with tf.control_dependencies(updates):
            return self.count.assign_add(1)

    def read(self, start, count):
        """Reads rows [start, count) on the host, each ring once.

        Args:
          start: the first row (count) to read; rows older than
            `count - capacity` are gone.
          count: one past the last row.

        Returns:
          A `RingRows`.
        """
        index = np.arange(start, count) % self.capacity
        steps_all = self.steps.numpy()  # one read of the ring, used twice
        return RingRows(
            index=index,
            steps=steps_all[index],
            global_rows=self.global_rows.numpy()[index],
            steps_all=steps_all,
            layers_all=self.layers.numpy(),
            input_rows_all=(None if self.input_rows is None
                            else self.input_rows.numpy()),
            inputs_all=None if self.inputs is None else self.inputs.numpy(),
        )
