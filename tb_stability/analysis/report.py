"""The report: anomalies and their ranked causes, as the public JSON shape.

    {"logdir": str, "runs": [{"run": str, "steps": int, "anomalies": [
      {"kind", "step", "peak_step", "end_step", "severity",
       "causes": [{"cause", "confidence", "layer", "lead_steps",
                   "evidence", "fix"}]}]}]}

Documented in tb_stability/REPORT.md. Non-finite floats never appear in
the JSON: `sanitize` writes them as null.
"""

import math

import numpy as np

from tb_stability.analysis import attribute as attribute_lib
from tb_stability.analysis import causes as causes_lib
from tb_stability.analysis import detect as detect_lib
from tb_stability.analysis import reader


def _finite_or_none(x):
    x = float(x)
    return x if math.isfinite(x) else None


def skipped_steps(run):
    """Steps a LossScaleOptimizer skipped on purpose: finite loss, non-finite
    gradients, and the next step at a lower loss scale."""
    scale = run.col("loss_scale")
    if not np.any(np.isfinite(scale)):
        return None
    nxt = np.concatenate([scale[1:], [np.nan]])
    return np.isfinite(run.col("loss")) & np.isfinite(scale) & (nxt < scale)


AFTERMATH_STEPS = 64  # an anomaly this soon after another may be its sequel


def _aftermath(run, a, causes, previous):
    """A cause carried over from the anomaly just before `a`, when `a`
    began within AFTERMATH_STEPS of its end and nothing explains `a`
    better: the optimizer state still holds the earlier event's gradient.
    Returns the cause dict or None."""
    if previous is None or not previous["causes"]:
        return None
    prev_top = previous["causes"][0]
    if prev_top["cause"] == causes_lib.UNKNOWN or previous["kind"] == "plateau":
        return None
    since = previous["end_step"] if previous["end_step"] is not None else previous["peak_step"]
    gap = a.step - since
    if not 0 <= gap <= AFTERMATH_STEPS:
        return None
    confidence = round(0.8 * prev_top["confidence"], 3)
    if causes and causes[0].confidence >= confidence:
        return None
    opt = run.optimizer
    if opt.get("adam"):
        b1, b2 = opt.get("beta_1", 0.9), opt.get("beta_2", 0.999)
        memory = (f"Adam's moments still carry that step's gradient: m decays by "
                  f"beta_1={_num(b1)} per step and v by beta_2={_num(b2)}, so one "
                  f"huge gradient keeps pushing the weights along it for about "
                  f"{_num(1 / max(1 - b1, 1e-6))} steps and shrinks the steps that "
                  f"could repair it for about {_num(1 / max(1 - b2, 1e-6))}.")
    else:
        memory = "The weights that step moved have not recovered."
    return {
        "cause": prev_top["cause"],
        "confidence": confidence,
        "layer": prev_top["layer"],
        "lead_steps": int(a.peak_step - previous["peak_step"]),
        "evidence": [f"Began {a.step - previous['peak_step']} steps after the "
                     f"{previous['kind']} at step {previous['peak_step']} "
                     f"(attributed to {prev_top['cause']}). {memory}"],
        "fix": prev_top["fix"],
        "sequel_of": int(previous["peak_step"]),
    }


def _num(x):
    return f"{float(x):.4g}"


def analyze_run(run):
    """[anomaly dict] for one `RunData`, each with its ranked causes."""
    ctx = attribute_lib.Context(run)
    anomalies = detect_lib.detect_anomalies(
        run.steps, run.col("loss"), nonfinite=run.col("nonfinite"),
        classes=ctx.classes, skipped=skipped_steps(run))
    out = []
    for a in anomalies:
        causes = attribute_lib.rank_causes(run, a, ctx)
        sequel = _aftermath(run, a, causes, out[-1] if out else None)
        causes = [c.to_json() for c in causes if c.cause != causes_lib.UNKNOWN
                  or sequel is None]
        if sequel is not None:
            causes.insert(0, sequel)
        out.append({
            "kind": a.kind,
            "step": a.step,
            "peak_step": a.peak_step,
            "end_step": a.end_step,
            "severity": round(float(a.severity), 4),
            "baseline": _finite_or_none(a.baseline),
            "peak_value": _finite_or_none(a.peak_value),
            "causes": causes,
        })
    return out


def run_report(run):
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
    runs = reader.load_logdir(logdir, run=run)
    return sanitize({"logdir": str(logdir),
                     "runs": [run_report(runs[name]) for name in sorted(runs)]})
