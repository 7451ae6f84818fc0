"""The installed entry point loads in a real `tensorboard` process."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from demo import main as demo


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.fixture(scope="module")
def demo_logdir(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("demo"))
    demo.keras_run(logdir, "outlier-batch", outlier_step=300, steps=400)
    return logdir


@pytest.mark.parametrize("load_fast", ["auto", "false"])
def test_tensorboard_serves_plugin(demo_logdir, load_fast):
    exe = shutil.which("tensorboard", path=os.path.dirname(sys.executable))
    assert exe, "tensorboard CLI not installed next to this Python"
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--logdir", demo_logdir, "--host", "127.0.0.1", "--port",
         str(port), f"--load_fast={load_fast}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
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
        status, body = _get(base + "/data/plugin/tb_stability/runs")
        assert json.loads(body) == ["outlier-batch"]
        status, body = _get(base + "/data/plugin/tb_stability/index.js")
        assert status == 200 and b"export async function render" in body
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "Traceback" not in out, out[-3000:]
