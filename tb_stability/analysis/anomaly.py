"""What an anomaly is: its kinds, its patterns, and the record of one."""

import dataclasses
from typing import Optional

# The kinds of anomaly, as the report and the tab name them.
SPIKE = "spike"  # a jump that recovers
DIVERGENCE = "divergence"  # a rise that does not recover
NONFINITE = "nonfinite"  # NaN/Inf in the loss, gradients, weights or moments
PLATEAU = "plateau"  # training stuck: no relative progress until the end
INSTABILITY = "instability"  # the loss keeps returning far above its best
KINDS = (SPIKE, DIVERGENCE, NONFINITE, PLATEAU, INSTABILITY)

# Patterns: how a kind showed itself ("" when the kind says it all).
PATTERNS = {
    SPIKE: ("recovering",),  # the run ended while the loss was coming back down
    DIVERGENCE: ("slow",),  # a climb to the end that no single step shows
    NONFINITE: ("loss", "silent"),  # the loss itself / only gradients, weights, moments
    PLATEAU: ("chance", "stall", "frozen"),  # at ln C / elsewhere / nothing moves
}


@dataclasses.dataclass(frozen=True)
class Anomaly:
    """One anomaly of a run's loss curve.

    Attributes:
      kind: one of `KINDS`.
      step: onset step.
      peak_step: step of the worst value (the onset for nonfinite/plateau;
        the highest return above the best loss for instability).
      end_step: first step back to normal; None while unrecovered.
      severity: decades above the baseline (spike, divergence, instability);
        number of non-finite steps (nonfinite); fraction of the run
        (plateau).
      baseline: loss level before the onset (the stalled level of a
        plateau, the best loss before an instability; NaN when not
        applicable).
      peak_value: the loss at the peak step.
      pattern: one of `PATTERNS[kind]`, or "" for kinds without patterns:
        nonfinite "loss" (the loss is non-finite) or "silent" (the loss is
        finite while gradients, weights or moments are not); plateau
        "chance" (at ln C, or B·ln C for a summed loss), "stall" (at another
        level: no progress since the start, or progress lost), "frozen"
        (the loss constant to many digits, or every gradient exactly zero);
        spike "recovering" (the run ended before the loss was back, while
        it was still coming down: no end step yet); divergence "slow" (a
        climb to the end of the run, 10x above its best level, that no
        single step shows against the baseline climbing with it).
    """

    kind: str
    step: int
    peak_step: int
    end_step: Optional[int]
    severity: float
    baseline: float
    peak_value: float
    pattern: str = ""
