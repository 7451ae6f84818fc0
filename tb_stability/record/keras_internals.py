"""The only code that touches Keras optimizer internals.

Keras 3 keeps Adam's first and second moments (mu and nu here, "momentums"
and "velocities" there) in private lists indexed like the optimizer's
trainable variables. Everything private is read here, so that a Keras change
breaks one module (and its version test), not the whole package.
"""

import logging

logger = logging.getLogger("tb_stability")

# Optimizers whose state is Adam's (mu, nu) with the Adam bias correction.
_ADAM_FAMILY = ("Adam", "AdamW", "Nadam", "Lamb")


def unwrap(optimizer):
    """Returns (inner optimizer, loss-scale optimizer or None)."""
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:
        return inner, optimizer
    return optimizer, None


class OptimizerAdapter:
    """Read-only view of one Keras optimizer's hyperparameters and slots.

    Arguments:
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
