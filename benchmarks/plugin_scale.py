"""Plugin route latencies on a 1M-step, 100-variable run, against
TensorBoard's own scalars route serving the same number of points.

Writes a synthetic run (the writer's layout, 20 planted spikes) plus a
1M-point `loss` scalar series in the same run, starts a real `tensorboard`
process (default loader: the Rust data server; `--load_fast=false` for the
Python one) with `--samples_per_plugin scalars=<steps>` so that the scalars
route also serves every point, waits until everything is loaded, then times
each route over HTTP and prints medians and ratios to the scalars route.

    python benchmarks/plugin_scale.py [--steps 1000000] [--variables 100]
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
import urllib.parse
import urllib.request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.synthetic import write_run  # noqa: E402


def write_scalars(logdir, steps):
    import tensorflow as tf

    values = tf.constant(np.random.default_rng(0).random(steps).astype(np.float32))
    writer = tf.summary.create_file_writer(logdir, max_queue=100_000)

    @tf.function
    def loop():
        with writer.as_default():
            for i in tf.range(steps, dtype=tf.int64):
                tf.summary.scalar("loss", values[i], step=i)
    loop()
    writer.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fetch(url):
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as r:
        body = r.read()
    return time.perf_counter() - t0, body


def _rss_mb(pid):
    """RSS of a process and its children (the Rust data server), in MB."""
    total = 0
    pids = [pid]
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                  text=True).stdout.split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def bench(logdir, steps, load_fast, repeats):
    exe = shutil.which("tensorboard", path=os.path.dirname(sys.executable)) or "tensorboard"
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--logdir", logdir, "--host", "127.0.0.1", "--port", str(port),
         f"--load_fast={load_fast}", f"--samples_per_plugin=scalars={steps}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    plugin = base + "/data/plugin/tb_stability"
    q = urllib.parse.quote
    try:
        t_start = time.perf_counter()
        # Wait until the scalars and our series are fully loaded. (The
        # scalar's tag gets the loop's name scope: ask for it.)
        tag = None
        while True:
            try:
                if tag is None:
                    _, body = _fetch(f"{base}/data/plugin/scalars/tags")
                    tags = list(json.loads(body).get("big", {}))
                    tag = tags[0] if tags else None
                    if tag is None:
                        raise OSError("no scalars yet")
                _, body = _fetch(f"{base}/data/plugin/scalars/scalars?run=big&tag={q(tag)}")
                n_scalars = len(json.loads(body))
                _, body = _fetch(plugin + "/runs")
                runs = json.loads(body)["runs"]
                if n_scalars == steps and runs and runs[0]["last_step"] == steps - 1:
                    break
            except OSError:
                pass
            if time.perf_counter() - t_start > 900:
                raise RuntimeError("tensorboard did not load the run in 15 minutes")
            time.sleep(2)
        load_s = time.perf_counter() - t_start
        time.sleep(3)  # let a last reload pass settle
        results = {}
        results["timeline cold"], body = _fetch(f"{plugin}/timeline?run=big&width=1000")
        anomalies = json.loads(body)["anomalies"]
        step = anomalies[len(anomalies) // 2]["peak_step"]

        def timed(url):
            return statistics.median(_fetch(url)[0] for _ in range(repeats))
        results["timeline warm (same width)"] = timed(f"{plugin}/timeline?run=big&width=1000")
        widths = iter(range(1001, 1001 + 1000))
        results["timeline warm (new width)"] = statistics.median(
            _fetch(f"{plugin}/timeline?run=big&width={next(widths)}")[0]
            for _ in range(repeats))
        results["anomaly"] = timed(f"{plugin}/anomaly?run=big&step={step}")
        results["layers"] = timed(f"{plugin}/layers?run=big")
        results["scalars (baseline)"] = timed(
            f"{base}/data/plugin/scalars/scalars?run=big&tag={q(tag)}")
        rss = _rss_mb(proc.pid)
        return load_s, results, len(anomalies), rss
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--variables", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--load_fast", default="auto", choices=["auto", "false"])
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    spikes = sorted(rng.choice(np.arange(1000, args.steps - 1000, 5000), 20,
                               replace=False).tolist())
    logdir = tempfile.mkdtemp(prefix="tbs_plugin_")
    run_dir = os.path.join(logdir, "big")
    t0 = time.perf_counter()
    write_run(run_dir, args.steps, args.variables, spikes)
    write_scalars(run_dir, args.steps)
    size = sum(os.path.getsize(os.path.join(run_dir, f)) for f in os.listdir(run_dir))
    print(f"wrote {args.steps} steps x {args.variables} variables + {args.steps} "
          f"scalars: {size / 1e6:.1f} MB in {time.perf_counter() - t0:.0f} s")
    load_s, results, n_anomalies, rss = bench(logdir, args.steps, args.load_fast,
                                              args.repeats)
    base = results["scalars (baseline)"]
    print(f"tensorboard --load_fast={args.load_fast}: loaded in {load_s:.0f} s, "
          f"server RSS {rss:.0f} MB; {n_anomalies} anomalies "
          f"({len(spikes)} planted)")
    print(f"{'route':32s} {'median ms':>10s} {'x scalars':>10s}")
    for name, seconds in results.items():
        print(f"{name:32s} {seconds * 1e3:10.1f} {seconds / base:10.3f}")
    print("targets: timeline warm < 500 ms, anomaly < 200 ms")
    shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    main()
