"""The installed entry point loads in a real `tensorboard` process, on the
default (Rust) data server and on the Python one, and a planted one-step
spike in a 5,000-step Keras run comes back at its exact step.
"""

import json
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import free_ports, start_tensorboard, stop_process

from demo import main as demo


def _get(url, timeout=60):
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.status, r.read()
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


SPIKE_STEP = int(np.random.default_rng().integers(200, 4900))


@pytest.fixture(scope="module")
def demo_logdir(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("demo"))
    demo.keras_run(logdir, "outlier-batch", outlier_step=SPIKE_STEP, steps=5000)
    return logdir


@pytest.mark.parametrize("load_fast", ["auto", "false"])
def test_tensorboard_serves_plugin(demo_logdir, load_fast):
    port, = free_ports()
    proc = start_tensorboard(demo_logdir, port, f"--load_fast={load_fast}",
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        status, body = _get(base + "/data/plugins_listing")
        listing = json.loads(body)
        assert "tb_stability" in listing
        entry = listing["tb_stability"]
        assert entry["tab_name"] == "Stability"
        assert entry["loading_mechanism"]["module_path"].endswith("index.js")
        # Enabled once the data provider has seen tb_stability series.
        deadline = time.time() + 60
        while not entry["enabled"] and time.time() < deadline:
            time.sleep(1)
            entry = json.loads(_get(base + "/data/plugins_listing")[1])["tb_stability"]
        assert entry["enabled"]
        plugin = base + "/data/plugin/tb_stability"
        status, body = _get(plugin + "/runs")
        assert [r["run"] for r in json.loads(body)["runs"]] == ["outlier-batch"]
        status, body = _get(plugin + "/static/index.js")
        assert status == 200 and b"export async function render" in body
        # Wait until the whole run is loaded, then find the spike.
        deadline = time.time() + 60
        while True:
            timeline = json.loads(_get(plugin + "/timeline?run=outlier-batch&width=800")[1])
            if timeline["last_step"] == 4999 or time.time() > deadline:
                break
            time.sleep(1)
        assert timeline["steps"] == 5000  # nothing sampled away
        # Late in a run Adam's moments can carry the batch's gradient into a
        # rise a few steps later (a later anomaly, see the planted sequel
        # tests); the spike itself is the first, at its exact step.
        first = timeline["anomalies"][0]
        assert first["peak_step"] == SPIKE_STEP, (timeline["anomalies"], SPIKE_STEP)
        assert first["cause"]["cause"] == "bad_batch", (SPIKE_STEP, first)
        assert all(a["step"] > SPIKE_STEP for a in timeline["anomalies"][1:])
        status, body = _get(f"{plugin}/anomaly?run=outlier-batch&step={SPIKE_STEP}")
        detail = json.loads(body)
        assert detail["anomaly"]["peak_step"] == SPIKE_STEP
        assert SPIKE_STEP in detail["evidence"]["steps"]
        assert detail["evidence"]["resolution"] == "step"
        for path in ("/timeline?run=nope", "/anomaly?run=outlier-batch&step=x"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(plugin + path, timeout=10)
            assert err.value.code in (400, 404)
    finally:
        out = stop_process(proc)
    assert "Traceback" not in out, out[-3000:]
