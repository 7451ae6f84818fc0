"""The plugin's routes, full stack: TensorBoard's WSGI app over its data
provider over real event files (werkzeug's test client).
"""

import json
import os

import numpy as np
import pytest
from conftest import no_bare_nan, reload_logdir, tensorboard_app
from werkzeug import test as wtest

from benchmarks.synthetic import write_run
from tb_stability import analysis
from tb_stability.server import payloads

BASE = "/data/plugin/tb_stability"
HTML_RUN = '<img src=x onerror="alert(1)">'
SPIKES = (1234, 2718)


@pytest.fixture(scope="module")
def synthetic_logdir(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("synthetic")
    write_run(str(logdir / "spiky"), 4000, 6, list(SPIKES))
    write_run(str(logdir / HTML_RUN), 600, 4, [300],
              names=["<b>model</b>/dense/kernel", "<b>model</b>/dense/bias",
                     "m/" + "x" * 500 + "/kernel", "m/ünïcode/bias"])
    os.makedirs(logdir / "empty")
    return logdir


@pytest.fixture(scope="module")
def client(synthetic_logdir):
    app, _ = tensorboard_app(synthetic_logdir)
    return wtest.Client(app)


def _get(client, route, **args):
    response = client.get(BASE + route, query_string=args)
    return response.status_code, response.data


def _json(client, route, **args):
    status, body = _get(client, route, **args)
    assert status == 200, (route, args, body[:300])
    return no_bare_nan(body)


def test_runs_lists_runs_with_data(client):
    runs = _json(client, "/runs")["runs"]
    assert [r["run"] for r in runs] == sorted(["spiky", HTML_RUN])
    assert {r["run"]: r["last_step"] for r in runs}["spiky"] == 3999


def test_causes_route_serves_the_registry(client, tmp_path):
    """GET causes: every cause of analysis/causes.py with its title, fix and
    drawing style, whatever the logdir (an empty one too)."""
    from tb_stability.analysis import causes

    data = _json(client, "/causes")
    assert [c["cause"] for c in data["causes"]] == list(causes.ALL)
    for entry in data["causes"]:
        d = causes.BY_ID[entry["cause"]]
        assert entry == {"cause": d.id, "title": d.title, "fix": d.fix,
                         "color": d.color, "shape": d.shape, "label": d.label}
    # the titles the other routes add are the registry's
    for a in _json(client, "/timeline", run="spiky")["anomalies"]:
        assert a["cause"]["title"] == causes.TITLE[a["cause"]["cause"]]
    empty, _ = tensorboard_app(tmp_path)
    assert no_bare_nan(wtest.Client(empty).get(BASE + "/causes").data) == data


def test_timeline_keeps_every_spike_at_its_step(client):
    for width in (1, 7, 100, 1000, 5000):
        data = _json(client, "/timeline", run="spiky", width=str(width))
        assert data["steps"] == 4000 and data["first_step"] == 0
        assert data["buckets"] <= width
        assert sorted(a["peak_step"] for a in data["anomalies"]) == list(SPIKES)
        for a in data["anomalies"]:
            assert a["cause"]["cause"] in analysis.CAUSE_IDS
            assert a["cause"]["title"] and a["cause"]["fix"]
        # The max envelope holds the spikes' values (min/max, not sampling).
        lo, hi = np.array(data["step_min"]), np.array(data["step_max"])
        loss_max = np.array(data["series"]["loss"]["max"], float)
        for a in data["anomalies"]:
            b = int(np.flatnonzero((lo <= a["peak_step"]) & (a["peak_step"] <= hi))[0])
            assert loss_max[b] >= a["peak_value"] * (1 - 1e-6)
        assert np.all(lo[1:] > hi[:-1])  # buckets do not overlap
    data = _json(client, "/timeline", run="spiky", width="5000")
    assert data["buckets"] == 4000  # fewer rows than width: one per step
    assert "loss_scale" not in data["series"]  # never recorded: left out


def test_timeline_step_range_for_a_zoomed_chart(client):
    data = _json(client, "/timeline", run="spiky", width="100", first="1000", last="1999")
    assert data["range"] == [1000, 1999] and data["range_steps"] == 1000
    assert data["buckets"] == 100 and data["step_min"][0] == 1000
    assert data["step_max"][-1] == 1999 and data["steps"] == 4000
    assert sorted(a["peak_step"] for a in data["anomalies"]) == list(SPIKES)
    spike_bucket = (SPIKES[0] - 1000) // 10
    assert data["series"]["loss"]["max"][spike_bucket] == max(data["series"]["loss"]["max"])
    empty = _json(client, "/timeline", run="spiky", first="5000")
    assert empty["buckets"] == 0 and empty["range"] is None


def test_timeline_matches_the_cli_analysis(client, synthetic_logdir):
    report = analysis.report_logdir(str(synthetic_logdir), run="spiky")
    expected = [(a["kind"], a["step"], a["peak_step"], a["causes"][0]["cause"])
                for a in report["runs"][0]["anomalies"]]
    data = _json(client, "/timeline", run="spiky")
    assert [(a["kind"], a["step"], a["peak_step"], a["cause"]["cause"])
            for a in data["anomalies"]] == expected


def test_anomaly_route_serves_causes_and_layer_matrices(client):
    for key in ("step", "peak_step"):
        spike = _json(client, "/timeline", run="spiky")["anomalies"][1]
        data = _json(client, "/anomaly", run="spiky", step=str(spike[key]))
        assert data["anomaly"]["peak_step"] == SPIKES[1]
        assert data["causes"][0]["cause"] == spike["cause"]["cause"]
        for cause in data["causes"]:
            assert set(cause) >= {"cause", "confidence", "layer", "variable", "lead_steps",
                                  "evidence", "fix", "title"}
            assert cause["layer"] == (None if cause["variable"] is None
                                      else payloads.layer_of(cause["variable"]))
        ev = data["evidence"]
        assert ev["highlight"]["variable"] == data["causes"][0]["variable"]
        assert ev["resolution"] == "step"
        assert ev["steps"] == list(range(SPIKES[1] - 32, SPIKES[1] + 9))
        assert len(ev["variables"]) == 6
        for name in ("grad_norm", "rms_ratio", "eff_step_max", "update_ratio"):
            matrix = ev["stats"][name]
            assert len(matrix) == 6 and all(len(row) == 41 for row in matrix)
        assert ev["highlight"]["onset_step"] == data["anomaly"]["step"]
        # Not more than MAX_ROWS variables: all of them, in the model's order.
        assert ev["variables_total"] == 6 and ev["variable_index"] == list(range(6))
        assert ev["variables"] == [f"model/layer_{i // 2}/{'kernel' if i % 2 == 0 else 'bias'}"
                                   for i in range(6)]
        g = data["global"]
        assert g["steps"] == ev["steps"]
        peak = g["steps"].index(SPIKES[1])
        assert g["series"]["loss"][peak] == max(g["series"]["loss"])


def test_layers_route(client):
    data = _json(client, "/layers", run=HTML_RUN)
    names = [v["name"] for v in data["variables"]]
    assert names[0] == "<b>model</b>/dense/kernel"  # data, as is
    assert data["variables"][0]["layer"] == "<b>model</b>/dense"
    assert data["variables"][0]["size"] == 64 * 64
    assert len(names[2]) == 509
    assert data["variables"][0]["grad_norm_max"] > 0


def test_html_named_run_is_served_as_json_data(client):
    status, body = _get(client, "/timeline", run=HTML_RUN, width="50")
    assert status == 200
    assert no_bare_nan(body)["run"] == HTML_RUN
    spike = no_bare_nan(body)["anomalies"][0]
    assert spike["peak_step"] == 300
    data = _json(client, "/anomaly", run=HTML_RUN, step="300")
    assert data["evidence"]["variables"][0] == "<b>model</b>/dense/kernel"


def test_nonfinite_values_are_encoded_explicitly(tmp_path):
    """NaN/Inf come back as the strings "NaN"/"Infinity", never bare."""
    import tensorflow as tf

    from tb_stability import metadata, summary

    rows = np.zeros([300, 1 + len(metadata.GLOBAL_COLUMNS)], np.float32)
    rows[:, 0] = np.arange(300) - 299
    loss = 1 + 0.01 * np.random.default_rng(0).random(300)
    loss[250:] = np.nan
    loss[240] = np.inf
    rows[:, 1 + metadata.GLOBAL_COLUMNS.index("loss")] = loss
    rows[:, 1 + metadata.GLOBAL_COLUMNS.index("grad_norm")] = 1.0
    with tf.summary.create_file_writer(str(tmp_path / "nan")).as_default():
        summary.global_rows(None, rows, step=299)
    client = wtest.Client(tensorboard_app(tmp_path)[0])
    status, body = _get(client, "/timeline", run="nan", width="300")
    data = no_bare_nan(body)
    assert status == 200
    loss_max = data["series"]["loss"]["max"]
    assert loss_max[240] == "Infinity" and loss_max[260] == "NaN"
    assert isinstance(loss_max[0], float)
    assert data["nonfinite"][260] == 1 and data["nonfinite"][0] == 0
    nonfinite = [a["step"] for a in data["anomalies"] if a["kind"] == "nonfinite"]
    assert nonfinite[0] == 240
    detail = no_bare_nan(_get(client, "/anomaly", run="nan", step="240")[1])
    assert detail["global"]["series"]["loss"][32] == "Infinity"
    # the NaN run from 250 is its own anomaly, or (10 finite rows apart) one
    # with the Inf at 240; either way a real NaN is "NaN", never null
    last = no_bare_nan(_get(client, "/anomaly", run="nan", step=str(nonfinite[-1]))[1])
    series = last["global"]["series"]["loss"]
    steps = last["global"]["steps"]
    assert all((v == "NaN") == (s >= 250) for s, v in zip(steps, series) if s != 240)
    if len(nonfinite) > 1:
        assert "NaN" in series


def _sparse_run(logdir):
    """A run measured every 8th step (stats_every=8): the statistics are NaN
    on the steps between, and really NaN on steps 120-123, where variable 1's
    gradient holds NaN entries (its count is positive) and the loss is NaN."""
    import tensorflow as tf

    from tb_stability import metadata, summary

    n, G = 160, len(metadata.GLOBAL_COLUMNS)
    S = {c: i for i, c in enumerate(metadata.STAT_COLUMNS)}
    gc = {c: i for i, c in enumerate(metadata.GLOBAL_COLUMNS)}
    glob = np.ones([n, G], np.float32)
    glob[:, gc["loss"]] = 1 + 0.01 * np.random.default_rng(1).random(n)
    glob[:, gc["flags"]] = glob[:, gc["nonfinite"]] = 0
    glob[:, gc["loss_scale"]] = np.nan
    measured = (np.arange(n) % 8 == 0) | (np.arange(n) >= 120)
    for c in ("rms_ratio_max", "update_ratio", "weight_norm", "eff_step_max"):
        glob[~measured, gc[c]] = np.nan
    glob[120:124, gc["loss"]] = np.nan
    glob[120:124, gc["nonfinite"]] = 5
    glob[120:124, gc["rms_ratio_max"]] = np.nan
    info = {"optimizer": {"name": "Adam", "adam": True, "epsilon": 1e-7},
            "variables": [{"name": "m/d/kernel", "shape": [4, 4]},
                          {"name": "m/d/bias", "shape": [4]}],
            "window": 256, "detail_before": 32, "detail_after": 8, "stats_every": 8}
    with tf.summary.create_file_writer(logdir).as_default():
        summary.run_info(None, info, step=0)
        offsets = (np.arange(n) - (n - 1)).astype(np.float32)[:, None]
        summary.global_rows(None, np.concatenate([offsets, glob], 1), step=n - 1)
        summary.layers_window(None, np.ones([2, len(S), 2], np.float32), step=n - 1)
        for step in range(80, n):
            row = np.ones([2, len(S)], np.float32)
            row[:, [S["grad_nonfinite"], S["weight_nonfinite"], S["moment_nonfinite"]]] = 0
            if not measured[step]:
                for c in S:
                    if c not in ("grad_norm", "grad_nonfinite", "weight_nonfinite",
                                 "moment_nonfinite"):
                        row[:, S[c]] = np.nan
            if 120 <= step < 124:
                row[1, S["grad_nonfinite"]] = 4
                row[1, [S["grad_norm"], S["rms_ratio"], S["update_ratio"]]] = np.nan
            summary.layers_detail(None, row, step=step)


def test_unmeasured_is_null_and_real_nan_is_the_string(tmp_path):
    """stats_every leaves NaN on the steps between measurements: the routes
    send those as null ("not measured"), and "NaN" only where a value
    really was NaN (issue 18: the heatmap painted unmeasured cells as NaN)."""
    _sparse_run(str(tmp_path / "sparse"))
    client = wtest.Client(tensorboard_app(tmp_path)[0])
    nonfinite = [a for a in _json(client, "/timeline", run="sparse", width="1000")["anomalies"]
                 if a["kind"] == "nonfinite"]
    assert nonfinite and nonfinite[0]["step"] == 120
    data = _json(client, "/anomaly", run="sparse", step="120")
    ev = data["evidence"]
    steps = ev["steps"]
    rms = ev["stats"]["rms_ratio"]
    for j, step in enumerate(steps):
        real = 120 <= step < 124
        measured = step % 8 == 0 or step >= 120
        assert rms[0][j] == (1.0 if measured else None), (step, rms[0][j])
        assert rms[1][j] == ("NaN" if real else 1.0 if measured else None), (step, rms[1][j])
        assert ev["stats"]["grad_norm"][1][j] == ("NaN" if real else 1.0)
    series = data["global"]["series"]
    for step, loss, rmax, lr_scale in zip(data["global"]["steps"], series["loss"],
                                          series["rms_ratio_max"], series["loss_scale"]):
        real = 120 <= step < 124
        assert lr_scale is None  # no loss scaling: never "NaN"
        assert (loss == "NaN") == real
        if real:
            assert rmax == "NaN"
        elif step % 8 and step < 120:
            assert rmax is None, step
    # the timeline: a bucket of one unmeasured step is null, a real NaN "NaN"
    tl = _json(client, "/timeline", run="sparse", width="1000")
    rmax = dict(zip(tl["step_min"], tl["series"]["rms_ratio_max"]["max"]))
    assert rmax[3] is None and rmax[8] == 1.0 and rmax[121] == "NaN"
    assert "NaN" not in json.dumps(tl["series"]["rms_ratio_max"]["max"][:120])
    # wide buckets mixing measured and unmeasured steps keep the measured value
    coarse = _json(client, "/timeline", run="sparse", width="20")
    assert None not in coarse["series"]["rms_ratio_max"]["max"]


def test_overview_lists_every_run_worst_first(tmp_path, monkeypatch):
    """GET overview: every run with its status and first anomaly (the one
    /timeline lists first), worst first; answered from a per-run cache
    warm, and a run whose data changed (or a new run) is analysed again."""
    from tb_stability.analysis import report

    write_run(str(tmp_path / "healthy"), 600, 2, [])
    write_run(str(tmp_path / "spiky"), 1000, 2, [400, 700])
    _sparse_run(str(tmp_path / "sparse"))
    os.makedirs(tmp_path / "no-stability-data")
    app, ingester = tensorboard_app(tmp_path)
    client = wtest.Client(app)
    calls = []
    real = report.analyze_run
    monkeypatch.setattr(report, "analyze_run", lambda run: calls.append(run.name) or real(run))
    data = _json(client, "/overview")
    while data["pending"]:  # a slow machine: the rest comes with the next requests
        data = _json(client, "/overview")
    assert sorted(calls) == ["healthy", "sparse", "spiky"]  # each analysed once
    assert [e["run"] for e in data["runs"]] == ["sparse", "spiky", "healthy"]
    assert [e["status"] for e in data["runs"]] == ["nonfinite", "anomalies", "healthy"]
    assert data["total"] == 3
    assert data["status_counts"] == {"nonfinite": 1, "anomalies": 1, "healthy": 1}
    for e in data["runs"]:
        timeline = _json(client, "/timeline", run=e["run"])
        assert e["anomalies"] == len(timeline["anomalies"])
        assert e["last_step"] == timeline["last_step"]
        if not timeline["anomalies"]:
            assert e["first"] is None and e["causes"] == []
            continue
        a = timeline["anomalies"][0]
        assert e["first"] == {"kind": a["kind"], "pattern": a["pattern"], "step": a["step"],
                              "peak_step": a["peak_step"], "cause": a["cause"]["cause"],
                              "title": a["cause"]["title"],
                              "confidence": a["cause"]["confidence"],
                              "layer": a["cause"]["layer"], "variable": a["cause"]["variable"]}
        assert e["causes"] == list(dict.fromkeys(x["cause"]["cause"] for x in timeline["anomalies"]))
        for c in e["causes"]:
            assert data["cause_counts"][c] >= 1
    calls.clear()
    assert _json(client, "/overview") == data  # warm: nothing analysed again
    assert calls == []
    # a run that grows, and a new run: only those two are analysed again
    write_run(str(tmp_path / "spiky"), 512, 2, [1200], start=1000, seed=1)
    write_run(str(tmp_path / "new"), 300, 2, [150])
    ingester._multiplexer.AddRunsFromDirectory(str(tmp_path))  # what its reload does
    reload_logdir(ingester)
    _json(client, "/timeline", run="spiky")  # the tab's analysis serves the overview too
    again = _json(client, "/overview")
    while again["pending"]:
        again = _json(client, "/overview")
    assert sorted(calls) == ["new", "spiky"]
    assert {e["run"] for e in again["runs"]} == {"sparse", "spiky", "healthy", "new"}
    spiky = next(e for e in again["runs"] if e["run"] == "spiky")
    assert spiky["last_step"] == 1511


def test_overview_of_a_cold_sweep_fills_in_over_requests(tmp_path, monkeypatch):
    """With no time left, each request analyses one new run and lists the
    others as pending (last), until every run is in."""
    from tb_stability.server import plugin

    for i in range(3):
        write_run(str(tmp_path / f"run{i}"), 300, 2, [150] if i else [])
    client = wtest.Client(tensorboard_app(tmp_path)[0])
    monkeypatch.setattr(plugin, "OVERVIEW_BUDGET_S", 0.0)
    seen = []
    for n in (1, 2, 3):
        data = _json(client, "/overview")
        assert data["pending"] == 3 - n and data["total"] == 3
        statuses = [e["status"] for e in data["runs"]]
        assert statuses.count("pending") == 3 - n
        assert statuses[len(statuses) - (3 - n):] == ["pending"] * (3 - n)  # pending last
        seen.append(data)
    assert [e["run"] for e in seen[-1]["runs"]] == ["run1", "run2", "run0"]
    assert _json(client, "/overview") == seen[-1]


def test_analysis_is_recomputed_when_new_data_arrives(tmp_path):
    """A run still training: new windows (and a new spike) show up without
    restarting TensorBoard; unchanged data is served from the cache.
    """
    write_run(str(tmp_path / "live"), 1024, 4, [500])
    app, ingester = tensorboard_app(tmp_path)
    client = wtest.Client(app)
    first = _json(client, "/timeline", run="live")
    assert first["last_step"] == 1023
    assert [a["peak_step"] for a in first["anomalies"]] == [500]
    write_run(str(tmp_path / "live"), 1024, 4, [1600], start=1024, seed=1)
    reload_logdir(ingester)
    second = _json(client, "/timeline", run="live")
    assert second["last_step"] == 2047
    # The new windows restart write_run's descent 100x above where the
    # first ended (an excursion from step 1024 of its own) and hold the
    # planted spike at 1600, its own anomaly on top of that tail.
    peaks = [a["peak_step"] for a in second["anomalies"]]
    assert peaks[0] == 500 and peaks[-1] == 1600
    assert [a["step"] for a in second["anomalies"]][1] == 1024
    assert _json(client, "/anomaly", run="live", step="1600")["anomaly"]["peak_step"] == 1600


def test_cached_analysis_is_not_recomputed(tmp_path, monkeypatch):
    write_run(str(tmp_path / "run"), 512, 2, [300])
    client = wtest.Client(tensorboard_app(tmp_path)[0])
    from tb_stability.analysis import report
    calls = []
    real = report.analyze_run
    monkeypatch.setattr(report, "analyze_run", lambda run: calls.append(1) or real(run))
    _json(client, "/timeline", run="run")
    _json(client, "/timeline", run="run", width="10")
    _json(client, "/anomaly", run="run", step="300")
    _json(client, "/layers", run="run")
    assert len(calls) == 1


BAD_REQUESTS = [
    # (route, args, status, words the message must contain)
    ("/timeline", {}, 400, "run"),
    ("/timeline", {"run": "nope"}, 404, "nope"),
    ("/timeline", {"run": "empty"}, 404, "empty"),
    ("/timeline", {"run": ""}, 404, "run"),
    ("/timeline", {"run": "spiky", "width": "abc"}, 400, "width"),
    ("/timeline", {"run": "spiky", "width": "1.5"}, 400, "width"),
    ("/timeline", {"run": "spiky", "width": "0"}, 400, "width"),
    ("/timeline", {"run": "spiky", "width": "-3"}, 400, "width"),
    ("/timeline", {"run": "spiky", "width": "1000000000000"}, 400, "width"),
    ("/timeline", {"run": "spiky", "width": "9" * 400}, 400, "width"),
    ("/timeline", {"run": "spiky", "width": "\u0661\u0662"}, 400, "width"),
    ("/timeline", {"run": "spiky", "first": "a"}, 400, "first"),
    ("/timeline", {"run": "spiky", "first": "10", "last": "5"}, 400, "last"),
    ("/anomaly", {"run": "spiky"}, 400, "step"),
    ("/anomaly", {"step": "1234"}, 400, "run"),
    ("/anomaly", {"run": "spiky", "step": "x"}, 400, "step"),
    ("/anomaly", {"run": "spiky", "step": "12.5"}, 400, "step"),
    ("/anomaly", {"run": "spiky", "step": "1e3"}, 400, "step"),
    ("/anomaly", {"run": "spiky", "step": "99999999999999999999999"}, 400, "step"),
    ("/anomaly", {"run": "spiky", "step": "17"}, 404, "17"),
    ("/anomaly", {"run": "nope", "step": "1"}, 404, "nope"),
    ("/layers", {}, 400, "run"),
    ("/layers", {"run": "<script>alert(1)</script>"}, 404, "alert"),
    ("/layers", {"run": "../../etc/passwd"}, 404, "passwd"),
    ("/layers", {"run": "a" * 5000}, 404, "aaaa"),
    ("/layers", {"run": "\x00\u202e"}, 404, "run"),
]


@pytest.mark.parametrize("route,args,status,words", BAD_REQUESTS)
def test_bad_requests_get_4xx_with_a_message(client, route, args, status, words):
    response = client.get(BASE + route, query_string=args)
    assert response.status_code == status, response.data[:300]
    text = response.data.decode("utf-8")
    assert words in text
    assert "<script>" not in text and "<" not in text  # never echoed as markup
    assert len(text) < 400


STATIC_TRAVERSALS = [
    "/static/../plugin.py", "/static/%2e%2e/plugin.py", "/static/..%2fplugin.py",
    "/static/%2e%2e%2f%2e%2e%2fsetup.py", "/static//etc/passwd",
    "/static/index.js%00.png", "/static/", "/static/nonexistent.js",
    "/static/..\\plugin.py", "/static/./index.js/..",
]


@pytest.mark.parametrize("path", STATIC_TRAVERSALS)
def test_static_path_guard(client, path):
    response = client.get(BASE + path)
    assert response.status_code == 404, (path, response.data[:200])
    assert b"import" not in response.data  # no Python source leaks


def test_static_serves_the_module(client):
    response = client.get(BASE + "/static/index.js")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/javascript")
    assert b"export" in response.data


def test_plugin_data_is_numpy_only():
    import subprocess
    import sys

    code = ("import sys, tb_stability.server.payloads; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "False"


def test_bucket_starts_by_step_range():
    steps = np.arange(10_000) * 3
    starts = payloads.bucket_starts(steps, 100)
    assert len(starts) == 100 and starts[0] == 0
    assert np.all(np.diff(starts) == 100)
    sparse = np.array([0, 1, 2, 1000, 1001])
    assert list(payloads.bucket_starts(sparse, 2)) == [0, 3]
    assert list(payloads.bucket_starts(sparse, 10)) == [0, 1, 2, 3, 4]


def test_encode_measured():
    a = np.array([[1.0, np.nan, np.nan, np.inf]])
    assert payloads.encode_measured(a, [[False, False, True, False]]) == \
        [[1.0, None, "NaN", "Infinity"]]
    assert payloads.encode_measured([np.nan, -np.inf], False) == [None, "-Infinity"]


def test_encode_array():
    assert payloads.encode_array([1.0, np.nan, np.inf, -np.inf]) == \
        [1.0, "NaN", "Infinity", "-Infinity"]
    assert payloads.encode_array([[np.nan], [2.0]]) == [["NaN"], [2.0]]
    assert json.dumps(payloads.encode_json({"a": (float("nan"),)}),
                      allow_nan=False) == '{"a": ["NaN"]}'


# -- the rows served around an anomaly of a wide run (pure NumPy) -------------

def _wide_run(n_vars, steps=100, seed=0):
    """A RunData with `n_vars` quiet variables (noise around 1) and per-step
    detail on every step.
    """
    from tb_stability import metadata
    from tb_stability.events.series import GLOBAL, STAT, RunData

    rng = np.random.default_rng(seed)
    glob = np.ones((steps, len(metadata.GLOBAL_COLUMNS)))
    glob[:, GLOBAL["loss"]] = 0.5
    detail = np.abs(rng.normal(1, 0.05, (steps, n_vars, len(metadata.STAT_COLUMNS))))
    for name in ("grad_nonfinite", "weight_nonfinite", "moment_nonfinite"):
        detail[:, :, STAT[name]] = 0
    names = [f"m/l{i}/kernel" for i in range(n_vars)]
    info = {"optimizer": {"name": "Adam", "adam": True, "epsilon": 1e-7},
            "variables": [{"name": v, "shape": [4, 4]} for v in names],
            "detail_before": 32, "detail_after": 8}
    return RunData(name="wide", steps=np.arange(steps), glob=glob,
                   window_steps=np.zeros([0], np.int64),
                   window=np.zeros([0, n_vars, len(metadata.STAT_COLUMNS), 2]),
                   detail_steps=np.arange(steps), detail=detail,
                   input_rows_steps=np.zeros([0], np.int64), input_rows=np.zeros([0, 0]),
                   info=info, variables=names)


def _anomaly(*variables, step=50, peak=52):
    return {"kind": "spike", "step": step, "peak_step": peak, "end_step": peak + 3,
            "severity": 5.0, "baseline": 0.5, "peak_value": 500.0,
            "causes": [{"cause": "exploding_gradient", "confidence": 0.9 - 0.1 * i,
                        "layer": payloads.layer_of(variable), "variable": variable,
                        "lead_steps": 3, "evidence": ["planted"],
                        "fix": "planted"} for i, variable in enumerate(variables)]}


def test_wide_run_anomaly_serves_the_implicated_and_the_most_moved():
    import time

    from tb_stability.events.series import STAT

    run = _wide_run(10_000)
    d = run.detail
    movers = [300, 301, 5000, 9990]
    d[50:53, movers, STAT["grad_norm"]] *= 1000.0  # the spike, in four variables
    d[48:, 7000, STAT["update_ratio"]] *= 50.0  # a rise two steps before the onset
    d[:, 2000, STAT["grad_norm"]] *= 1e6  # large, but no larger than its own level
    d[51:, 8000, STAT["grad_nonfinite"]] = 3  # non-finite gradient entries
    d[52, 8001, STAT["rms_ratio"]] = np.inf
    d[50:, 4000, STAT["grad_norm"]] = 1e-6  # a drop is not a rise
    d[:, 6000, STAT["update_ratio"]] = np.nan  # not recorded: counts 0
    d[20:, 6000, STAT["grad_norm"]] = np.nan
    implicated = ["m/l9876/kernel", "m/l42/kernel"]  # quiet, and far from the first 256
    t0 = time.monotonic()
    payload = payloads.anomaly_detail(run, _anomaly(*implicated))
    elapsed = time.monotonic() - t0
    body = json.dumps(payload, allow_nan=False)
    assert len(body) < 20e6 and elapsed < 10
    ev = payload["evidence"]
    index = ev["variable_index"]
    assert ev["variables_total"] == 10_000 and len(index) == payloads.MAX_ROWS == 256
    assert index == sorted(set(index))  # the model's order
    assert ev["variables"] == [run.variables[i] for i in index]
    assert ev["layers"] == [payloads.layer_of(v) for v in ev["variables"]]
    hl = ev["highlight"]
    assert hl["variable"] == implicated[0] and ev["variables"][hl["index"]] == implicated[0]
    assert [ev["variables"][i] for i in ev["implicated"]] == implicated
    assert {9876, 42, 8000, 8001, 7000, *movers} <= set(index)
    assert 4000 not in index and 6000 not in index and 2000 not in index
    assert ev["steps"] == list(range(50 - 32, 52 + 9))
    for name in payloads.ANOMALY_STATS:
        matrix = ev["stats"][name]
        assert len(matrix) == 256 and all(len(row) == len(ev["steps"]) for row in matrix)
    row = index.index(5000)
    assert ev["stats"]["grad_norm"][row] == payloads.encode_array(
        d[18:61, 5000, STAT["grad_norm"]])
    assert ev["stats"]["rms_ratio"][index.index(8001)][52 - 18] == "Infinity"
    assert payloads.anomaly_detail(run, _anomaly(*implicated)) == payload  # deterministic


def test_rank_variables_order():
    from tb_stability.events.series import STAT

    run = _wide_run(8, steps=20)
    d = run.detail
    d[:, :, :] = 1.0
    for name in payloads.RANK_NONFINITE:
        d[:, :, STAT[name]] = 0
    d[10:, 3, STAT["grad_norm"]] = 100.0  # rose two decades
    d[10:, 5, STAT["rms_ratio"]] = 10.0  # one decade
    d[12:, 6, STAT["grad_nonfinite"]] = 1.0  # non-finite from step 12
    d[11, 1, STAT["update_ratio"]] = np.inf  # from step 11: first
    d[10:, 2, STAT["grad_norm"]] = 0.0  # a drop
    d[:, 7, STAT["grad_norm"]] = np.nan  # never recorded
    order = payloads.rank_variables(run.detail_steps, d, 10)
    assert order.tolist() == [1, 6, 3, 5, 0, 2, 4, 7]
    # No column before the onset: the whole window is the level.
    assert payloads.rank_variables(run.detail_steps, d, 0)[:2].tolist() == [1, 6]
    assert payloads.rank_variables(run.detail_steps[:0], d[:0], 10).tolist() == \
        list(range(8))


def test_runs_up_to_max_rows_are_served_whole(monkeypatch):
    run = _wide_run(payloads.MAX_ROWS)
    ev = payloads.anomaly_detail(run, _anomaly("m/l200/kernel"))["evidence"]
    assert ev["variables"] == run.variables and ev["variables_total"] == payloads.MAX_ROWS
    assert ev["variable_index"] == list(range(payloads.MAX_ROWS))
    assert ev["highlight"]["index"] == 200 and ev["implicated"] == [200]
    # One more variable than the cap: capped, the implicated one kept.
    monkeypatch.setattr(payloads, "MAX_ROWS", 4)
    run.detail[50:, 7, 0] *= 10.0  # grad_norm (column 0) of m/l7/kernel rose
    ev = payloads.anomaly_detail(run, _anomaly("m/l200/kernel"))["evidence"]
    assert ev["variables_total"] == 256 and len(ev["variables"]) == 4
    assert 7 in ev["variable_index"] and 200 in ev["variable_index"]
    assert ev["variables"][ev["highlight"]["index"]] == "m/l200/kernel"


def test_cited_steps_are_parsed_from_the_top_cause():
    causes = [{"evidence": ["RMS(g²/v̂) of m/d/bias crossed 1.0 at step 3,438, 9 steps before",
                            "Adam's largest effective step rose from 13 to 39 between steps "
                            "1400 and 3400 as the second moment decayed.",
                            "for 47 steps (geometric growth)"]},
              {"evidence": ["at step 5"]}]  # not the top cause
    assert payloads.cited_steps(causes) == [1400, 3400, 3438]
    assert payloads.cited_steps([]) == [] and payloads.cited_steps([{"evidence": None}]) == []


def test_evidence_window_spans_the_steps_the_evidence_names():
    """Issue 18: the card cited a crossing at step 3438 that the heatmap
    (onset - 32 .. peak + 8) could leave out. A cited step up to
    MAX_CITED_REACH outside the window widens it; its column is served."""
    run = _wide_run(4, steps=400)
    anomaly = _anomaly("m/l1/kernel", step=200, peak=210)
    plain = payloads.anomaly_detail(run, anomaly)["evidence"]
    assert plain["steps"][0] == 168 and plain["steps"][-1] == 218
    assert plain["cited_steps"] == []
    anomaly["causes"][0]["evidence"] = ["it crossed 1.0 at step 120, before the onset",
                                        "and stayed high until step 260"]
    cited = payloads.anomaly_detail(run, anomaly)["evidence"]
    assert cited["cited_steps"] == [120, 260]
    assert cited["steps"][0] == 120 and cited["steps"][-1] == 260
    assert {120, 200, 210, 260} <= set(cited["steps"])
    # too far to widen to (no per-step detail is kept that far): not widened
    anomaly["causes"][0]["evidence"] = [f"from step {200 - 32 - payloads.MAX_CITED_REACH - 1}"]
    far = payloads.anomaly_detail(run, anomaly)["evidence"]
    assert far["steps"][0] == 168
