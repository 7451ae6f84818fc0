"""Low-level TF2 summary ops for users who compose their own recording.

Each op mirrors `tf.summary.scalar`: `(name, data, step=None,
description=None)`, writes one tb_stability series to the default summary
writer and returns the bool from `tf.summary.write`. `name` is the tag, used
verbatim (no name scopes): the plugin and the analysis find the series by the
tags of `metadata`, so keep the defaults unless you write several recorders
into one run. The axes of each tensor are in FORMAT.md.

`variable_stats` computes the per-variable matrix these ops write, in the
graph, from gradients, variables and (optionally) an Adam-family optimizer:

    with writer.as_default():
        stats = tb_stability.summary.variable_stats(grads, variables, opt)
        tb_stability.summary.layers_detail(None, stats, step=step)

`StabilityCallback` and `Monitor` use these same ops; they add the ring
buffers, the online detector and the windowing that keep the volume bounded.
"""

import json

import tensorflow as tf

from tb_stability import metadata
from tb_stability.record import keras_internals
from tb_stability.record.stats import VariableStats

__all__ = [
    "run_info",
    "global_rows",
    "layers_window",
    "layers_detail",
    "input_grad_rows",
    "inputs_window",
    "inputs_detail",
    "variable_stats",
]


def _write(default_tag, series, rank, last_dim, name, data, step, description):
    """Shared body of the ops: validates the shape and writes one event.

    Args:
      default_tag: the tag when `name` is None.
      series: the series kind (`metadata.SERIES_BY_TAG` values).
      rank: the rank `data` must have, or None.
      last_dim: the size its last axis must have, or None.
      name: the tag to write, or None for `default_tag`.
      data: the tensor (or a value convertible to one).
      step: explicit int64-castable step. If omitted, this defaults to
        `tf.summary.experimental.get_step()`, which must not be None.
      description: optional longer text for the series.

    Returns:
      The bool from `tf.summary.write`: True on success, False if no default
      summary writer was set.

    Raises:
      ValueError: if a default step is needed but none was set, or the data
        does not have the documented rank / last dimension.
    """
    tag = default_tag if name is None else str(name)
    summary_metadata = metadata.create_summary_metadata(
        series, description=description
    )

    def tensor():
        t = tf.convert_to_tensor(data)
        if t.dtype != tf.string:
            t = tf.cast(t, tf.float32)
        if rank is not None and t.shape.rank is not None and t.shape.rank != rank:
            raise ValueError(
                f"{series} expects a rank-{rank} tensor, got shape {t.shape}"
            )
        if last_dim is not None and t.shape.rank and t.shape[-1] is not None \
                and t.shape[-1] != last_dim:
            raise ValueError(
                f"{series} expects a last dimension of {last_dim}, got shape "
                f"{t.shape}"
            )
        return tf.stop_gradient(t)

    if step is None and tf.summary.experimental.get_step() is None:
        raise ValueError(
            "No step set. Please specify one either through the `step` "
            "argument or through tf.summary.experimental.set_step()"
        )
    return tf.summary.write(
        tag=tag, tensor=tensor, step=step, metadata=summary_metadata
    )


def run_info(name, data, step=None, description=None):
    """Writes the run description (a dict, stored as a JSON string).

    Written once per recorder: optimizer and its hyperparameters, variable
    names and shapes, column names, window and detector settings.
    """
    if isinstance(data, dict):
        data = json.dumps(data)
    return _write(metadata.TAG_RUN_INFO, "run_info", 0, None, name,
                  tf.constant(data, tf.string), step, description)


def global_rows(name, data, step=None, description=None):
    """Writes per-step global rows: `[rows, 1 + len(GLOBAL_COLUMNS)]`.

    Column 0 is each row's step minus `step` (exact in float32 for offsets
    below 2**24); the others follow `metadata.GLOBAL_COLUMNS`.
    """
    return _write(metadata.TAG_GLOBAL, "global", 2,
                  1 + len(metadata.GLOBAL_COLUMNS), name, data, step,
                  description)


def layers_window(name, data, step=None, description=None):
    """Writes per-variable aggregates of a window: `[vars, stats, aggs]`.

    `step` is the window's last step; aggregates are `WINDOW_AGGREGATES`.
    """
    return _write(metadata.TAG_LAYERS_WINDOW, "layers_window", 3,
                  len(metadata.WINDOW_AGGREGATES), name, data, step,
                  description)


def layers_detail(name, data, step=None, description=None):
    """Writes one step's per-variable statistics: `[vars, stats]`."""
    return _write(metadata.TAG_LAYERS_DETAIL, "layers_detail", 2,
                  len(metadata.STAT_COLUMNS), name, data, step, description)


def input_grad_rows(name, data, step=None, description=None):
    """Writes one step's first-kernel gradient row norms: `[features]`."""
    return _write(metadata.TAG_INPUT_GRAD_ROWS, "input_grad_rows", 1, None,
                  name, data, step, description)


def inputs_window(name, data, step=None, description=None):
    """Writes per-feature input statistics of a window: `[features, 4]`."""
    return _write(metadata.TAG_INPUTS_WINDOW, "inputs_window", 2,
                  len(metadata.INPUT_COLUMNS), name, data, step, description)


def inputs_detail(name, data, step=None, description=None):
    """Writes one step's per-feature input statistics: `[features, 4]`."""
    return _write(metadata.TAG_INPUTS_DETAIL, "inputs_detail", 2,
                  len(metadata.INPUT_COLUMNS), name, data, step, description)


def variable_stats(gradients, variables, optimizer=None):
    """Per-variable statistics of one step, in the graph: `[vars, stats]`.

    Call it after the optimizer applied `gradients`: weights and Adam's
    moments are read as they are after the update. Without an Adam-family
    `optimizer` the Adam columns are NaN.

    Args:
      gradients: one gradient per variable (None for a variable without).
      variables: the variables, in the order of the rows.
      optimizer: the Keras optimizer that applied the gradients, or None.

    Returns:
      A float32 `[len(variables), len(metadata.STAT_COLUMNS)]` tensor, its
      columns `metadata.STAT_COLUMNS`, computed exactly as the recorder does
      on a step computed in full (large tensors from their fixed sample).
    """
    variables = list(variables)
    if optimizer is None:
        adapter = _NoOptimizer()
    else:
        adapter = keras_internals.OptimizerAdapter(optimizer)
    calc = VariableStats(adapter, variables)
    stats, _, _ = calc.compute(list(gradients), with_median=True)
    return stats


class _NoOptimizer:
    """Adapter stand-in when no optimizer is given: no moments, lr NaN."""

    name = "none"
    is_adam = False
    loss_scale_optimizer = None

    def hyperparameters(self):
        return keras_internals.hyperparameters(None)

    def learning_rate(self):
        return tf.constant(float("nan"))

    def iterations(self):
        return tf.constant(1.0)

    def loss_scale(self):
        return None

    def moments(self, variable):
        return None, None

    def weight_decay_applies(self, variable):
        return False
