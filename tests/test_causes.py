"""One small training run per cause id: its top-1 cause is that id.

The demo's runs cover summed_loss (seed000-bad), unnormalized_inputs
(seed001-bad), adam_epsilon (seed002-bad, seed003-bad) and bad_batch
(outlier-batch): see test_analysis_demo.py. Healthy controls must report
nothing.
"""

import inspect
import re

import pytest
import scenarios

from tb_stability import analysis
from tb_stability.analysis import causes, rules

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
    assert top["variable"].endswith("hidden/kernel")
    assert top["layer"].endswith("hidden")
    assert any("feature(s) 300" in e for e in top["evidence"])


def test_exploding_gradient_names_the_rnn_before_the_peak(tmp_path):
    run = _report(scenarios.exploding_gradient, tmp_path)
    top = run["anomalies"][0]["causes"][0]
    assert top["variable"].endswith("recurrent_kernel"), top
    assert top["lead_steps"] > 0, top  # its first update came before the blow-up


def test_exploding_gradient_clipped_is_healthy(tmp_path):
    scenarios.exploding_gradient(str(tmp_path / "clipped"), clipnorm=1.0)
    (run,) = analysis.report_logdir(str(tmp_path))["runs"]
    assert run["anomalies"] == [], run["anomalies"]


def test_every_cause_id_has_a_test():
    tested = set(WORKING) | COVERED_BY_DEMO
    assert set(causes.ALL) == tested


def test_registry_defines_each_cause_once_with_its_own_style():
    """analysis/causes.py is the one definition: ids, titles, fixes, styles."""
    constants = {v for k, v in vars(causes).items() if k.isupper() and isinstance(v, str)}
    assert set(causes.ALL) == constants and len(causes.ALL) == len(set(causes.ALL))
    assert causes.ALL[-1] == causes.UNKNOWN
    for c in causes.CAUSES:
        assert c.title and c.fix and c.label, c
        assert re.fullmatch(r"#[0-9a-f]{6}", c.color), c
        assert c.shape in causes.SHAPES, c
        assert causes.TITLE[c.id] == c.title and causes.FIX[c.id] == c.fix
    for field in ("color", "shape", "label"):
        values = [getattr(c, field) for c in causes.CAUSES]
        assert len(set(values)) == len(values), field  # apart in grey-scale too
    served = causes.registry_json()["causes"]
    assert [e["cause"] for e in served] == list(causes.ALL)
    assert set(served[0]) == {"cause", "title", "fix", "color", "shape", "label"}


def test_every_cause_but_unknown_has_one_registered_rule():
    ids = [cid for cid, _ in rules.RULES]
    assert sorted(ids) == sorted(set(causes.ALL) - {causes.UNKNOWN})
    for cid, rule in rules.RULES:
        module = inspect.getmodule(rule)
        doc = module.__doc__ or ""
        assert cid in doc.splitlines()[0] or cid in doc, (cid, module.__name__)
        assert "Mechanism" in doc and "Evidence" in doc, module.__name__
        assert rule.__doc__, rule
        # thresholds and confidences are named numbers, not inline literals
        named = [k for k, v in vars(module).items() if k.isupper() and isinstance(v, (int, float))]
        assert named, module.__name__
