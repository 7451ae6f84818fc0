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


def _stuck(run, at=200, level=2.0):
    """The loss learns for `at` steps, then sits at `level` (x start/10) to the end."""
    run.glob[at:, GLOBAL["loss"]] = level * np.exp(
        np.random.default_rng(1).normal(0, 0.01, len(run.steps) - at))
    return run


def _data(run, *, targets=None, preds=None, inputs_nonfinite=None):
    """Plants the step's data columns: (min, max, mean) of targets and predictions."""
    if targets is not None:
        for j, name in enumerate(("target_min", "target_max", "target_mean")):
            run.glob[:, GLOBAL[name]] = targets[j]
        run.glob[:, GLOBAL["target_nonfinite"]] = 0
    if preds is not None:
        for j, name in enumerate(("pred_min", "pred_max", "pred_mean")):
            run.glob[:, GLOBAL[name]] = preds[j]
    if inputs_nonfinite is not None:
        run.glob[:, GLOBAL["input_nonfinite"]] = inputs_nonfinite
    return run


def test_output_mismatch_from_the_recorded_configuration():
    """The callback's run_info "model": each mismatch is named on a stall,
    never a spike (an output that recovers could fit)."""
    cases = [
        ({"activation": "softmax", "units": 1}, {"name": "binary_crossentropy"}, "softmax over 1"),
        ({"activation": "linear", "units": 10},
         {"name": "categorical_crossentropy", "from_logits": False}, "expects probabilities"),
        ({"activation": "sigmoid", "units": 1},
         {"class": "BinaryCrossentropy", "from_logits": True}, "from_logits=True"),
    ]
    for output, loss, words in cases:
        run = _stuck(_run())
        run.info["model"] = {"output": {"layer": "d2", **output}, "loss": loss}
        (a,) = analyze_run(run)
        assert a["kind"] == "plateau", a
        top = a["causes"][0]
        assert top["cause"] == causes.OUTPUT_MISMATCH, (output, loss, a["causes"])
        assert words in " ".join(top["evidence"]) and top["layer"] == "m/d2"
        spike = _run()
        spike.info["model"] = run.info["model"]
        spike.glob[600:602, GLOBAL["loss"]] *= 500.0
        (s,) = analyze_run(spike)
        assert all(c["cause"] != causes.OUTPUT_MISMATCH for c in s["causes"])


def test_output_mismatch_from_targets_beyond_every_prediction():
    """A custom loop (no configuration): predictions pinned near 1 under
    targets from 10 to 90 is an output that cannot reach them; class labels
    against logits are no such evidence."""
    run = _data(_stuck(_run()), targets=(10.0, 90.0, 50.0), preds=(0.98, 0.99, 0.985))
    (a,) = analyze_run(run)
    assert a["causes"][0]["cause"] == causes.OUTPUT_MISMATCH, a["causes"]
    labels = _data(_stuck(_run()), targets=(0.0, 1.0, 0.1), preds=(-3.0, -0.5, -1.0))
    (a,) = analyze_run(labels)
    assert all(c["cause"] != causes.OUTPUT_MISMATCH for c in a["causes"])


def test_a_constant_prediction_at_the_targets_mean_is_dead_units():
    """Dead hidden units: every input gets the targets' mean (a stall at any
    level, found from the predictions); beyond the targets it is the output's."""
    run = _data(_run(), targets=(28.0, 44.0, 35.0), preds=(35.0, 35.0, 35.0))
    run.glob[:200, GLOBAL["pred_min"]] = 30.0  # the units were alive before
    (a,) = analyze_run(run)
    assert (a["kind"], a["pattern"]) == ("plateau", "stall")
    assert a["step"] <= 220
    assert a["causes"][0]["cause"] == causes.DEAD_UNITS, a["causes"]
    beyond = _data(_run(), targets=(-6.0, -1.0, -3.0), preds=(0.0, 0.0, 0.0))
    beyond.glob[:200, GLOBAL["pred_max"]] = 1.0
    (a,) = analyze_run(beyond)
    assert a["causes"][0]["cause"] == causes.OUTPUT_MISMATCH, a["causes"]


def test_nonfinite_input_from_the_data_and_not_without_it():
    """NaN in the batch makes nonfinite_input (the backward NaN is the
    data's); the same silent NaN with the data measured finite is born in
    the backward pass."""
    run = _data(_run(), inputs_nonfinite=0.0)
    run.glob[500, GLOBAL["input_nonfinite"]] = 3
    run.detail[500, 0, STAT["grad_nonfinite"]] = 7  # only the input kernel's
    run.glob[500:, GLOBAL["nonfinite"]] = 7
    (a,) = [x for x in analyze_run(run) if x["kind"] == "nonfinite"]
    top = a["causes"][0]
    assert top["cause"] == causes.NONFINITE_INPUT and top["confidence"] >= 0.9
    grad = [c for c in a["causes"] if c["cause"] == causes.NONFINITE_GRADIENT]
    assert not grad or grad[0]["confidence"] < 0.3
    run.glob[500, GLOBAL["input_nonfinite"]] = 0  # the data was finite
    (a,) = [x for x in analyze_run(run) if x["kind"] == "nonfinite"]
    assert a["causes"][0]["cause"] == causes.NONFINITE_GRADIENT
    assert all(c["cause"] != causes.NONFINITE_INPUT for c in a["causes"])


def test_half_precision_adam_epsilon_and_not_in_float32():
    opt = {"name": "Adam", "adam": True, "epsilon": 1e-7}
    run = _run(optimizer=dict(opt, variable_dtype="float16"))
    run.detail[500:, 1, STAT["moment_nonfinite"]] = 32
    run.glob[500:, GLOBAL["nonfinite"]] = 32
    (a,) = [x for x in analyze_run(run) if x["kind"] == "nonfinite"]
    assert a["causes"][0]["cause"] == causes.ADAM_EPSILON
    assert "float16" in " ".join(a["causes"][0]["evidence"])
    run.info["optimizer"] = dict(opt, variable_dtype="float32")
    (a,) = [x for x in analyze_run(run) if x["kind"] == "nonfinite"]
    assert all(c["cause"] != causes.ADAM_EPSILON for c in a["causes"])


def test_log_zero_not_in_a_keras_loss_nor_with_nan_data():
    def nan_loss():
        run = _run()
        run.glob[500:, GLOBAL["loss"]] = np.nan
        run.glob[495:500, GLOBAL["loss"]] *= np.arange(2, 7)  # rising before
        return run
    (a,) = analyze_run(nan_loss())
    assert a["causes"][0]["cause"] == causes.LOG_ZERO
    keras_loss = nan_loss()
    keras_loss.info["model"] = {"loss": {"class": "CategoricalCrossentropy"}}
    (a,) = analyze_run(keras_loss)
    assert all(c["cause"] != causes.LOG_ZERO for c in a["causes"])
    data = _data(nan_loss(), inputs_nonfinite=0.0)
    data.glob[500, GLOBAL["input_nonfinite"]] = 1
    (a,) = analyze_run(data)
    assert a["causes"][0]["cause"] == causes.NONFINITE_INPUT
    assert all(c["cause"] != causes.LOG_ZERO for c in a["causes"])


def test_summed_loss_from_the_recorded_reduction_only_without_adam():
    def blown(optimizer=None):
        run = _run(optimizer=optimizer)
        run.info["model"] = {"loss": {"class": "MeanSquaredError", "reduction": "sum"}}
        run.glob[600:, GLOBAL["loss"]] = np.nan
        return run
    (a,) = analyze_run(blown())
    assert a["causes"][0]["cause"] == causes.SUMMED_LOSS
    (a,) = analyze_run(blown({"name": "Adam", "adam": True, "epsilon": 1e-7}))
    assert all(c["cause"] != causes.SUMMED_LOSS for c in a["causes"])


def test_instability_with_large_updates_is_the_learning_rate():
    """The loss keeps returning far above its best, updates 5% of the
    weights per step: the step size; the same curve with usual updates
    names no cause."""
    n = 3000
    rng = np.random.default_rng(0)
    run = _run(n=n)
    walk = np.zeros(n)
    for t in range(801, n):
        walk[t] = 0.97 * walk[t - 1] + rng.normal(0, 0.12)
    run.glob[800:, GLOBAL["loss"]] *= 10.0 ** (np.abs(walk[800:]) * 1.5 + 0.6)
    run.glob[:, GLOBAL["update_ratio"]] = 0.05
    found = analyze_run(run)
    kinds = [a["kind"] for a in found]
    assert "instability" in kinds or "plateau" in kinds, kinds
    a = next(a for a in found if a["kind"] in ("instability", "plateau"))
    assert a["causes"][0]["cause"] == causes.LEARNING_RATE, a["causes"]
    run.glob[:, GLOBAL["update_ratio"]] = 1e-3
    a = next(a for a in analyze_run(run) if a["kind"] in ("instability", "plateau"))
    assert all(c["cause"] != causes.LEARNING_RATE for c in a["causes"])


def _adam_blowups(geometric=True, n=1600):
    """Adam(epsilon=1e-10) near a loss of 1e-16: from step 900 the loss blows
    up to 1e-6 three times, each time falling back only to 1e-13 (an
    `instability`), RMS(g²/v̂) above 1 for the 4 steps before each peak; the
    rises are geometric (50 steps, a constant factor) or, not, jumps."""
    run = _run(n=n, optimizer={"name": "Adam", "adam": True, "epsilon": 1e-10})
    rng = np.random.default_rng(1)
    y = np.full(n, -16.0) + rng.normal(0, 0.2, n)
    y[:400] = np.linspace(0, -16, 400) + rng.normal(0, 0.2, 400)
    run.glob[:, GLOBAL["rms_ratio_max"]] = 0.3
    run.detail[:, :, STAT["rms_ratio"]] = 0.3
    level = -16.0
    for start in (900, 1150, 1400):
        peak = start + 50
        y[start:peak] = np.linspace(level, -6, 50) if geometric else -6.0
        y[peak:peak + 150] = np.linspace(-6, -13, 150)[:n - peak]
        y[peak + 150:] = -13.0
        run.glob[peak - 4:peak + 2, GLOBAL["rms_ratio_max"]] = 3.0
        run.detail[peak - 4:peak + 2, 0, STAT["rms_ratio"]] = 3.0
        level = -13.0
    run.glob[:, GLOBAL["loss"]] = 10.0 ** y
    return run


def test_recurring_geometric_blowups_under_adam_are_adam_epsilon():
    """A train of geometric blow-ups that never settles back (an instability)
    is Adam's decayed second moment, judged on its first rise; the same
    instability made of jumps names no cause."""
    (a,) = analyze_run(_adam_blowups())
    assert a["kind"] == "instability"
    top = a["causes"][0]
    assert top["cause"] == causes.ADAM_EPSILON, a["causes"]
    # RMS(g²/v̂) crossed from step 946, the first rise's top is step 949.
    assert top["variable"] == "m/d0/kernel" and top["lead_steps"] == 3
    assert any("3 times" in e for e in top["evidence"]), top["evidence"]
    (a,) = analyze_run(_adam_blowups(geometric=False))
    assert a["kind"] == "instability"
    assert all(c["cause"] != causes.ADAM_EPSILON for c in a["causes"]), a["causes"]


def test_an_early_blowup_the_run_learned_past_is_no_learning_rate_evidence():
    """Large updates before a blow-up at step 12, then 16 decades of progress:
    that blow-up did not destabilise the run 900 steps later."""
    run = _adam_blowups(geometric=False)
    run.glob[12:15, GLOBAL["loss"]] = 30.0  # 3x above the start, at step 12
    run.glob[:12, GLOBAL["update_ratio"]] = 0.13
    (a,) = [a for a in analyze_run(run) if a["kind"] == "instability"]
    assert all(c["cause"] != causes.LEARNING_RATE for c in a["causes"]), a["causes"]
    # Without the progress after it, the same blow-up is the evidence.
    stuck = np.random.default_rng(2).normal(0, 0.05, len(run.steps) - 15)
    run.glob[15:, GLOBAL["loss"]] = 5.0 * np.exp(stuck)  # stalled above its best
    found = [a for a in analyze_run(run) if a["kind"] in ("instability", "plateau")]
    assert found and found[0]["causes"][0]["cause"] == causes.LEARNING_RATE, found


def test_gradients_that_overflow_in_a_blow_up_are_not_an_op_of_the_backward_pass():
    """A loss growing 1e4x per step overflows float32 in the gradients while
    it is still finite: nonfinite_gradient is that blow-up's consequence
    (low confidence, saying so), and the step size that blew it up leads.
    The same NaN gradient at an ordinary loss is the backward pass's."""
    def planted(blow_up):
        run = _run()
        run.glob[:, GLOBAL["input_nonfinite"]] = 0
        run.glob[:, GLOBAL["target_nonfinite"]] = 0
        if blow_up:
            run.glob[594:600, GLOBAL["loss"]] = 0.5 * 1e4 ** np.arange(1, 7)
            run.glob[594:600, GLOBAL["grad_norm"]] = 1e4 ** np.arange(1, 7)
        run.glob[600:, GLOBAL["nonfinite"]] = 5
        run.detail[600:, 4, STAT["grad_nonfinite"]] = 5
        return run
    (a,) = [a for a in analyze_run(planted(True)) if a["kind"] == "nonfinite"]
    assert a["pattern"] == "silent"
    ranked = {c["cause"]: c for c in a["causes"]}
    grad = ranked[causes.NONFINITE_GRADIENT]
    assert grad["confidence"] <= 0.3 and "overflow" in " ".join(grad["evidence"])
    assert a["causes"][0]["cause"] == causes.LEARNING_RATE, a["causes"]
    (a,) = analyze_run(planted(False))
    assert a["causes"][0]["cause"] == causes.NONFINITE_GRADIENT
    assert a["causes"][0]["confidence"] >= 0.8


def test_a_constant_prediction_from_a_linear_output_is_no_bound():
    """A linear output can reach any target: predictions that stick far
    from the targets are what the layers below send, not output_mismatch;
    the same predictions after a sigmoid are."""
    for act, mismatch in (("linear", False), ("sigmoid", True)):
        run = _data(_run(), targets=(28.0, 44.0, 35.0), preds=(-119.0, -119.0, -119.0))
        run.glob[:200, GLOBAL["pred_min"]] = -130.0  # it varied before
        run.info["model"] = {"output": {"layer": "d2", "activation": act, "units": 1},
                             "loss": {"name": "mean_squared_error"}}
        found = analyze_run(run)
        named = any(c["cause"] == causes.OUTPUT_MISMATCH for a in found for c in a["causes"])
        assert named == mismatch, (act, found)


def test_a_stall_after_an_exploding_recurrence_is_exploding_gradient():
    """A recurrence that explodes lifts every layer's gradient with it (no
    kernel stands out of the others), then everything collapses and the loss
    stalls: the recurrent kernel's burst, 1e8x its first gradient and the
    largest of all, is what killed the units. The same burst in a
    feed-forward kernel is no such evidence."""
    def planted(name):
        run = _stuck(_run())
        run.variables[2] = run.info["variables"][2]["name"] = name
        w = 8
        window = np.ones((w, V, len(metadata.STAT_COLUMNS), 2))
        kernels = [0, 2, 4]
        grad = metadata.STAT_COLUMNS.index("grad_norm")
        window[0, kernels, grad, 0] = [3e7, 1e8, 3e7]  # the burst, in the first window
        window[1:, :, grad, :] = 1e-9  # then the collapse
        run.glob[200:, GLOBAL["grad_norm"]] = 1e-9
        run.window_steps = np.arange(127, 1000, 128)[:w]
        run.window = window
        return run
    (a,) = [a for a in analyze_run(planted("m/rnn/cell/recurrent_kernel"))
            if a["kind"] == "plateau"]
    top = a["causes"][0]
    assert top["cause"] == causes.EXPLODING_GRADIENT, a["causes"]
    assert top["variable"] == "m/rnn/cell/recurrent_kernel"
    for b in analyze_run(planted("m/d1/kernel")):
        assert all(c["cause"] != causes.EXPLODING_GRADIENT for c in b["causes"]), b
