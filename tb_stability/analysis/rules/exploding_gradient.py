"""exploding_gradient: one layer's gradient exploded and led the loss.

Mechanism: one layer (often recurrent, or a deep stack) amplifies its
gradient: its gradient norm jumps far above its own recent level while
the other layers' stay put, and the loss follows. The burst may come at
the very first steps and be followed by collapse (the layer saturates).

Evidence: `evidence.single_layer_jump` in the detail rows up to the peak:
one tensor's gradient norm more than `evidence.ALONE_JUMP` (100) times
its recent level while the median tensor of the other layers moved less
than `evidence.OTHERS_MAX_JUMP` (3) times. That variable is named; the
lead is the jump's distance to the peak.
"""

from typing import Optional

from tb_stability.analysis import causes as C
from tb_stability.analysis.context import Cause, Context, make_cause
from tb_stability.analysis.detect import Anomaly
from tb_stability.analysis.evidence import fmt, single_layer_jump

# Confidence when the jump came before the peak, and at the peak itself
# (no lead: it may as well be the consequence).
LEADING_CONFIDENCE = 0.6
NO_LEAD_CONFIDENCE = 0.5


def check(ctx: Context, a: Anomaly) -> Optional[Cause]:
    """The exploding_gradient cause of anomaly `a`, or None (see the module doc)."""
    jump = single_layer_jump(ctx, a.peak_step, a.peak_step)
    if jump is None:
        return None
    step, k, rel, med = jump
    lead = int(a.peak_step - step)
    variable = ctx.name(k)
    confidence = NO_LEAD_CONFIDENCE if lead == 0 else LEADING_CONFIDENCE
    return make_cause(C.EXPLODING_GRADIENT, confidence, [
        f"The gradient norm of {variable} jumped {fmt(rel)}x its recent level at "
        f"step {step}, {lead} steps before the peak, while the other layers' "
        f"median tensor moved {fmt(med)}x."],
        variable=variable, lead=lead)
