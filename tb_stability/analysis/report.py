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


def _aftermath(run, a, causes, earlier):
    """A cause carried over from the anomaly just before `a`: `a` began
    within AFTERMATH_STEPS of its end, and that anomaly's gradient was a
    shock (>= 100x its median before) that the optimizer's state still
    holds. Under Adam the shock inflates v, so RMS(g²/v̂) stays low: the
    opposite of a decayed second moment. Returns the cause dict or None."""
    if not earlier:
        return None
    previous = earlier[-1]
    if not previous["causes"] or previous["kind"] == "plateau":
        return None
    since = previous["end_step"] if previous["end_step"] is not None else previous["peak_step"]
    gap = a.step - since
    if not 0 <= gap <= AFTERMATH_STEPS:
        return None
    # A sequel's sequel goes back to the shock itself.
    origin = previous["causes"][0].get("sequel_of")
    if origin is not None:
        previous = next((e for e in earlier if e["peak_step"] == origin), previous)
    prev_top = previous["causes"][0]
    if prev_top["cause"] == causes_lib.UNKNOWN:
        return None
    grad = run.col("grad_norm")
    ip, i0 = run.index_of(previous["peak_step"]), run.index_of(previous["step"])
    before = grad[max(0, i0 - 64):i0]
    before = before[np.isfinite(before)]
    if not len(before) or not np.isfinite(grad[ip]):
        return None
    shock = grad[ip] / max(float(np.median(before)), 1e-30)
    if shock < 100:
        return None
    evidence = [f"Began {a.step - previous['peak_step']} steps after the "
                f"{previous['kind']} at step {previous['peak_step']} (attributed to "
                f"{prev_top['cause']}), whose gradient norm was {_num(shock)}x its "
                f"median before."]
    # Right after the shock the link is strong; later, less so.
    confidence = 0.7 if gap <= 8 else 0.6
    opt = run.optimizer
    if opt.get("adam"):
        b1, b2 = opt.get("beta_1", 0.9), opt.get("beta_2", 0.999)
        evidence.append(
            f"Adam's moments still carry that gradient: m decays by beta_1={_num(b1)} "
            f"per step and v by beta_2={_num(b2)}, so it keeps pushing the weights "
            f"along it for about {_num(1 / max(1 - b1, 1e-6))} steps and shrinks the "
            f"steps that could repair the damage for about {_num(1 / max(1 - b2, 1e-6))}.")
        all_rms = run.col("rms_ratio_max")
        rms = all_rms[ip + 1:run.index_of(a.peak_step) + 1]
        rms = rms[np.isfinite(rms)]
        level = attribute_lib.rms_precursor_level(all_rms, i0)
        if len(rms) and np.max(rms) <= level:
            evidence.append(f"RMS(g²/v̂) stayed within its usual range (max "
                            f"{_num(np.max(rms))}, at most {_num(level)}) from then to "
                            f"the peak: v̂ was inflated, not decayed.")
            confidence += 0.05
    if causes and causes[0].confidence >= confidence:
        return None
    return {
        "cause": prev_top["cause"],
        "confidence": confidence,
        "layer": prev_top["layer"],
        "lead_steps": int(a.peak_step - previous["peak_step"]),
        "evidence": evidence,
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
        sequel = _aftermath(run, a, causes, out)
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
