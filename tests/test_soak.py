"""Soak: a live Keras run served by a real `tensorboard` for minutes.

A separate training process fits a small Keras model with StabilityCallback
(`flush_secs=2`) in a loop of `model.fit` calls (2,048 steps each, one
planted outlier batch per call, so anomalies keep arriving) until a
deadline. A real `tensorboard --reload_interval 1` (default data server,
the plugin from the installed entry point) serves the run while it grows,
and this test polls `runs`, `timeline`, `anomaly` and `layers` about every
0.75 s, sampling the resident memory (VmRSS) of the trainer, of the
`tensorboard` process and of its data server.

Asserted: every response is 200 (404 only before the run has data); the
last step served keeps growing; once training ends every step written is
served, contiguous, nothing sampled away. Memory is bounded, in two ways:

* while the run grows: after a warm-up (the first third of the polling),
  the median RSS of the last third exceeds that of the middle third by at
  most 25 % + 50 MB + the growth the data explains. The data does grow
  legitimately: the data server keeps every tb_stability row, the plugin
  caches the run's arrays and re-reads the run when it grew; an allowance
  per step, `_BYTES_PER_STEP`, times the steps added between the two thirds.
* once the data stops changing (training over), a steady phase keeps
  polling for STEADY_SECONDS, with a new timeline width and another anomaly
  on every poll (computed, not served from the cache): RSS must stay flat
  there, which a leak per request or per computed payload would not.

TB_STABILITY_SOAK_SECONDS sets the training time (default 150 s; the whole
test then takes about three and a half minutes on two cores). The samples
go to test-artifacts/soak.csv.
"""

import csv
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest
from conftest import free_ports, start_tensorboard, stop_process

SOAK_SECONDS = float(os.environ.get("TB_STABILITY_SOAK_SECONDS", "150"))
POLL_SECONDS = 0.75
RUN = "live"
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "test-artifacts")
STEADY_SECONDS = max(10.0, min(30.0, SOAK_SECONDS / 6))
# Memory a step may legitimately add, per process (bytes). The data server
# keeps every row of the run: a global row is 12 float32 (48 B) plus the
# events' framing and the per-window aggregates; measured ~150 B a step.
# The plugin (in the tensorboard process) caches the run as float64 arrays
# (steps + 11 columns: 96 B a step; tracemalloc confirms ~100 B a step of
# live Python memory) and re-reads the whole run each time it grew: those
# transient copies (float32 tensors from the data server, concatenations,
# the analysis' arrays) scale with the run, and glibc's per-thread arenas
# keep much of them (malloc_trim hands most back); measured ~1.3 KB a step
# over a whole run, so 2 KB. The trainer holds no data: 0.
_BYTES_PER_STEP = {"trainer": 0, "tensorboard": 2048, "data_server": 512}
# Flatness of the steady phase: second half's median over the first's.
_STEADY_SLACK_KB = {"trainer": None, "tensorboard": 16 * 1024, "data_server": 4 * 1024}
_MB = 1 << 20

_TRAINER = textwrap.dedent('''
    """Soak trainer: fit() in a loop until a deadline, progress to a file."""
    import json
    import os
    import sys
    import time

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    # Two shared cores: leave room for tensorboard and the client.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    import tb_stability

    logdir, seconds, progress = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    STEPS, BATCH, OUTLIER = 2048, 16, 1000
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * BATCH, 10)).astype("float32")
    y = (x @ rng.normal(size=(10, 1))
         + 0.1 * rng.normal(size=(STEPS * BATCH, 1))).astype("float32")
    y[OUTLIER * BATCH:(OUTLIER + 1) * BATCH] *= 300.0  # one bad batch per fit
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((10,)),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.Dense(1, name="out"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    cb = tb_stability.keras.StabilityCallback(logdir, flush_secs=2)
    start = time.monotonic()
    deadline = start + seconds
    fits = steps = 0
    while time.monotonic() < deadline:
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                  callbacks=[cb])
        fits += 1
        steps = int(model.optimizer.iterations.numpy())
        with open(progress + ".tmp", "w") as f:
            json.dump({"steps": steps, "fits": fits,
                       "seconds": time.monotonic() - start}, f)
        os.replace(progress + ".tmp", progress)
    print("SOAK-DONE " + json.dumps({"steps": steps, "fits": fits,
                                     "seconds": time.monotonic() - start}),
          flush=True)
''')


def _rss_kb(pid):
    """VmRSS of a live process in kB, None once it is gone."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid):
    """Pids whose parent is `pid`."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may hold spaces: the fields after its closing parenthesis.
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append(int(name))
    return out


def _fetch(url):
    """(status, body); HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _stop(proc, log):
    """Stops a process (if running); returns its output so far."""
    stop_process(proc)
    log.flush()
    log.seek(0)
    return log.read()


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class _Poller:
    """Requests to the plugin, with the contract checks and timings."""

    def __init__(self, base):
        self.base = base
        self.errors = []  # (route, status, body): responses that broke it
        self.latency = {}  # route -> max seconds
        self.counts = {"anomaly_200": 0, "anomaly_404_moved": 0}

    def get(self, route, ok=(200,)):
        start = time.monotonic()
        try:
            status, body = _fetch(self.base + route)
        except OSError:  # not listening yet
            return None, None
        name = route.split("?")[0]
        self.latency[name] = max(self.latency.get(name, 0.0), time.monotonic() - start)
        if status not in ok:
            self.errors.append((route, status, body[:300]))
        return status, body

    def poll(self, sample, width=1000, pick=-1):
        """runs, timeline, one anomaly, layers; fills `sample`."""
        status, body = self.get("/runs")
        runs = json.loads(body)["runs"] if status == 200 else []
        if not runs:
            # No data yet: the run's routes answer 404 (or 200 if the data
            # arrived since /runs answered).
            self.get(f"/timeline?run={RUN}", ok=(200, 404))
            self.get(f"/layers?run={RUN}", ok=(200, 404))
            return
        assert [r["run"] for r in runs] == [RUN]
        sample["last_step"] = runs[0]["last_step"]
        status, body = self.get(f"/timeline?run={RUN}&width={width}")
        if status != 200:
            return
        anomalies = json.loads(body)["anomalies"]
        sample["anomalies"] = len(anomalies)
        if anomalies:
            step = anomalies[pick % len(anomalies)]["step"]
            status, body = self.get(f"/anomaly?run={RUN}&step={step}", ok=(200, 404))
            if status == 200:
                self.counts["anomaly_200"] += 1
            elif status == 404:
                # Allowed only if new data replaced the analysis between the
                # two requests and the anomaly is no longer there.
                again = json.loads(_fetch(f"{self.base}/timeline?run={RUN}")[1])
                if step in {a["step"] for a in again["anomalies"]} | {
                        a["peak_step"] for a in again["anomalies"]}:
                    self.errors.append(("anomaly", 404, body[:300]))
                self.counts["anomaly_404_moved"] += 1
        self.get(f"/layers?run={RUN}")


@pytest.mark.slow
def test_soak_live_run_served_with_bounded_memory(tmp_path):
    logdir = tmp_path / "logs"
    run_dir = logdir / RUN
    run_dir.mkdir(parents=True)
    script = tmp_path / "soak_trainer.py"
    script.write_text(_TRAINER)
    progress = str(tmp_path / "progress.json")
    repo = os.path.dirname(ARTIFACTS)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))

    # Output to files: a pipe nobody reads could fill and stall a process.
    tb_log = open(tmp_path / "tensorboard.log", "w+")
    trainer_log = open(tmp_path / "trainer.log", "w+")
    port, = free_ports()
    tb = start_tensorboard(logdir, port, "--reload_interval", "1",
                           stdout=tb_log, stderr=subprocess.STDOUT, env=env)
    trainer = subprocess.Popen(
        [sys.executable, str(script), str(run_dir), str(SOAK_SECONDS), progress],
        stdout=trainer_log, stderr=subprocess.STDOUT, env=env, cwd=repo)
    poller = _Poller(f"http://127.0.0.1:{port}/data/plugin/tb_stability")
    samples = []  # one dict per poll
    pids = {"trainer": trainer.pid, "tensorboard": tb.pid, "data_server": None}
    t0 = time.monotonic()

    def new_sample(phase):
        if pids["data_server"] is None:
            kids = _children(tb.pid)
            pids["data_server"] = kids[0] if kids else None
        sample = {"phase": phase, "t": round(time.monotonic() - t0, 2),
                  "last_step": None, "anomalies": None, "trainer_steps": None}
        for label, pid in pids.items():
            sample[label + "_kb"] = _rss_kb(pid)
        try:
            with open(progress) as f:
                sample["trainer_steps"] = json.load(f)["steps"]
        except (OSError, ValueError):
            pass
        if tb.poll() is not None:
            pytest.fail("tensorboard exited: " + _stop(tb, tb_log)[-3000:])
        samples.append(sample)
        return sample

    try:
        # While the run trains: every route, about every POLL_SECONDS.
        while trainer.poll() is None:
            if time.monotonic() - t0 > SOAK_SECONDS + 120:
                pytest.fail("the trainer did not stop after its deadline")
            tick = time.monotonic()
            poller.poll(new_sample("train"))
            time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - tick)))
        trainer_out = _stop(trainer, trainer_log)
        assert trainer.returncode == 0, trainer_out[-3000:]
        done = json.loads(trainer_out.split("SOAK-DONE ", 1)[1].splitlines()[0])
        # Every step written gets served, contiguous, nothing sampled away.
        deadline = time.monotonic() + 60
        while True:
            status, body = _fetch(f"{poller.base}/timeline?run={RUN}&width=10")
            assert status == 200, body[:300]
            final = json.loads(body)
            if final["last_step"] == done["steps"] - 1 or time.monotonic() > deadline:
                break
            time.sleep(1)
        # Steady phase: the data no longer changes; every poll computes a
        # timeline at a new width (the cache holds 8) and another anomaly.
        pids["trainer"] = None
        steady_end = time.monotonic() + STEADY_SECONDS
        k = 0
        while time.monotonic() < steady_end:
            tick = time.monotonic()
            k += 1
            poller.poll(new_sample("steady"), width=500 + 37 * (k % 40), pick=k)
            time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - tick)))
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
        tb_out = _stop(tb, tb_log)
        tb_log.close()
        trainer_log.close()

    os.makedirs(ARTIFACTS, exist_ok=True)
    fields = ["phase", "t", "trainer_kb", "tensorboard_kb", "data_server_kb",
              "last_step", "trainer_steps", "anomalies"]
    with open(os.path.join(ARTIFACTS, "soak.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(samples)

    # Thirds of the training phase, by time.
    train = [s for s in samples if s["phase"] == "train"]
    steady = [s for s in samples if s["phase"] == "steady"]
    span = train[-1]["t"] - train[0]["t"]
    cut1, cut2 = train[0]["t"] + span / 3, train[0]["t"] + 2 * span / 3
    middle = [s for s in train if cut1 <= s["t"] < cut2]
    last = [s for s in train if s["t"] >= cut2]
    steady_a, steady_b = steady[:len(steady) // 2], steady[len(steady) // 2:]
    steps_mid = _median(s["last_step"] for s in middle) or 0
    steps_last = _median(s["last_step"] for s in last) or 0
    added = max(0, steps_last - steps_mid)
    rate = done["steps"] / done["seconds"]
    lines = [
        f"soak: {done['steps']} steps in {done['seconds']:.1f} s ({rate:.0f} steps/s, "
        f"{done['fits']} fit calls); {len(train)} polls while training, {len(steady)} "
        f"steady; {len(final['anomalies'])} anomalies at the end; /anomaly 200: "
        f"{poller.counts['anomaly_200']}, 404 after the analysis moved: "
        f"{poller.counts['anomaly_404_moved']}; max latency (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(poller.latency.items())),
        f"steps served: middle-third median {steps_mid:.0f}, last-third median "
        f"{steps_last:.0f} (+{added:.0f})"]
    verdicts = []
    for label in ("trainer", "tensorboard", "data_server"):
        key = label + "_kb"
        series = [s[key] for s in train if s[key] is not None]
        if not series:
            lines.append(f"{label}: no samples")
            continue
        mid_kb, last_kb = _median(s[key] for s in middle), _median(s[key] for s in last)
        data_kb = added * _BYTES_PER_STEP[label] / 1024
        allowed_kb = mid_kb * 1.25 + 50 * 1024 + data_kb
        line = (f"{label} RSS MB: first {series[0] / 1024:.0f}, max {max(series) / 1024:.0f}, "
                f"middle-third median {mid_kb / 1024:.1f}, last-third median "
                f"{last_kb / 1024:.1f} ({(last_kb - mid_kb) / 1024:+.1f} MB, "
                f"{(last_kb - mid_kb) * 1024 / max(added, 1):.0f} B per step added; "
                f"allowed {(allowed_kb - mid_kb) / 1024:+.0f} MB, of which "
                f"{data_kb / 1024:.0f} MB for the data)")
        verdicts.append((label, "growth", last_kb, allowed_kb))
        if _STEADY_SLACK_KB[label] is not None and steady_a and steady_b:
            a_kb = _median(s[key] for s in steady_a)
            b_kb = _median(s[key] for s in steady_b)
            line += (f"; steady: {a_kb / 1024:.1f} -> {b_kb / 1024:.1f} MB "
                     f"(max {max(s[key] for s in steady) / 1024:.1f})")
            verdicts.append((label, "steady", b_kb, a_kb + _STEADY_SLACK_KB[label]))
        lines.append(line)
    print("\n" + "\n".join(lines))

    assert not poller.errors, poller.errors[:5]
    assert "Traceback" not in tb_out, tb_out[-3000:]
    assert final["last_step"] == done["steps"] - 1, (final["last_step"], done)
    assert final["steps"] == done["steps"] and final["first_step"] == 0
    served = [s["last_step"] for s in train if s["last_step"] is not None]
    assert served, "the run never showed up in /runs"
    assert served == sorted(served)
    # Live data keeps arriving: the last step served grows in each third.
    for part in (middle, last):
        steps = [s["last_step"] for s in part if s["last_step"] is not None]
        assert steps and steps[-1] > steps[0], ("no new data in a third", steps)
    assert done["fits"] >= 3
    assert any(s["anomalies"] for s in train), "no anomaly was ever served"
    assert pids["data_server"] is not None, "no data server child process found"
    assert len(steady) >= 8
    for label, what, kb, allowed_kb in verdicts:
        assert kb <= allowed_kb, (label, what, kb, allowed_kb, lines)
