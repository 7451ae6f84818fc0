"""Attribution rules on planted RunData (no training): mechanism checks."""

import numpy as np

from tb_stability import metadata
from tb_stability.analysis import causes
from tb_stability.analysis.report import analyze_run
from tb_stability.events.series import GLOBAL, STAT, RunData

V = 6  # three Dense layers: kernel, bias


def _run(n=1000, optimizer=None, seed=0):
    rng = np.random.default_rng(seed)
    glob = np.ones((n, len(metadata.GLOBAL_COLUMNS)))
    glob[:, GLOBAL["loss"]] = 0.5 * np.exp(rng.normal(0, 0.1, n))
    # The run learned: from 10x its level over the first 100 steps (a loss
    # flat from its first step would be a stall of its own).
    glob[:100, GLOBAL["loss"]] *= np.logspace(1, 0, 100)
    glob[:, GLOBAL["nonfinite"]] = 0
    glob[:, GLOBAL["flags"]] = 0
    glob[:, GLOBAL["rms_ratio_max"]] = np.nan
    glob[:, GLOBAL["update_ratio"]] = 1e-3
    glob[:, GLOBAL["learning_rate"]] = 0.01
    glob[:, GLOBAL["batch_size"]] = 32
    for name in ("input_nonfinite", "target_nonfinite", "target_min", "target_max",
                 "target_mean", "pred_min", "pred_max", "pred_mean"):
        if name in GLOBAL:  # the data's statistics: not measured
            glob[:, GLOBAL[name]] = np.nan
    detail = np.abs(rng.normal(1, 0.05, (n, V, len(metadata.STAT_COLUMNS))))
    detail[:, :, STAT["grad_nonfinite"]] = 0
    names = [f"m/d{i // 2}/{'kernel' if i % 2 == 0 else 'bias'}" for i in range(V)]
    shapes = [[32, 32] if i % 2 == 0 else [32] for i in range(V)]
    info = {"optimizer": optimizer or {"name": "SGD", "adam": False},
            "variables": [{"name": a, "shape": s} for a, s in zip(names, shapes)],
            "input_kernel": names[0]}
    return RunData(name="planted", steps=np.arange(n), glob=glob,
                   window_steps=np.zeros([0], np.int64), window=np.zeros([0, V, 11, 2]),
                   detail_steps=np.arange(n), detail=detail,
                   input_rows_steps=np.zeros([0], np.int64), input_rows=np.zeros([0, 0]),
                   info=info, variables=names)


def test_exploding_gradient_names_the_layer_that_jumped_first():
    run = _run()
    run.detail[490:, 2, STAT["grad_norm"]] *= 1000.0  # d1/kernel explodes
    run.glob[500:503, GLOBAL["loss"]] *= 300.0  # the loss follows 10 steps later
    (a,) = analyze_run(run)
    assert (a["kind"], a["peak_step"]) == ("spike", 500)
    top = a["causes"][0]
    assert top["cause"] == causes.EXPLODING_GRADIENT
    assert top["variable"] == "m/d1/kernel" and top["lead_steps"] == 10
    assert top["layer"] == "m/d1"  # metadata.layer_of(variable), as /layers groups it


def test_summed_loss_never_blamed_under_adam():
    run = _run(optimizer={"name": "Adam", "adam": True, "epsilon": 1e-7})
    run.glob[0, GLOBAL["loss"]] = 32 * np.log(32)  # B * ln C with C = 32
    run.glob[600:602, GLOBAL["loss"]] *= 500.0
    for a in analyze_run(run):
        assert all(c["cause"] != causes.SUMMED_LOSS for c in a["causes"])
    sgd = _run()
    sgd.glob[0, GLOBAL["loss"]] = 32 * np.log(32)
    sgd.glob[600:602, GLOBAL["loss"]] *= 500.0
    assert any(c["cause"] == causes.SUMMED_LOSS
               for a in analyze_run(sgd) for c in a["causes"])


def test_learning_rate_needs_evidence():
    run = _run()
    run.glob[700:, GLOBAL["loss"]] *= 1e3  # one jump to a level it keeps: no step-size sign
    (a,) = analyze_run(run)
    assert a["kind"] == "divergence"
    assert all(c["cause"] != causes.LEARNING_RATE for c in a["causes"])
    run.glob[690:, GLOBAL["learning_rate"]] = 1.0  # a jump just before
    (a,) = analyze_run(run)
    assert a["causes"][0]["cause"] == causes.LEARNING_RATE


def test_geometric_rise_is_the_step_size_only_without_adam():
    """Under SGD at a constant lr a loss growing by a constant factor per
    step is past the stability limit (lr·λ > 2); under Adam it is not this
    cause's evidence (a decayed second moment grows that way too)."""
    rise = np.exp(0.1 * np.arange(300)).clip(max=1e6)
    sgd = _run()
    sgd.glob[700:, GLOBAL["loss"]] *= rise
    (a,) = analyze_run(sgd)
    assert a["kind"] == "divergence"
    top = a["causes"][0]
    assert top["cause"] == causes.LEARNING_RATE and top["confidence"] < 0.6
    assert "x1.1" in " ".join(top["evidence"])  # e^0.1 per step
    adam = _run(optimizer={"name": "Adam", "adam": True, "epsilon": 1e-7})
    adam.glob[700:, GLOBAL["loss"]] *= rise
    (a,) = analyze_run(adam)
    assert all(c["cause"] != causes.LEARNING_RATE for c in a["causes"])


def test_missing_series_degrade_to_unknown():
    run = _run()
    run.glob[:, GLOBAL["grad_norm"]] = np.nan
    run.detail = np.zeros([0, V, 11])
    run.detail_steps = np.zeros([0], np.int64)
    run.glob[400, GLOBAL["loss"]] *= 1000.0
    (a,) = analyze_run(run)
    assert a["causes"][0]["cause"] == causes.UNKNOWN


def _shock_then_rise(gap):
    run = _run(optimizer={"name": "Adam", "adam": True, "epsilon": 1e-7,
                          "beta_1": 0.9, "beta_2": 0.999})
    run.glob[:, GLOBAL["rms_ratio_max"]] = 0.3
    run.glob[500, GLOBAL["loss"]] *= 1e5  # one bad batch
    run.glob[500, GLOBAL["grad_norm"]] = 1e4
    run.detail[500, :, STAT["grad_norm"]] *= 1e4
    rise = slice(501 + gap, 560)
    run.glob[rise, GLOBAL["loss"]] *= 40.0  # the damaged weights
    return run


def test_rise_right_after_a_bad_batch_is_its_sequel():
    first, second = analyze_run(_shock_then_rise(gap=2))[:2]
    assert first["peak_step"] == 500
    assert first["causes"][0]["cause"] == causes.BAD_BATCH
    assert second["step"] == 503
    top = second["causes"][0]
    assert top["cause"] == causes.BAD_BATCH and top["sequel_of"] == 500
    assert any("inflated, not decayed" in e for e in top["evidence"])


def test_no_sequel_without_a_shock_or_far_after():
    run = _shock_then_rise(gap=2)
    run.glob[500, GLOBAL["grad_norm"]] = 5.0  # the spike was no gradient shock
    for a in analyze_run(run)[1:]:
        assert all("sequel_of" not in c for c in a["causes"])
    far = _shock_then_rise(gap=200)
    far.glob[701:760, GLOBAL["loss"]] *= 40.0
    for a in analyze_run(far)[1:]:
        assert all("sequel_of" not in c for c in a["causes"])
