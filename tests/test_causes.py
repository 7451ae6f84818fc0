"""One small training run per cause id: its top-1 cause is that id.

The demo's runs cover summed_loss (seed000-bad), unnormalized_inputs
(seed001-bad), adam_epsilon (seed002-bad, seed003-bad) and bad_batch
(outlier-batch): see test_analysis_demo.py. Healthy controls must report
nothing.
"""

import pytest
import scenarios

from tb_stability import analysis
from tb_stability.analysis import causes

COVERED_BY_DEMO = {causes.SUMMED_LOSS, causes.UNNORMALIZED_INPUTS,
                   causes.ADAM_EPSILON, causes.BAD_BATCH}
WORKING = list(scenarios.SCENARIOS)


def _report(fn, tmp_path):
    logdir = str(tmp_path / "run")
    fn(logdir)
    (run,) = analysis.report_logdir(logdir)["runs"]
    return run


@pytest.mark.parametrize("cause", WORKING)
def test_top_cause(cause, tmp_path):
    run = _report(scenarios.SCENARIOS[cause], tmp_path)
    assert run["anomalies"], cause
    top = run["anomalies"][0]["causes"][0]
    assert top["cause"] == cause, run["anomalies"][0]
    assert top["evidence"] and top["fix"]


@pytest.mark.parametrize("name", sorted(scenarios.HEALTHY))
def test_healthy_controls_report_nothing(name, tmp_path):
    run = _report(scenarios.HEALTHY[name], tmp_path)
    assert run["anomalies"] == [], run["anomalies"]


def test_nonfinite_input_names_the_feature(tmp_path):
    run = _report(scenarios.nonfinite_input, tmp_path)
    top = run["anomalies"][0]["causes"][0]
    assert top["layer"].endswith("hidden/kernel")
    assert any("feature(s) 300" in e for e in top["evidence"])


def test_exploding_gradient_names_the_rnn_before_the_peak(tmp_path):
    run = _report(scenarios.exploding_gradient, tmp_path)
    top = run["anomalies"][0]["causes"][0]
    assert "/rnn/" in top["layer"], top
    assert top["lead_steps"] > 0, top  # the gradient jumped before the loss


def test_every_cause_id_has_a_test():
    tested = set(WORKING) | COVERED_BY_DEMO
    assert set(causes.ALL) == tested
