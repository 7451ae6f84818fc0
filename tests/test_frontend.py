"""The Stability tab's frontend (frontend/): the built files in the package
match their sources, the JS unit tests pass, and the browser test drives
the tab in chromium against a real `tensorboard` over demo logs (plus a
run named with HTML and a 1M-step synthetic run for the draw benchmark).

Node, chromium and frontend/node_modules (npm ci --prefix frontend) are
needed for the last two; without them those tests are skipped, unless
TB_STABILITY_REQUIRE_BROWSER=1 (scripts/test.sh sets it), where they fail.
"""

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_ports, start_tensorboard, stop_process

REPO = Path(__file__).resolve().parents[1]
FRONTEND = REPO / "frontend"
STATIC = REPO / "tb_stability" / "static"
ARTIFACTS = REPO / "test-artifacts"
UPLOT = FRONTEND / "node_modules" / "uplot"
VENDOR = {  # as in frontend/vendor.mjs
    "vendor/uplot/uPlot.esm.js": "dist/uPlot.esm.js",
    "vendor/uplot/uPlot.min.css": "dist/uPlot.min.css",
    "vendor/uplot/LICENSE": "LICENSE",
}
HTML_RUN = "<img src=x onerror=alert(1)>"
BIG_RUN = "synthetic-1m"
BIG_STEPS = 1_000_000
REQUIRE = os.environ.get("TB_STABILITY_REQUIRE_BROWSER") == "1"
# The views the browser test saves to ARTIFACTS/screenshots, each as NAME.png
# (light) and NAME-dark.png (dark), at 1600x1000 (the last at 1280x800).
VIEW_SHOTS = ("overview", "timeline", "cause-card", "heatmap", "adam-chart",
              "early-story", "cause-card-1280x800")


def _files(root):
    return {
        p.relative_to(root).as_posix(): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _need(what, ok):
    if ok:
        return
    if REQUIRE:
        pytest.fail(f"{what} missing (TB_STABILITY_REQUIRE_BROWSER=1)")
    pytest.skip(f"{what} missing")


def test_one_frontend_source_and_pinned_vendor():
    """tb_stability/static is the tab's only source (nothing under frontend/
    repeats a file of it) and its vendored uPlot is the pinned npm package.
    """
    served = _files(STATIC)
    assert "index.js" in served and "model.js" in served
    tooling = {p.name for p in FRONTEND.rglob("*")
               if p.is_file() and "node_modules" not in p.parts}
    repeated = [rel for rel in served if Path(rel).name in tooling]
    assert not repeated, f"frontend/ repeats served files: {repeated}"
    for rel, dist in VENDOR.items():
        assert rel in served, f"missing: tb_stability/static/{rel}"
        if UPLOT.is_dir():
            assert served[rel].read_bytes() == (UPLOT / dist).read_bytes(), \
                f"run `node frontend/vendor.mjs`: {rel} is not uplot's {dist}"
    assert b"MIT License" in (STATIC / "vendor/uplot/LICENSE").read_bytes()
    package = json.loads((FRONTEND / "package.json").read_text())
    assert package["devDependencies"]["uplot"] == "1.6.32"
    if UPLOT.is_dir():
        assert json.loads((UPLOT / "package.json").read_text())["version"] == "1.6.32"


def test_index_is_the_es_module_tensorboard_loads():
    body = (STATIC / "index.js").read_bytes()
    assert b"export async function render" in body
    # relative URLs only: nothing may start at the server root
    for path in STATIC.rglob("*.js"):
        if "vendor" in path.parts:
            continue
        text = path.read_text()
        assert "fetch('/" not in text and 'fetch("/' not in text, path
        assert ".innerHTML" not in text and "insertAdjacentHTML" not in text, path


def test_vendor_check_passes():
    node = shutil.which("node")
    _need("node", node)
    _need("frontend/node_modules", UPLOT.is_dir())
    proc = subprocess.run([node, "vendor.mjs", "--check"], cwd=FRONTEND,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_js_unit_tests(tmp_path):
    """The node unit tests, with the backend's cause registry (GET causes's
    payload) for the test that checks the tab can draw every cause."""
    from tb_stability.server import payloads

    node = shutil.which("node")
    _need("node", node)
    registry = tmp_path / "causes.json"
    registry.write_text(json.dumps(payloads.causes()))
    env = dict(os.environ, TB_STABILITY_CAUSES_JSON=str(registry))
    proc = subprocess.run([node, "--test", "test/unit/"], cwd=FRONTEND, env=env,
                          capture_output=True, text=True, timeout=120)
    # The TAP summary ("# tests 40", "# pass 40", ...), printed and saved
    # (scripts/test.sh shows it after pytest).
    summary = [line for line in proc.stdout.splitlines()
               if re.match(r"^# (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) ", line)]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "node-unit-tests.txt").write_text(
        "node --test frontend/test/unit/: " + ", ".join(s[2:] for s in summary) + "\n")
    print("\n".join(summary))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "# skipped 0" in proc.stdout, proc.stdout[-3000:]
    assert any(line.startswith("# pass ") for line in summary), proc.stdout[-3000:]


def _get_json(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def browser_logdir(demo_logs, tmp_path_factory):
    """The demo runs, one of them copied under an HTML name, and a
    1M-step synthetic run (few variables) for the draw benchmark.
    """
    from benchmarks.synthetic import write_run

    logdir, _, _ = demo_logs
    out = tmp_path_factory.mktemp("frontend") / "logs"
    out.mkdir()
    runs = sorted(p.name for p in Path(logdir).iterdir() if p.is_dir())
    for run in runs:
        shutil.copytree(Path(logdir) / run, out / run)
    small = "outlier-batch" if "outlier-batch" in runs else runs[0]
    shutil.copytree(Path(logdir) / small, out / HTML_RUN)
    write_run(str(out / BIG_RUN), BIG_STEPS, 4, [123_456, 500_000, 987_654])
    return out, runs + [HTML_RUN, BIG_RUN]


def test_browser(browser_logdir):
    node = shutil.which("node")
    _need("node", node)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    _need("chromium (apt-get install -y chromium)", chromium)
    _need("frontend/node_modules (npm ci --prefix frontend)",
          (FRONTEND / "node_modules" / "playwright-core").is_dir())
    logdir, runs = browser_logdir
    port, = free_ports()
    tb_log = ARTIFACTS / "tensorboard.log"
    ARTIFACTS.mkdir(exist_ok=True)
    with open(tb_log, "w") as log:
        proc = start_tensorboard(logdir, port, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        listed = []
        while time.time() < deadline:
            try:
                listed = [r["run"] for r in _get_json(base + "/data/plugin/tb_stability/runs")["runs"]]
                if set(runs) <= set(listed):
                    break
            except OSError:
                pass
            time.sleep(1)
        assert set(runs) <= set(listed), f"tensorboard lists {listed}, expected {runs}"
        cmd = [node, "test/browser/stability.mjs", "--url", base, "--chromium", chromium,
               "--artifacts", str(ARTIFACTS), "--html-run", HTML_RUN, "--big-run", BIG_RUN]
        if "seed002-bad" in runs:
            cmd += ["--run", "seed002-bad"]
        if os.environ.get("TB_STABILITY_UPDATE_DOCS") == "1":
            cmd += ["--docs", str(REPO / "docs" / "stability-tab.png")]
        t0 = time.time()
        result = subprocess.run(cmd, cwd=FRONTEND, capture_output=True, text=True, timeout=420)
        output = result.stdout + result.stderr
        print(output)
        print(f"browser test: {time.time() - t0:.1f} s")
        (ARTIFACTS / "browser-test.log").write_text(output)
        bench = [line for line in output.splitlines() if line.startswith("BENCH")]
        if bench:
            (ARTIFACTS / "benchmark.txt").write_text("\n".join(bench) + "\n")
        assert result.returncode == 0, output[-8000:]
        assert bench, "the 1M-step benchmark printed nothing"
        for name in VIEW_SHOTS:
            for suffix in ("", "-dark"):
                path = ARTIFACTS / "screenshots" / f"{name}{suffix}.png"
                assert path.is_file() and path.stat().st_mtime >= t0 - 1, \
                    f"the browser test saved no {path.name}"
    finally:
        stop_process(proc)
