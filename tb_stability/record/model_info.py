"""The model's own configuration, as run_info's "model" record.

What the output layer can produce and what the loss expects of it (an
output that cannot match its loss or its targets is a cause of its own):

    {"output": {"layer", "class", "activation", "units"},
     "loss": {"class", "name", "reduction", "from_logits"},
     "dtypes": {"variable", "compute"}}

Read once, on the host, with Keras's public API (the output layer through
`keras_internals.output_layer`). Whatever cannot be read is None; nothing
here raises.
"""

import inspect
import re

from tb_stability.record import keras_internals
from tb_stability.record.global_stats import feature_tensor, feature_width
from tb_stability.record.runtime import logger

# Layers that are an activation by themselves.
_ACTIVATION_LAYERS = {"Softmax": "softmax", "ReLU": "relu", "LeakyReLU": "leaky_relu",
                      "ELU": "elu", "PReLU": "prelu"}


def model_info(model, loss=True):
    """The "model" record of a Keras model (a JSON-able dict).

    Args:
      model: a Keras 3 model.
      loss: whether to describe its compiled loss (a custom loop's loss is
        unknown: "loss" is then None).
    """
    info = {"output": None, "loss": None, "dtypes": None}
    for key, describe in (("output", output_info), ("dtypes", dtype_info),
                          ("loss", loss_info if loss else None)):
        if describe is None:
            continue
        try:
            info[key] = describe(model)
        except Exception as e:  # pylint: disable=broad-except
            logger.info("tb_stability: could not describe the model's %s: %s: %s",
                        key, type(e).__name__, e)
    return info


def output_info(model):
    """{"layer", "class", "activation", "units"} of the model's output layer."""
    layer = keras_internals.output_layer(model)
    if layer is None:
        layers = list(getattr(model, "layers", None) or [])
        layer = layers[-1] if layers else None
    if layer is None:
        return None
    units = getattr(layer, "units", None)
    if not isinstance(units, int) or isinstance(units, bool):
        units = _output_width(model)
    return {"layer": getattr(layer, "name", None), "class": type(layer).__name__,
            "activation": activation_name(layer), "units": units}


def activation_name(layer):
    """The name of a layer's activation ("softmax", "linear", ...), or None."""
    if type(layer).__name__ in _ACTIVATION_LAYERS:
        return _ACTIVATION_LAYERS[type(layer).__name__]
    fn = getattr(layer, "activation", None)
    if fn is None:
        return None
    if isinstance(fn, str):
        return fn
    import keras  # pylint: disable=import-outside-toplevel

    try:
        name = keras.activations.serialize(fn)
    except Exception:  # pylint: disable=broad-except
        name = None
    if isinstance(name, dict):
        name = (name.get("config") or {}).get("name") or name.get("class_name")
    if not isinstance(name, str):
        name = getattr(fn, "__name__", None) or type(fn).__name__
    return name


def _output_width(model):
    """The last dimension of the model's first output, or None."""
    try:
        dim = model.outputs[0].shape[-1]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return int(dim) if dim is not None else None


def loss_info(model):
    """{"class", "name", "reduction", "from_logits"} of the compiled loss."""
    loss = getattr(model, "loss", None)
    while isinstance(loss, (list, tuple, dict)):
        values = list(loss.values()) if isinstance(loss, dict) else list(loss)
        values = [v for v in values if v is not None]
        loss = values[0] if values else None
    if loss is None:
        return None
    return describe_loss(loss)


def describe_loss(loss):
    """{"class", "name", "reduction", "from_logits"} of one loss identifier.

    A string is resolved as Keras's `compile` does (`keras.losses.get`) and
    described as the Loss class of that name with its defaults; Keras
    reduces it by "sum_over_batch_size". A function is described by its name
    (its reduction is its own: None) and its `from_logits` default.
    """
    import keras  # pylint: disable=import-outside-toplevel

    if isinstance(loss, str):
        try:
            resolved = keras.losses.get(loss)
        except (ValueError, TypeError):
            # "crossentropy" / "ce": Keras picks binary, sparse or categorical
            # cross-entropy from the data (all on probabilities).
            generic = loss.lower() in ("crossentropy", "ce")
            return {"class": None, "name": loss, "reduction": "sum_over_batch_size",
                    "from_logits": False if generic else None}
        if isinstance(resolved, keras.losses.Loss):
            return _describe_loss_object(resolved)
        as_class = _loss_class_of(getattr(resolved, "__name__", loss))
        if as_class is not None:
            out = _describe_loss_object(as_class)
            out["name"] = loss
            return out
        out = _describe_function(resolved)
        out["name"] = loss
        out["reduction"] = "sum_over_batch_size"
        return out
    if isinstance(loss, keras.losses.Loss):
        return _describe_loss_object(loss)
    name = getattr(loss, "__name__", None)
    if name and str(getattr(loss, "__module__", "")).startswith("keras"):
        return describe_loss(name)  # one of Keras's own loss functions
    return _describe_function(loss)


def _describe_loss_object(loss):
    try:
        config = loss.get_config() or {}
    except Exception:  # pylint: disable=broad-except
        config = {}
    from_logits = config.get("from_logits", getattr(loss, "from_logits", None))
    reduction = getattr(loss, "reduction", config.get("reduction"))
    return {"class": type(loss).__name__,
            "name": config.get("name", getattr(loss, "name", None)),
            "reduction": reduction if isinstance(reduction, str) or reduction is None
            else str(reduction),
            "from_logits": bool(from_logits) if from_logits is not None else None}


def _describe_function(fn):
    from_logits = None
    try:
        param = inspect.signature(fn).parameters.get("from_logits")
        if param is not None and isinstance(param.default, bool):
            from_logits = param.default
    except (TypeError, ValueError):
        pass
    return {"class": None,
            "name": getattr(fn, "__name__", None) or type(fn).__name__,
            "reduction": None, "from_logits": from_logits}


def _loss_class_of(function_name):
    """The Keras Loss instance named like a loss function, or None.

    `binary_crossentropy` -> `BinaryCrossentropy()` (its defaults).
    """
    import keras  # pylint: disable=import-outside-toplevel

    camel = "".join(part.capitalize() for part in re.split(r"_+", function_name) if part)
    try:
        resolved = keras.losses.get(camel)
    except (ValueError, TypeError):
        return None
    if isinstance(resolved, keras.losses.Loss):
        return resolved
    if isinstance(resolved, type) and issubclass(resolved, keras.losses.Loss):
        try:
            return resolved()
        except TypeError:
            return None
    return None


def dtype_info(model):
    """{"variable", "compute"}: the model's dtype policy."""
    policy = getattr(model, "dtype_policy", None)
    variable = getattr(policy, "variable_dtype", None)
    compute = getattr(policy, "compute_dtype", None)
    if variable is None:
        weights = list(getattr(model, "weights", None) or [])
        variable = str(weights[0].dtype) if weights else None
    return {"variable": None if variable is None else str(variable),
            "compute": None if compute is None else str(compute)}


def input_features(model, x=None):
    """Features per input the recorder's input ring holds, or None.

    The static last dimension of the step's inputs `x` when captured (their
    first float tensor), else of the model's first float input.
    """
    width = feature_width(feature_tensor(x)) if x is not None else None
    if width is None and model is not None:
        try:
            inputs = list(model.inputs or [])
        except (AttributeError, ValueError):
            inputs = []
        floats = [t for t in inputs if "float" in str(getattr(t, "dtype", ""))]
        first = (floats or inputs or [None])[0]
        width = feature_width(first)
    return width if width else None
