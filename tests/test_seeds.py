"""Each cheap scenario's diagnosis holds over five seeds, not one trajectory.

Every (scenario, seed) pair is its own test: the seed picks the data, the
batch order and the initialisation; the run trains under op determinism
(demo.main.deterministic); the test asserts the first anomaly's kind and
its top cause.

Run here (a few seconds per seed): the demo's outlier-batch, seed000-bad and
seed001-bad-nan, and the tests/scenarios.py runs nonfinite_input, log_zero,
nonfinite_gradient, bad_init, output_mismatch and exploding_gradient. Left out as too expensive
for this file (their seed-0 runs are in test_analysis_demo.py / test_causes.py; their
multi-seed table is in the notes): seed001-bad (~35 s a seed), seed002-bad
and seed003-bad (10,000 and 8,000 steps, 30-50 s a seed), the fixed runs,
and unknown, learning_rate, dead_units, vanishing_gradient and the healthy
controls (6-20 s a seed each). exploding_gradient is left out because it
does not hold: it rests on one chaotic trajectory (an RNN basin-boundary
cliff) and gives no anomaly, or another, on seeds 0-4.

A pair known not to hold is marked xfail(strict=True) with what it gives,
so it stays visible and turns into a failure once it is fixed.
"""

import os

import pytest
import scenarios

from demo import main as demo
from tb_stability import analysis
from tb_stability.analysis import causes

SEEDS = range(5)

# name: (first anomaly kind, or the kinds it may be, top cause).
DEMO = {
    "outlier-batch": ("spike", causes.BAD_BATCH),
    "seed000-bad": ("nonfinite", causes.SUMMED_LOSS),
    "seed001-bad-nan": ("nonfinite", causes.UNNORMALIZED_INPUTS),
}
SCENARIOS = {
    "nonfinite_input": ("nonfinite", causes.NONFINITE_INPUT),
    "log_zero": ("nonfinite", causes.LOG_ZERO),
    "nonfinite_gradient": ("nonfinite", causes.NONFINITE_GRADIENT),
    # The first SGD step overshoots (a spike at step 1 on most seeds: 300x
    # above the first loss), then the loss pins at ln 10: both bad_init.
    "bad_init": (("spike", "plateau"), causes.BAD_INIT),
    "output_mismatch": ("plateau", causes.OUTPUT_MISMATCH),
    "exploding_gradient": ("nonfinite", causes.EXPLODING_GRADIENT),
}
KNOWN = {}  # (name, seed): what it gives instead


def _cases(table):
    out = []
    for name in table:
        for seed in SEEDS:
            marks = ()
            if (name, seed) in KNOWN:
                marks = pytest.mark.xfail(strict=True, reason=KNOWN[name, seed])
            out.append(pytest.param(name, seed, marks=marks, id=f"{name}-seed{seed}"))
    return out


def _diagnosis(logdir, name):
    (run,) = [r for r in analysis.report_logdir(logdir)["runs"] if r["run"] == name]
    if not run["anomalies"]:
        return None
    first = run["anomalies"][0]
    return first["kind"], first["causes"][0]["cause"]


@pytest.mark.parametrize("name,seed", _cases(DEMO))
def test_demo_run_diagnosis_holds_over_seeds(name, seed, tmp_path):
    demo.run_one(str(tmp_path), name, seed=seed)
    assert _diagnosis(str(tmp_path), name) == DEMO[name]


@pytest.mark.parametrize("name,seed", _cases(SCENARIOS))
def test_scenario_diagnosis_holds_over_seeds(name, seed, tmp_path):
    fn = {**scenarios.SCENARIOS, **scenarios.HEALTHY}[name]
    with demo.deterministic(seed):
        fn(os.path.join(str(tmp_path), name), seed=seed)
    kinds, cause = SCENARIOS[name]
    kind, got = _diagnosis(str(tmp_path), name)
    assert kind in ((kinds,) if isinstance(kinds, str) else kinds) and got == cause, (kind, got)
