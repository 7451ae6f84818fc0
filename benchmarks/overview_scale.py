"""The runs overview (`GET overview`) on a sweep: many runs of many steps,
against TensorBoard's own runs route (`/data/runs`) on the same logdir.

Writes a few synthetic runs (the writer's layout: per-256-step windows,
per-variable aggregates, per-step detail around planted spikes; one of them
quiet) and copies them to `--runs` run directories, starts a real
`tensorboard` (default loader: the Rust data server; `--load_fast=false`
for the Python one), waits until every run is loaded, then times over HTTP:
the first overview (cold: runs read through the data provider and analysed
for about 2 s, the rest pending), the requests until every run is analysed
(what the tab does), the warm overview (median of `--repeats`; one listing of the
provider, every summary from the cache), TensorBoard's `/data/runs` (the
baseline: what listing the runs costs the host) and the plugin's own
`/runs`, and prints the warm overview's ratio to `/data/runs`.

    python benchmarks/overview_scale.py [--runs 500] [--steps 10000] [--variables 4]
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.synthetic import write_run  # noqa: E402

TEMPLATES = 4  # distinct runs written; the others are copies of them


def write_sweep(logdir, runs, steps, variables):
    """`runs` run directories sweep/run_0000 ...: TEMPLATES written, the
    rest copied (each run still read and analysed on its own)."""
    templates = []
    for t in range(min(TEMPLATES, runs)):
        path = os.path.join(logdir, f"run_{t:04d}")
        spikes = [] if t == 0 else [steps * k // (t + 2) for k in range(1, t + 2)]
        write_run(path, steps, variables, spikes, seed=t)
        templates.append(path)
    for i in range(len(templates), runs):
        shutil.copytree(templates[i % len(templates)], os.path.join(logdir, f"run_{i:04d}"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fetch(url):
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=3600) as r:
        body = r.read()
    return time.perf_counter() - t0, body


def bench(logdir, runs, steps, load_fast, repeats):
    exe = shutil.which("tensorboard", path=os.path.dirname(sys.executable)) or "tensorboard"
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--logdir", logdir, "--host", "127.0.0.1", "--port", str(port),
         f"--load_fast={load_fast}", "--reload_interval=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    plugin = base + "/data/plugin/tb_stability"
    try:
        t_start = time.perf_counter()
        while True:  # until every run is loaded to its last step
            try:
                _, body = _fetch(plugin + "/runs")
                listed = json.loads(body)["runs"]
                if len(listed) == runs and all(r["last_step"] == steps - 1 for r in listed):
                    break
            except OSError:
                pass
            if time.perf_counter() - t_start > 3600:
                raise RuntimeError("tensorboard did not load the runs in an hour")
            time.sleep(2)
        load_s = time.perf_counter() - t_start
        results = {}
        # Cold: the first answer comes after the backend's time budget with
        # the rest pending; the tab asks again until nothing is.
        results["overview cold: first answer"], body = _fetch(plugin + "/overview")
        overview = json.loads(body)
        first_pending = overview["pending"]
        t0 = time.perf_counter()
        requests = 1
        while overview["pending"]:
            _, body = _fetch(plugin + "/overview")
            overview = json.loads(body)
            requests += 1
        results["overview cold: all runs analysed"] = (
            results["overview cold: first answer"] + time.perf_counter() - t0)
        assert overview["total"] == runs, overview["total"]
        print(f"cold: {runs - first_pending} runs in the first answer, all in {requests} "
              f"requests", flush=True)

        def timed(url):
            return statistics.median(_fetch(url)[0] for _ in range(repeats))
        results["overview warm"] = timed(plugin + "/overview")
        results["/data/runs (TensorBoard, baseline)"] = timed(base + "/data/runs")
        results["plugin /runs"] = timed(plugin + "/runs")
        return load_s, results, overview, len(body)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--variables", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--load_fast", default="auto", choices=["auto", "false"])
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="tbs_overview_")
    try:
        t0 = time.perf_counter()
        write_sweep(tmp, args.runs, args.steps, args.variables)
        print(f"wrote {args.runs} runs x {args.steps} steps x {args.variables} variables "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
        load_s, results, overview, size = bench(tmp, args.runs, args.steps, args.load_fast,
                                                args.repeats)
        base = results["/data/runs (TensorBoard, baseline)"]
        print(f"tensorboard (--load_fast={args.load_fast}) loaded them in {load_s:.0f} s; "
              f"overview: {size / 1e3:.0f} kB, statuses {overview['status_counts']}")
        print(f"{'route':40s} {'seconds':>9s} {'x /data/runs':>13s}")
        for name, secs in results.items():
            print(f"{name:40s} {secs:9.4f} {secs / base:13.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
