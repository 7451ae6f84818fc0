"""The only code that touches Keras and TensorFlow internals.

Keras 3 keeps Adam's first and second moments (mu and nu here, "momentums"
and "velocities" there) in private lists indexed like the optimizer's
trainable variables; the gradients all-reduced under a distribution strategy
pass through a private method; the loss scale a `LossScaleOptimizer` applies
and the loss tracker that sees the batch size are private too. Everything
private is read here, through named functions, so that a Keras change breaks
one module (and its version test), not the whole package.
"""

import logging
from typing import NamedTuple

logger = logging.getLogger("tb_stability")

# Optimizers whose state is Adam's (mu, nu) with the Adam bias correction.
_ADAM_FAMILY = ("Adam", "AdamW", "Nadam", "Lamb")


# The optimizer method that all-reduces (sums) the gradients over replicas
# (`BaseOptimizer._all_reduce_sum_gradients`); hooked to see its result.
ALL_REDUCE_METHOD = "_all_reduce_sum_gradients"


def unwrap(optimizer):
    """Returns (inner optimizer, loss-scale optimizer or None)."""
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:
        return inner, optimizer
    return optimizer, None


def backing_variable(variable):
    """The `tf.Variable` a Keras variable wraps, or None.

    The TensorFlow backend's all-reduce pairs gradients with it, not with the
    Keras variable.
    """
    return getattr(variable, "_value", None)


def optimizer_variables(optimizer):
    """The variables the optimizer was built for, in its order (a list)."""
    return list(optimizer._trainable_variables)  # pylint: disable=protected-access


def has_all_reduce(optimizer):
    """Whether `optimizer` has the `ALL_REDUCE_METHOD` to hook."""
    return hasattr(optimizer, ALL_REDUCE_METHOD)


def accumulates_gradients(optimizer):
    """Whether `optimizer` accumulates gradients over several steps."""
    return bool(getattr(optimizer, "gradient_accumulation_steps", None))


def uses_keras_adam_update(optimizer):
    """Whether `optimizer` updates with Keras's own `Adam.update_step`.

    That update is alpha * m / (sqrt(v) + eps) with the moments after the
    step, so the update can be derived from the moments (other update rules:
    Nadam, Lamb, subclasses that override it, cannot).
    """
    import keras  # pylint: disable=import-outside-toplevel

    return (getattr(type(optimizer), "update_step", None)
            is keras.optimizers.Adam.update_step)


def applied_loss_scale(loss_scale_optimizer):
    """The scale `loss_scale_optimizer.scale_loss` multiplies by now (float32).

    Keras's own rule: the dynamic scale once built, the initial one before.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    lso = loss_scale_optimizer
    scale = lso.dynamic_scale if lso.built else lso.initial_scale
    return tf.cast(tf.convert_to_tensor(scale), tf.float32)


def graph_in_xla_context(graph):
    """Whether `graph` or a parent graph is compiled by XLA (TF internals)."""
    from tensorflow.python.ops import control_flow_util  # pylint: disable=import-outside-toplevel

    return bool(control_flow_util.GraphOrParentsInXlaContext(graph))


def keep_if_node(op):
    """Marks an `If` op not to be lowered to Switch/Merge nodes.

    Lowered, the executor walks every node of the branch not taken; kept as
    an `If` node, that branch costs nothing (see `runtime.cond`).
    """
    from tensorflow.core.framework import attr_value_pb2  # pylint: disable=import-outside-toplevel

    op._set_attr("_lower_using_switch_merge",  # pylint: disable=protected-access
                 attr_value_pb2.AttrValue(b=False))


class Hyperparameters(NamedTuple):
    """The update rule's constants as the statistics use them.

    Attributes:
      beta_1: Adam's first-moment decay (0.9 when the optimizer has none).
      beta_2: Adam's second-moment decay (0.999 when it has none).
      epsilon: Adam's epsilon (1e-7 when it has none).
      weight_decay: decoupled weight decay (0 when none).
      momentum: SGD's momentum (0 when none).
    """

    beta_1: float
    beta_2: float
    epsilon: float
    weight_decay: float
    momentum: float


def hyperparameters(optimizer):
    """The `Hyperparameters` of an (inner) optimizer, or the defaults for None."""
    return Hyperparameters(
        beta_1=float(getattr(optimizer, "beta_1", 0.9)),
        beta_2=float(getattr(optimizer, "beta_2", 0.999)),
        epsilon=float(getattr(optimizer, "epsilon", 1e-7)),
        weight_decay=float(getattr(optimizer, "weight_decay", 0.0) or 0.0),
        momentum=float(getattr(optimizer, "momentum", 0.0) or 0.0),
    )


class OptimizerAdapter:
    """Read-only view of one Keras optimizer's hyperparameters and slots.

    Args:
      optimizer: a Keras 3 optimizer, possibly a `LossScaleOptimizer`.
    """

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.inner, self.loss_scale_optimizer = unwrap(optimizer)
        self.name = type(self.inner).__name__
        self.is_adam = any(
            base.__name__ in _ADAM_FAMILY for base in type(self.inner).__mro__
        )
        self.amsgrad = bool(getattr(self.inner, "amsgrad", False))

    # Hyperparameters -------------------------------------------------------

    def describe(self):
        """A JSON-able dict of what the analysis needs to know."""
        info = {"name": self.name, "adam": self.is_adam}
        for key in (
            "beta_1",
            "beta_2",
            "epsilon",
            "weight_decay",
            "momentum",
            "clipnorm",
            "global_clipnorm",
            "clipvalue",
        ):
            value = getattr(self.inner, key, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                info[key] = float(value)
        info["amsgrad"] = self.amsgrad
        info["loss_scale"] = self.loss_scale_optimizer is not None
        return info

    def hyperparameters(self):
        """The inner optimizer's `Hyperparameters`."""
        return hyperparameters(self.inner)

    def learning_rate(self):
        """The current learning rate as a float32 tensor (schedules applied)."""
        import tensorflow as tf

        lr = self.inner.learning_rate
        return tf.cast(tf.convert_to_tensor(lr), tf.float32)

    def iterations(self):
        """The inner optimizer's step counter t (after the update), float32."""
        import tensorflow as tf

        return tf.cast(tf.convert_to_tensor(self.inner.iterations), tf.float32)

    def loss_scale(self):
        """The dynamic loss scale, or None without a LossScaleOptimizer."""
        import tensorflow as tf

        if self.loss_scale_optimizer is None:
            return None
        scale = getattr(self.loss_scale_optimizer, "dynamic_scale", None)
        if scale is None:
            return None
        return tf.cast(tf.convert_to_tensor(scale), tf.float32)

    # Slots -----------------------------------------------------------------

    def _index(self, variable):
        try:
            return self.inner._get_variable_index(variable)
        except Exception:  # pylint: disable=broad-except
            return None

    def moments(self, variable):
        """Returns (mu, nu) slot variables for `variable`, or (None, None).

        `nu` is the AMSGrad maximum when amsgrad is on, since that is what the
        update divides by.
        """
        if not self.is_adam or not getattr(self.inner, "built", False):
            return None, None
        index = self._index(variable)
        if index is None:
            return None, None
        try:
            mu = self.inner._momentums[index]
            if self.amsgrad:
                nu = self.inner._velocity_hats[index]
            else:
                nu = self.inner._velocities[index]
        except (AttributeError, IndexError, TypeError):
            return None, None
        return mu, nu

    def weight_decay_applies(self, variable):
        """Whether decoupled weight decay touches `variable` (AdamW & co)."""
        wd = getattr(self.inner, "weight_decay", None)
        if not wd:
            return False
        check = getattr(self.inner, "_use_weight_decay", None)
        if check is None:
            return True
        try:
            return bool(check(variable))
        except Exception:  # pylint: disable=broad-except
            return True


def loss_tracker(model):
    """Keras's running-mean loss metric of `model`, or None.

    `train_step` calls its `update_state(loss, sample_weight=batch_size)`
    every step, which is where the batch size can be seen.
    """
    tracker = getattr(model, "_loss_tracker", None)
    if tracker is None or not hasattr(tracker, "update_state"):
        return None
    return tracker


def output_layer(model):
    """The layer that produces `model.outputs[0]`, or None.

    Functional and Sequential models know it from the output tensor's Keras
    history (private); subclassed models have no `outputs`.
    """
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs:
        return None
    history = getattr(outputs[0], "_keras_history", None)
    return getattr(history, "operation", None)
