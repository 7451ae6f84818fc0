"""tb_stability: find out why training blew up, in TensorBoard.

Importing this package must stay cheap and must not import TensorFlow:
TensorBoard imports it to resolve the plugin entry point. The training-side
API (``Monitor``, ``keras``, ``summary``) is loaded on first attribute access.
"""

import importlib

from tb_stability.version import VERSION as __version__

_LAZY_ATTRS = {
    "Monitor": ("tb_stability.monitor", "Monitor"),
    "StabilityCallback": ("tb_stability.keras", "StabilityCallback"),
    "TrainingInstability": ("tb_stability.record.live", "TrainingInstability"),
}
_LAZY_MODULES = ("keras", "summary", "monitor")

__all__ = ["Monitor", "StabilityCallback", "TrainingInstability", "keras", "summary",
           "__version__"]


def __getattr__(name):
    if name in _LAZY_ATTRS:
        module_name, attr = _LAZY_ATTRS[name]
        return getattr(importlib.import_module(module_name), attr)
    if name in _LAZY_MODULES:
        return importlib.import_module("tb_stability." + name)
    raise AttributeError(f"module 'tb_stability' has no attribute {name!r}")
