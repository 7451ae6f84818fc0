"""The cause rules, one module per cause (or small family), and their registry.

A rule is `check(ctx, anomaly) -> Cause | None`: it tests its cause's
*mechanism* on what the writer recorded (`context.Context`, one per run)
and returns a `context.Cause` (confidence in [0, 1], the variable where
the cause is implicated, how many steps the leading signal preceded the
peak, evidence sentences with the numbers, the fix), or None when the
evidence is not there. Each module's docstring states the mechanism, the
evidence it needs and its thresholds; every threshold and confidence is a
named constant at the top of its module. Measurements several rules share
are in `analysis.evidence`.

`RULES` is the registry `attribute.rank_causes` runs, in this order (the
order breaks ties of confidence). `sequel` is not a rule: it carries an
earlier anomaly's cause over to the one that follows it
(`report.analyze_run`).

Adding a cause: its `CauseDef` in `analysis/causes.py`, a module here with
its `check`, and its line in `RULES` (then REPORT.md and a test).
"""

from typing import Callable, Optional, Tuple

from tb_stability.analysis import causes as C
from tb_stability.analysis.context import Cause, Context
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.rules import (
    adam_epsilon,
    bad_batch,
    bad_init,
    dead_units,
    exploding_gradient,
    learning_rate,
    log_zero,
    nonfinite,
    output_mismatch,
    summed_loss,
    unnormalized_inputs,
    vanishing_gradient,
)

Rule = Callable[[Context, Anomaly], Optional[Cause]]

RULES: Tuple[Tuple[str, Rule], ...] = (
    (C.OUTPUT_MISMATCH, output_mismatch.check),
    (C.SUMMED_LOSS, summed_loss.check),
    (C.LOG_ZERO, log_zero.check),
    (C.NONFINITE_GRADIENT, nonfinite.check_gradient),
    (C.NONFINITE_INPUT, nonfinite.check_input),
    (C.UNNORMALIZED_INPUTS, unnormalized_inputs.check),
    (C.DEAD_UNITS, dead_units.check),
    (C.ADAM_EPSILON, adam_epsilon.check),
    (C.BAD_BATCH, bad_batch.check),
    (C.EXPLODING_GRADIENT, exploding_gradient.check),
    (C.VANISHING_GRADIENT, vanishing_gradient.check),
    (C.LEARNING_RATE, learning_rate.check),
    (C.BAD_INIT, bad_init.check),
)
