"""The report: anomalies and their ranked causes, as the public JSON shape.

    {"logdir": str, "runs": [{"run": str, "steps": int, "anomalies": [
      {"kind", "pattern", "step", "peak_step", "end_step", "severity",
       "causes": [{"cause", "confidence", "layer", "variable",
                   "lead_steps", "evidence", "fix"}]}]}]}

Documented in tb_stability/REPORT.md. Non-finite floats never appear in
the JSON: `sanitize` writes them as null.
"""

import math

import numpy as np

from tb_stability.analysis import attribute as attribute_lib
from tb_stability.analysis import causes as causes_lib
from tb_stability.analysis import detect as detect_lib
from tb_stability.analysis.context import Context
from tb_stability.analysis.rules import sequel as sequel_lib


def _finite_or_none(x):
    x = float(x)
    return x if math.isfinite(x) else None


def skipped_steps(run):
    """The steps a LossScaleOptimizer skipped on purpose, as a row mask.

    Finite loss, non-finite gradients, and the next step at a lower loss
    scale. None when the run recorded no loss scale.
    """
    return skipped_rows(run.col("loss"), run.col("loss_scale"))


def skipped_rows(loss, scale):
    """`skipped_steps` on the loss and loss-scale columns themselves."""
    if not np.any(np.isfinite(scale)):
        return None
    nxt = np.concatenate([scale[1:], [np.nan]])
    with np.errstate(invalid="ignore"):
        return np.isfinite(loss) & np.isfinite(scale) & (nxt < scale)


def guard_skipped_steps(run):
    """The steps whose update the update guard skipped, as a row mask.

    None when the run had no guard (`guard_skip` all NaN, or older runs).
    """
    col = run.col("guard_skip")
    if not np.any(np.isfinite(col)):
        return None
    return col == 1.0  # metadata.GUARD_SKIPPED


def _guard_count(run, guarded, a):
    """Updates the guard skipped from the anomaly's onset to its end."""
    if guarded is None:
        return 0
    lo = int(np.searchsorted(run.steps, a.step))
    hi = (len(run.steps) if a.end_step is None
          else max(int(np.searchsorted(run.steps, a.end_step)), lo + 1))
    return int(np.count_nonzero(guarded[lo:hi]))


def analyze_run(run):
    """[anomaly dict] for one `RunData`, each with its ranked causes."""
    ctx = Context(run)
    guarded = guard_skipped_steps(run)
    anomalies = detect_lib.detect_anomalies(
        run.steps, run.col("loss"), nonfinite=run.col("nonfinite"),
        classes=ctx.classes, skipped=skipped_steps(run),
        grad_norm=run.col("grad_norm"), batch_size=run.col("batch_size"),
        pred_spread=ctx.pred_spread(), guard_skipped=guarded)
    out, earlier = [], []
    for a in anomalies:
        causes = attribute_lib.rank_causes(run, a, ctx)
        follow = sequel_lib.carry_over(ctx, a, causes, earlier)
        if follow is not None:
            causes = [follow] + [c for c in causes if c.cause != causes_lib.UNKNOWN]
        earlier.append((a, causes))
        out.append({
            "kind": a.kind,
            "pattern": a.pattern,
            "step": a.step,
            "peak_step": a.peak_step,
            "end_step": a.end_step,
            "severity": round(float(a.severity), 4),
            "baseline": _finite_or_none(a.baseline),
            "peak_value": _finite_or_none(a.peak_value),
            "guard_skipped": _guard_count(run, guarded, a),
            "causes": [c.to_json() for c in causes],
        })
    return out


def run_report(run):
    """One run's entry of the report: its name, steps and anomalies."""
    return {"run": run.name, "steps": int(len(run.steps)),
            "first_step": int(run.steps[0]), "last_step": int(run.steps[-1]),
            "anomalies": analyze_run(run)}


def sanitize(value):
    """Replaces non-finite floats by None, recursively (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    return value


def report_logdir(logdir, run=None):
    """The full report of a logdir (optionally one run)."""
    from tb_stability.events import reader  # pylint: disable=import-outside-toplevel

    runs = reader.load_logdir(logdir, run=run)
    return sanitize({"logdir": str(logdir),
                     "runs": [run_report(runs[name]) for name in sorted(runs)]})
