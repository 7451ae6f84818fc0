"""The plugin's former import path; it lives in `tb_stability.server.plugin`."""

from tb_stability.server.plugin import StabilityLoader, StabilityPlugin

__all__ = ["StabilityLoader", "StabilityPlugin"]
