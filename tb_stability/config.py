"""The recorder's settings, defined once (plain Python, no TensorFlow).

`StabilityCallback`, `Monitor` and the recorder take these as keyword
options; the recorder writes them into the run's `run_info`, and the plugin
reads them back from there with `RecorderConfig.from_run_info`, so a default
is written in this file and nowhere else.
"""

import dataclasses
from typing import Any, Dict, Mapping


@dataclasses.dataclass(frozen=True)
class RecorderConfig:
    """What is recorded, when, and how the online detector decides.

    Attributes:
      window: steps per written window: the global rows and the per-variable
        aggregates are written once per window.
      detail_before: per-variable rows kept before each step the online
        detector flags.
      detail_after: per-variable rows kept after each flagged step (and
        steps computed in full after it).
      first_steps: per-variable rows kept for the first steps recorded.
      loss_z: detector threshold, in running standard deviations of the log
        loss, for a loss jump.
      grad_z: the same for a gradient-norm outlier.
      rms_threshold: detector threshold on RMS(g^2/v_hat), crossed on two
        consecutive computed steps.
      stats_every: steps between two computations of the per-variable
        statistics other than the gradient norms (weights, update ratios,
        Adam's moments); the steps between have NaN there. Every step is
        computed during the first steps, from a step whose loss or gradient
        norm leaves its usual range until `detail_after` steps after the
        last flagged one, and on non-finite steps. 1 computes every step.
      median_every: steps between two medians of sqrt(v_hat)/eps (rounded up
        to a multiple of `stats_every`; also on every step computed because
        of an anomaly).
      full_detail: keep every step's per-variable rows, computed every step
        over every entry of every tensor (not a sample of the large ones),
        with the median every step: more disk and a slower step.
      flush_secs: a partial window is written when this many seconds passed
        since the last write, so a live run shows up in TensorBoard.
      skip_nonfinite: the update guard (off by default): an update whose
        gradients hold NaN/Inf is skipped inside the compiled step (weights
        and optimizer moments stay as they were). Under a
        LossScaleOptimizer those steps are its own skips, left to it.
      skip_outlier_z: the guard also skips an update whose log global
        gradient norm is this many running (winsorised) standard deviations
        above its recent level, after a warm-up; 0 turns it off.
      max_skips_in_a_row: the guard never skips more updates than this in a
        row: the next ones go through (a warning is logged once) until one
        needs no skip, so that a broken run is not silently frozen.
    """

    window: int = 256
    detail_before: int = 32
    detail_after: int = 8
    first_steps: int = 50
    loss_z: float = 6.0
    grad_z: float = 6.0
    rms_threshold: float = 10.0
    stats_every: int = 8
    median_every: int = 10
    full_detail: bool = False
    flush_secs: float = 30.0
    skip_nonfinite: bool = False
    skip_outlier_z: float = 0.0
    max_skips_in_a_row: int = 25

    def __post_init__(self):
        """Checks the ranges and normalises the types."""
        for name in ("window", "stats_every", "median_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("detail_before", "detail_after", "first_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= float(self.skip_outlier_z) < float("inf"):
            raise ValueError("skip_outlier_z must be >= 0 (0: off), got "
                             f"{self.skip_outlier_z!r}")
        if int(self.max_skips_in_a_row) < 1:
            raise ValueError("max_skips_in_a_row must be >= 1, got "
                             f"{self.max_skips_in_a_row!r}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, _TYPES[field.name](value))

    @property
    def guard_on(self) -> bool:
        """Whether the update guard may skip updates."""
        return self.skip_nonfinite or self.skip_outlier_z > 0

    @property
    def effective_stats_every(self) -> int:
        """`stats_every`, or 1 under `full_detail`."""
        return 1 if self.full_detail else self.stats_every

    @property
    def effective_median_every(self) -> int:
        """`median_every` rounded up to a multiple of the statistics' period."""
        every = self.effective_stats_every
        return 1 if self.full_detail else -(-self.median_every // every) * every

    def replace(self, **options) -> "RecorderConfig":
        """A copy with `options` changed (a TypeError names an unknown one)."""
        unknown = sorted(set(options) - set(_TYPES))
        if unknown:
            raise TypeError(
                f"unknown tb_stability option(s): {', '.join(unknown)}; "
                f"known: {', '.join(_TYPES)}")
        return dataclasses.replace(self, **options)

    def to_run_info(self) -> Dict[str, Any]:
        """The settings as `run_info` stores them (FORMAT.md)."""
        return {
            "window": self.window,
            "detail_before": self.detail_before,
            "detail_after": self.detail_after,
            "first_steps": self.first_steps,
            "full_detail": self.full_detail,
            "stats_every": self.effective_stats_every,
            "median_every": self.effective_median_every,
            "detector": {
                "loss_z": self.loss_z,
                "grad_z": self.grad_z,
                "rms_threshold": self.rms_threshold,
            },
            "guard": {
                "skip_nonfinite": self.skip_nonfinite,
                "skip_outlier_z": self.skip_outlier_z,
                "max_skips_in_a_row": self.max_skips_in_a_row,
            },
        }

    @classmethod
    def from_run_info(cls, info: Mapping) -> "RecorderConfig":
        """The settings a run was recorded with, read back leniently.

        A missing or unusable value takes its default, except `stats_every`:
        runs written before it existed computed every step, so it is 1 there.
        """
        info = info if isinstance(info, Mapping) else {}
        detector = info.get("detector")
        detector = detector if isinstance(detector, Mapping) else {}
        guard = info.get("guard")
        guard = guard if isinstance(guard, Mapping) else {}
        values = {}
        for name in _TYPES:
            raw = (detector.get(name) if name in _DETECTOR
                   else guard.get(name) if name in _GUARD else info.get(name))
            if name == "stats_every" and raw is None:
                raw = 1
            if raw is None or isinstance(raw, (dict, list, str)):
                continue
            try:
                candidate = cls().replace(**{name: raw})
            except (TypeError, ValueError, OverflowError):
                continue
            values[name] = getattr(candidate, name)
        return cls(**values)


_TYPES = {f.name: f.type for f in dataclasses.fields(RecorderConfig)}
_DETECTOR = ("loss_z", "grad_z", "rms_threshold")
_GUARD = ("skip_nonfinite", "skip_outlier_z", "max_skips_in_a_row")
