"""Training-step overhead of tb_stability against what users would otherwise use.

Reference models on the CPU (or whatever device TensorFlow picks):

* `mlp`: 4 Dense layers, about 0.92M parameters, 8 variables;
* `cnn`: 4 convolutions and 2 Dense layers on 32x32x3 images, 12 variables;
* `transformer`: a 3-block Transformer encoder (d_model 64, 4 heads,
  sequence 64), 51 variables;
* `dense100` (on request): 50 Dense 64x64 layers, 100 tiny variables, the
  worst case for per-variable work (every op is dispatch, not arithmetic).

Conditions:

* `plain`: no callback;
* `tb_stability`: `StabilityCallback(logdir)` at its defaults (the live
  analysis and its alerts on);
* `tb_stability_quiet`: `StabilityCallback(logdir, on_anomaly=None)`: the
  recording alone, no live analysis (what the alerts cost is the
  difference);
* `tb_stability_full`: `StabilityCallback(logdir, full_detail=True)`:
  every statistic of every step, exactly, written;
* `keras_tb_hist`: Keras's `TensorBoard(histogram_freq=1)` (weight
  histograms once per epoch, epoch-level scalars);
* `keras_tb_batch`: Keras's `TensorBoard(histogram_freq=1, update_freq=1)`,
  what a user sets to see per-step loss;
* `debugger_v2`: `tf.debugging.experimental.enable_dump_debug_info(
  tensor_debug_mode="NO_TENSOR")`, TensorBoard Debugger V2's cheapest mode.

Method: one model per condition (same seed, same data), built, compiled and
warmed up (an epoch that traces the step) once; then `--reps` rounds, each
timing one epoch of every condition in turn (the order rotates from round to
round). A condition's ratio is the median over rounds of its epoch time over
plain's in the same round: the machine's slow phases hit both sides of a
ratio. Also printed: the interquartile range of those ratios, the ratio of
total times (which counts the rare epochs that write a window), the fastest
epoch against plain's fastest, and the same median ratio in process CPU
time. Debugger V2 is switched on for the whole process once enabled, so it
is measured apart: `--debugger-reps` fresh plain/debugger pairs, each model
built and traced anew.

Custom loops (`--sections loop`, the `small` 3-layer MLP by default): the
README's loop, a `tf.function` train step returning (loss, grads), with
`Monitor.record` called from Python after it (`loop_eager_record`), inside
it (`loop_in_graph`), or inside it under `jit_compile=True` with
`monitor.flush()` after each call (`loop_in_graph_xla`, against
`loop_plain_xla`), interleaved as above.

Short runs (`--sections fixed`): fresh processes, plain and instrumented in
pairs, a 300-step run of the small MLP with `fit`, the eager-record loop
and the in-graph loop: the time to the end of the first step (tracing) and
of the whole run (the last write included).

The update guard (`--sections guard`, the `--models`): `tb_stability` against
`tb_stability_guard`, `StabilityCallback(logdir, skip_nonfinite=True,
skip_outlier_z=6.0)` (nothing is skipped on these clean runs: the cost is
the decision and the cond around the update), interleaved with plain as
above; the guard's own cost is the `guard_vs_recording` row, the median
over rounds of guarded epoch time over unguarded in the same round.

Live alerts (`--sections alerts`): `tb_stability` (the live analysis on,
its default) against `tb_stability_quiet` (`on_anomaly=None`), interleaved
as above, and the share of the instrumented epochs' time spent in the live
analysis (its own clock; the warm-up epoch's analyses included).

Memory (`--sections memory`): the rings' device memory and the recorder's
host memory for 10, 100 and 1,000 variables, read at two step counts (no
growth with the steps).

    python benchmarks/overhead.py                    # all models, 20 rounds
    python benchmarks/overhead.py --models mlp --reps 10 --conditions plain tb_stability
    python benchmarks/overhead.py --sections loop fixed memory
    python benchmarks/overhead.py --sections guard --models mlp --reps 10
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

CONDITIONS = ("plain", "tb_stability", "tb_stability_quiet", "tb_stability_full",
              "keras_tb_hist", "keras_tb_batch", "debugger_v2")
# (steps per timed epoch, batch size) per model.
DEFAULTS = {"mlp": (300, 64), "cnn": (100, 32), "transformer": (100, 32),
            "dense100": (300, 32), "small": (300, 64)}
# The update guard's section (`--sections guard`), interleaved.
GUARD_CONDITIONS = ("plain", "tb_stability", "tb_stability_guard")
# The live alerts' section (`--sections alerts`): the recording with and
# without the live analysis, interleaved.
ALERT_CONDITIONS = ("plain", "tb_stability_quiet", "tb_stability")
# {condition: (seconds in the live analysis, analyses)} of the last trainers
# closed (read by the alerts section).
ALERT_STATS = {}
# The custom-loop conditions (`--custom-loop`), each against its plain loop:
# (name, plain baseline, record where, jit_compile).
LOOP_CONDITIONS = (
    ("loop_plain", None, None, False),
    ("loop_eager_record", "loop_plain", "eager", False),
    ("loop_in_graph", "loop_plain", "graph", False),
    ("loop_plain_xla", None, None, True),
    ("loop_in_graph_xla", "loop_plain_xla", "graph", True),
)


def build(name):
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    if name == "mlp":
        return keras.Sequential([
            keras.Input((256,)), layers.Dense(1024, activation="relu"),
            layers.Dense(512, activation="relu"),
            layers.Dense(256, activation="relu"), layers.Dense(10),
        ]), (256,), 10
    if name == "cnn":
        return keras.Sequential([
            keras.Input((32, 32, 3)),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(), layers.Flatten(),
            layers.Dense(128, activation="relu"), layers.Dense(10),
        ]), (32, 32, 3), 10
    if name == "transformer":
        seq, vocab, d, heads = 64, 1000, 64, 4
        tokens = keras.Input((seq,), dtype="int32")
        x = layers.Embedding(vocab, d)(tokens)
        x = x + layers.Embedding(seq, d)(keras.ops.arange(seq))
        for _ in range(3):
            a = layers.MultiHeadAttention(heads, d // heads)(x, x)
            x = layers.LayerNormalization()(x + a)
            f = layers.Dense(4 * d, activation="gelu")(x)
            x = layers.LayerNormalization()(x + layers.Dense(d)(f))
        x = layers.GlobalAveragePooling1D()(x)
        return keras.Model(tokens, layers.Dense(10)(x)), (seq,), vocab
    if name == "small":  # the custom loop's and the short run's model
        return keras.Sequential([
            keras.Input((64,)), layers.Dense(128, activation="relu"),
            layers.Dense(128, activation="relu"), layers.Dense(10),
        ]), (64,), 10
    if name == "dense100":
        return keras.Sequential([keras.Input((64,))] + [
            layers.Dense(64, activation="tanh") for _ in range(49)
        ] + [layers.Dense(10)]), (64,), 10
    raise ValueError(f"unknown model {name!r}")


def data(name, shape, vocab, n):
    rng = np.random.default_rng(0)
    if name == "transformer":
        x = rng.integers(0, vocab, size=(n,) + shape).astype("int32")
    else:
        x = rng.normal(size=(n,) + shape).astype("float32")
    return x, rng.integers(0, 10, size=(n,)).astype("int32")


def callbacks(condition, logdir):
    import keras

    import tb_stability

    if condition == "tb_stability":
        return [tb_stability.keras.StabilityCallback(logdir)]
    if condition == "tb_stability_quiet":
        return [tb_stability.keras.StabilityCallback(logdir, on_anomaly=None)]
    if condition == "tb_stability_full":
        return [tb_stability.keras.StabilityCallback(logdir, full_detail=True)]
    if condition == "tb_stability_guard":
        return [tb_stability.keras.StabilityCallback(
            logdir, skip_nonfinite=True, skip_outlier_z=6.0)]
    if condition == "keras_tb_hist":
        return [keras.callbacks.TensorBoard(logdir, histogram_freq=1)]
    if condition == "keras_tb_batch":
        return [keras.callbacks.TensorBoard(logdir, histogram_freq=1,
                                            update_freq=1)]
    return []


def compiled(name):
    import keras

    model, shape, vocab = build(name)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    return model, shape, vocab


def timed_epoch(model, x, y, batch, cbs):
    """(wall seconds, process CPU seconds) of one epoch over x."""
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False,
              callbacks=cbs)
    return time.perf_counter() - t0, time.process_time() - c0


class Trainer:
    """One condition's model, callbacks and log directory, kept for all
    rounds.
    """

    def __init__(self, name, condition, steps, batch, warmup):
        self.condition = condition
        self.logdir = tempfile.mkdtemp(prefix=f"overhead-{name}-{condition}-")
        self.model, shape, vocab = compiled(name)
        self.x, self.y = data(name, shape, vocab, steps * batch)
        self.batch = batch
        self.cbs = callbacks(condition, self.logdir)
        n = warmup * batch
        timed_epoch(self.model, self.x[:n], self.y[:n], batch, self.cbs)

    def epoch(self):
        return timed_epoch(self.model, self.x, self.y, self.batch, self.cbs)

    def close(self):
        alerts = getattr(self.cbs[0], "alerts", None) if self.cbs else None
        if alerts is not None:
            ALERT_STATS[self.condition] = (alerts.seconds, alerts.analyses)
        shutil.rmtree(self.logdir, ignore_errors=True)


def interleaved(name, conditions, steps, batch, warmup, reps):
    """{condition: [(wall, cpu) per round]} for conditions other than
    debugger_v2, every round timing each condition's epoch in turn.
    """
    import keras

    trainers = [Trainer(name, c, steps, batch, warmup) for c in conditions]
    out = {c: [] for c in conditions}
    try:
        for r in range(reps):
            k = r % len(trainers)
            for t in trainers[k:] + trainers[:k]:
                out[t.condition].append(t.epoch())
    finally:
        for t in trainers:
            t.close()
        keras.backend.clear_session()
    return out


def debugger_pairs(name, steps, batch, warmup, reps):
    """{"plain": [...], "debugger_v2": [...]}: fresh models, one pair a round
    (the debugger instruments everything traced while it is on).
    """
    import keras
    import tensorflow as tf

    out = {"plain": [], "debugger_v2": []}
    for _ in range(reps):
        for condition in ("plain", "debugger_v2"):
            logdir = tempfile.mkdtemp(prefix=f"overhead-{name}-{condition}-")
            debug = condition == "debugger_v2"
            if debug:
                tf.debugging.experimental.enable_dump_debug_info(
                    logdir, tensor_debug_mode="NO_TENSOR")
            try:
                t = Trainer(name, "plain", steps, batch, warmup)
                out[condition].append(t.epoch())
                t.close()
            finally:
                if debug:
                    tf.debugging.experimental.disable_dump_debug_info()
                keras.backend.clear_session()
                shutil.rmtree(logdir, ignore_errors=True)
    return out


class LoopTrainer:
    """One custom-loop condition: the README's loop with its own model,
    optimizer and `Monitor`, kept for all rounds.

    `record` is called from Python after the compiled step ("eager", the
    README's first example), inside it ("graph"; under XLA with
    `monitor.flush()` after each call), or not at all (plain).
    """

    def __init__(self, name, condition, steps, batch, warmup):
        import keras
        import tensorflow as tf

        import tb_stability

        _, _, where, jit = next(c for c in LOOP_CONDITIONS if c[0] == condition)
        self.condition, self.where, self.jit = condition, where, jit
        self.logdir = tempfile.mkdtemp(prefix=f"loop-{name}-{condition}-")
        self.model, shape, vocab = build(name)
        x, y = data(name, shape, vocab, steps * batch)
        self.batches = [(tf.constant(x[i:i + batch]), tf.constant(y[i:i + batch]))
                        for i in range(0, len(x), batch)]
        self.opt = keras.optimizers.Adam(1e-3)
        variables = self.model.trainable_variables
        self.monitor = (None if where is None else tb_stability.Monitor(
            self.logdir, optimizer=self.opt, variables=variables))
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model, opt, monitor = self.model, self.opt, self.monitor

        def train_step(step, xb, yb):
            with tf.GradientTape() as tape:
                loss = loss_fn(yb, model(xb, training=True))
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables))
            if where == "graph":
                monitor.record(step, loss, grads)
            return loss, grads

        self.train_step = tf.function(train_step, jit_compile=jit,
                                      autograph=False)
        self.step = 0
        self.run(self.batches[:warmup])

    def run(self, batches):
        import tensorflow as tf

        for xb, yb in batches:
            loss, grads = self.train_step(tf.constant(self.step, tf.int64), xb, yb)
            if self.where == "eager":
                self.monitor.record(self.step, loss, grads)
            elif self.where == "graph" and self.jit:
                self.monitor.flush()
            self.step += 1

    def epoch(self):
        t0, c0 = time.perf_counter(), time.process_time()
        self.run(self.batches)
        return time.perf_counter() - t0, time.process_time() - c0

    def close(self):
        if self.monitor is not None:
            self.monitor.close()
        shutil.rmtree(self.logdir, ignore_errors=True)


def custom_loop(name, conditions, steps, batch, warmup, reps):
    """{condition: [(wall, cpu) per round]}, interleaved as `interleaved`."""
    import keras

    trainers = [LoopTrainer(name, c, steps, batch, warmup) for c in conditions]
    out = {c: [] for c in conditions}
    try:
        for r in range(reps):
            k = r % len(trainers)
            for t in trainers[k:] + trainers[:k]:
                out[t.condition].append(t.epoch())
    finally:
        for t in trainers:
            t.close()
        keras.backend.clear_session()
    return out


# The fixed cost of a short run: (kind, instrumented) per child process.
FIXED_KINDS = ("fit", "loop_eager", "loop_in_graph")


def fixed_child(kind, instrumented, steps, batch):
    """One short run in this (fresh) process; prints its times as JSON.

    `first`: the first step (tracing the step, with the recorder: building
    the rings, tracing the statistics); `total`: the whole run, from the
    callback's or the Monitor's construction to the last write (the close).
    The model is built and compiled before either clock starts.
    """
    import keras
    import tensorflow as tf

    import tb_stability

    model, shape, vocab = build("small")
    x, y = data("small", shape, vocab, steps * batch)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt = keras.optimizers.Adam(1e-3)
    logdir = tempfile.mkdtemp(prefix=f"fixed-{kind}-")
    out = {}
    try:
        if kind == "fit":
            model.compile(optimizer=opt, loss=loss_fn)

            class FirstStep(keras.callbacks.Callback):
                def on_train_batch_end(self, batch, logs=None):
                    if batch == 0:
                        out["first"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            cbs = [FirstStep()]
            if instrumented:
                cbs.append(tb_stability.keras.StabilityCallback(logdir))
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0,
                      shuffle=False, callbacks=cbs)
            out["total"] = time.perf_counter() - t0
        else:
            batches = [(tf.constant(x[i:i + batch]), tf.constant(y[i:i + batch]))
                       for i in range(0, len(x), batch)]
            variables = model.trainable_variables
            t0 = time.perf_counter()
            monitor = (tb_stability.Monitor(logdir, optimizer=opt,
                                            variables=variables)
                       if instrumented else None)
            in_graph = kind == "loop_in_graph" and instrumented

            @tf.function
            def train_step(step, xb, yb):
                with tf.GradientTape() as tape:
                    loss = loss_fn(yb, model(xb, training=True))
                grads = tape.gradient(loss, variables)
                opt.apply_gradients(zip(grads, variables))
                if in_graph:
                    monitor.record(step, loss, grads)
                return loss, grads

            for step, (xb, yb) in enumerate(batches):
                loss, grads = train_step(tf.constant(step, tf.int64), xb, yb)
                if monitor is not None and not in_graph:
                    monitor.record(step, loss, grads)
                if step == 0:
                    float(loss)
                    out["first"] = time.perf_counter() - t0
            if monitor is not None:
                monitor.close()
            float(loss)
            out["total"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    print("FIXED " + json.dumps(out), flush=True)


def fixed_cost(pairs, steps, batch):
    """{kind: {"plain"|"tb_stability": [{"first", "total"}, ...]}}: fresh
    processes, one plain and one instrumented run a pair, the order
    alternating.
    """
    import subprocess
    import sys

    out = {k: {"plain": [], "tb_stability": []} for k in FIXED_KINDS}
    for p in range(pairs):
        for kind in FIXED_KINDS:
            order = (0, 1) if p % 2 == 0 else (1, 0)
            for instrumented in order:
                res = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--fixed-child",
                     kind, str(instrumented), "--steps", str(steps)],
                    capture_output=True, text=True, check=True)
                line = next(x for x in res.stdout.splitlines()
                            if x.startswith("FIXED "))
                key = "tb_stability" if instrumented else "plain"
                out[kind][key].append(json.loads(line[len("FIXED "):]))
    return out


def memory(variable_counts, checkpoints):
    """Ring device memory and recorder host memory per variable count.

    A `Recorder` at the defaults over `n` variables of 64x64, pushed in a
    `tf.function` with fixed random gradients after real Adam updates and
    flushed once per window as in training. Device memory: the bytes of the
    rings' and the detector's variables. Host memory: what `tracemalloc`
    sees allocated by the recorder's Python and NumPy side (after the
    recorder's construction, the rings excluded) at each checkpoint, and
    the peak within one flush; the Python side of the traced step
    (`trace_bytes`, TensorFlow's graph objects, Adam's update included) is
    given apart. The process's resident size at each checkpoint shows
    whether anything grows with the steps.
    """
    import keras

    rows = []
    for n in variable_counts:
        rows.append(_memory_one(n, checkpoints))
        keras.backend.clear_session()
    return rows


def _memory_one(n, checkpoints):
    """`memory`'s row for n variables."""
    import gc
    import tracemalloc

    import keras
    import numpy as np
    import tensorflow as tf

    from tb_stability.record.recorder import Recorder

    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=(64, 64)).astype("float32")
                                * 0.1, name=f"w{i}") for i in range(n)]
    opt = keras.optimizers.Adam(1e-3)
    opt.build(variables)
    grads = [tf.constant(rng.normal(size=(64, 64)).astype("float32") * 1e-2)
             for _ in range(n)]
    logdir = tempfile.mkdtemp(prefix=f"memory-{n}-")
    gc.collect()
    tracemalloc.start()
    rec = Recorder(logdir, opt, variables)
    rings = [rec.rings.count, rec.rings.next_step, rec.rings.steps,
             rec.rings.global_rows, rec.rings.layers, rec.rings.median,
             rec.rings.full_until, rec.rings.input_rows, rec.rings.inputs,
             rec.detector.variable]
    device = sum(int(np.prod(v.shape)) * v.dtype.size
                 for v in rings if v is not None)

    @tf.function
    def step(i, loss):
        opt.apply(grads, variables)
        return rec.push(loss, grads, step=i)

    init = tracemalloc.get_traced_memory()[0]
    step(tf.constant(0, tf.int64), tf.constant(1.0))  # the trace
    done = 1
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    host, rss, peak = {}, {}, 0
    window = rec.config.window
    for target in checkpoints:
        while done < target:
            step(tf.constant(done, tf.int64),
                 tf.constant(1.0 + 0.01 * np.sin(done), tf.float32))
            done += 1
            if done % window == 0:
                tracemalloc.reset_peak()
                before = tracemalloc.get_traced_memory()[0]
                rec.flush()
                peak = max(peak, tracemalloc.get_traced_memory()[1] - before)
        gc.collect()
        host[target] = init + tracemalloc.get_traced_memory()[0] - traced
        rss[target] = _rss_bytes()
    rec.close()
    tracemalloc.stop()
    shutil.rmtree(logdir, ignore_errors=True)
    return {"variables": n, "ring_capacity": rec.capacity,
            "device_bytes": device, "host_bytes": host,
            "trace_bytes": traced - init, "rss_bytes": rss,
            "flush_peak_bytes": peak}


def _rss_bytes():
    """This process's resident set size, bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def summarise(times, base):
    """Figures of one condition's [(wall, cpu)] against plain's (paired by
    round).
    """
    wall = [w for w, _ in times]
    cpu = [c for _, c in times]
    bwall = [w for w, _ in base]
    bcpu = [c for _, c in base]
    ratios = sorted(a / b for a, b in zip(wall, bwall))
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return {
        "ratio": statistics.median(ratios), "ratio_p25": q[0], "ratio_p75": q[2],
        "total_ratio": sum(wall) / sum(bwall),
        "best_ratio": min(wall) / min(bwall),
        "cpu_ratio": statistics.median([a / b for a, b in zip(cpu, bcpu)]),
    }


def environment():
    import keras
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "cpu": cpu, "cores": os.cpu_count(), "gpu": len(gpus),
        "python": platform.python_version(), "tensorflow": tf.__version__,
        "keras": keras.__version__, "date": time.strftime("%Y-%m-%d"),
    }


def print_row(results, name, params, variables, c, times, base, steps, batch):
    """Prints one condition's row against `base` and appends it to results."""
    fig = summarise(times, base)
    med = statistics.median(w for w, _ in times) / steps
    row = {"model": name, "params": params, "variables": variables,
           "condition": c, "steps": steps, "batch": batch,
           "reps": len(times), "ms_per_step": med * 1e3, **fig,
           "all_ms": [w / steps * 1e3 for w, _ in times],
           "all_cpu_ms": [cp / steps * 1e3 for _, cp in times]}
    results.append(row)
    print(f"{name:12} {params:>8} {variables:>4} {c:18} {len(times):>4} "
          f"{med * 1e3:>8.3f} {fig['ratio']:>6.3f} "
          f"{fig['ratio_p25']:>5.2f}-{fig['ratio_p75']:<5.2f} "
          f"{fig['total_ratio']:>6.3f} {fig['best_ratio']:>6.3f} "
          f"{fig['cpu_ratio']:>6.3f}", flush=True)


def print_fixed(results, figures, steps):
    """Prints the short runs' medians: plain, instrumented, difference."""
    print(f"\n# short run ({steps} steps, small MLP, fresh processes): median "
          "seconds; the difference is the median of the pairs' differences")
    print(f"{'kind':14} {'pairs':>5} {'what':6} {'plain':>7} {'tb_stab':>7} "
          f"{'diff':>7}")
    for kind, runs in figures.items():
        for what in ("first", "total"):
            plain = [r[what] for r in runs["plain"]]
            inst = [r[what] for r in runs["tb_stability"]]
            diff = statistics.median(b - a for a, b in zip(plain, inst))
            row = {"section": "fixed", "kind": kind, "what": what,
                   "pairs": len(plain), "plain_s": statistics.median(plain),
                   "tb_stability_s": statistics.median(inst), "diff_s": diff,
                   "all_plain": plain, "all_tb_stability": inst}
            results.append(row)
            print(f"{kind:14} {len(plain):>5} {what:6} {row['plain_s']:>7.3f} "
                  f"{row['tb_stability_s']:>7.3f} {diff:>+7.3f}", flush=True)


def print_memory(results, rows):
    print("\n# memory: rings on the device, the recorder's host side "
          "(tracemalloc), resident size of the process")
    print(f"{'vars':>5} {'ring rows':>9} {'device':>10} "
          + " ".join(f"{'host@' + str(k):>11}" for k in rows[0]["host_bytes"])
          + f" {'flush peak':>11} {'trace':>10} {'rss growth':>11}")
    for r in rows:
        rss = list(r["rss_bytes"].values())
        print(f"{r['variables']:>5} {r['ring_capacity']:>9} "
              f"{r['device_bytes'] / 1e6:>8.2f}MB "
              + " ".join(f"{v / 1e6:>9.3f}MB" for v in r["host_bytes"].values())
              + f" {r['flush_peak_bytes'] / 1e6:>9.3f}MB "
              f"{r['trace_bytes'] / 1e6:>8.2f}MB "
              f"{(rss[-1] - rss[0]) / 1e6:>+9.2f}MB", flush=True)
        results.append({"section": "memory", **r})


def paired_section(args, results, name, conditions, pair, treated, baseline):
    """One model's interleaved rounds of `conditions`, each row printed, then
    `pair`: `treated` against `baseline` paired by round. Returns the block.
    """
    steps, batch = DEFAULTS[name]
    steps = args.steps or steps
    block = interleaved(name, conditions, steps, batch, args.warmup, args.reps)
    probe, _, _ = compiled(name)
    params, variables = probe.count_params(), len(probe.trainable_variables)
    for c in conditions:
        print_row(results, name, params, variables, c, block[c], block["plain"],
                  steps, batch)
    print_row(results, name, params, variables, pair, block[treated],
              block[baseline], steps, batch)
    return block


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", default=["fit"],
                        choices=["fit", "loop", "fixed", "memory", "guard",
                                 "alerts"],
                        help="fit: model.fit with the callbacks; loop: the "
                        "custom loop (Monitor.record eager, in-graph, XLA); "
                        "fixed: a short run's fixed cost, fresh processes; "
                        "memory: rings and host memory; guard: the update "
                        "guard on against off; alerts: the live analysis on "
                        "against off")
    parser.add_argument("--models", nargs="+",
                        default=["mlp", "cnn", "transformer"],
                        choices=sorted(DEFAULTS))
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS),
                        choices=CONDITIONS)
    parser.add_argument("--loop-models", nargs="+", default=["small"],
                        choices=sorted(DEFAULTS))
    parser.add_argument("--loop-conditions", nargs="+",
                        default=[c[0] for c in LOOP_CONDITIONS],
                        choices=[c[0] for c in LOOP_CONDITIONS])
    parser.add_argument("--reps", type=int, default=20,
                        help="rounds (one timed epoch per condition each)")
    parser.add_argument("--debugger-reps", type=int, default=3,
                        help="fresh plain/debugger_v2 pairs")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timed epoch (default per model)")
    parser.add_argument("--warmup", type=int, default=20,
                        help="steps of the warm-up epoch")
    parser.add_argument("--fixed-pairs", type=int, default=5,
                        help="plain/instrumented fresh-process pairs per kind")
    parser.add_argument("--fixed-child", nargs=2, metavar=("KIND", "INST"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--memory-variables", nargs="+", type=int,
                        default=[10, 100, 1000])
    parser.add_argument("--memory-steps", nargs="+", type=int,
                        default=[1024, 4096],
                        help="steps at which the memory is read")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.fixed_child:
        fixed_child(args.fixed_child[0], int(args.fixed_child[1]),
                    args.steps or DEFAULTS["small"][0], DEFAULTS["small"][1])
        return
    conditions = ["plain"] + [c for c in args.conditions
                              if c not in ("plain", "debugger_v2")]
    env = environment()
    print("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
    results = []
    header = (f"{'model':12} {'params':>8} {'vars':>4} {'condition':18} {'reps':>4} "
              f"{'ms/step':>8} {'ratio':>6} {'p25-p75':>11} {'total':>6} "
              f"{'best':>6} {'cpu':>6}")
    if "fit" in args.sections:
        print(header)
    for name in args.models if "fit" in args.sections else []:
        steps, batch = DEFAULTS[name]
        steps = args.steps or steps
        blocks = [interleaved(name, conditions, steps, batch, args.warmup,
                              args.reps)]
        if "debugger_v2" in args.conditions and args.debugger_reps > 0:
            blocks.append(debugger_pairs(name, steps, batch, args.warmup,
                                         args.debugger_reps))
        probe, _, _ = compiled(name)
        params, variables = probe.count_params(), len(probe.trainable_variables)
        for block in blocks:
            for c, times in block.items():
                if c == "plain" and block is not blocks[0]:
                    continue
                print_row(results, name, params, variables, c, times,
                          block["plain"], steps, batch)
    if "guard" in args.sections:
        print("\n# update guard (guard_vs_recording: tb_stability_guard "
              "against tb_stability, paired by round)")
        print(header)
        for name in args.models:
            paired_section(args, results, name, GUARD_CONDITIONS,
                           "guard_vs_recording", "tb_stability_guard", "tb_stability")
    if "alerts" in args.sections:
        print("\n# live alerts (alerts_vs_recording: tb_stability against "
              "tb_stability_quiet, on_anomaly=None, paired by round; share: "
              "time in the live analysis over the instrumented epochs' time)")
        print(header + f" {'share':>7} {'analyses':>8}")
        for name in args.models:
            block = paired_section(args, results, name, ALERT_CONDITIONS,
                                   "alerts_vs_recording", "tb_stability",
                                   "tb_stability_quiet")
            seconds, analyses = ALERT_STATS.get("tb_stability", (0.0, 0))
            share = seconds / max(sum(w for w, _ in block["tb_stability"]), 1e-9)
            print(f"{'':>{len(header)}} {share:>7.4f} {analyses:>8}", flush=True)
            results[-1].update({"analysis_share": share, "analyses": analyses})
    if "loop" in args.sections:
        print("\n# custom loop (each ratio against its plain loop: "
              "loop_plain, or loop_plain_xla under XLA)")
        print(header)
        wanted = set(args.loop_conditions)
        for _, base, _, _ in LOOP_CONDITIONS:
            if base is not None and any(c[1] == base and c[0] in wanted
                                        for c in LOOP_CONDITIONS):
                wanted.add(base)
        chosen = [c for c in LOOP_CONDITIONS if c[0] in wanted]
        for name in args.loop_models:
            steps, batch = DEFAULTS[name]
            steps = args.steps or steps
            block = custom_loop(name, [c[0] for c in chosen], steps, batch,
                                args.warmup, args.reps)
            probe, _, _ = build(name)
            params, variables = probe.count_params(), len(probe.trainable_variables)
            for c, base, _, _ in chosen:
                print_row(results, name, params, variables, c, block[c],
                          block[base or c], steps, batch)
    if "fixed" in args.sections:
        steps = args.steps or DEFAULTS["small"][0]
        print_fixed(results, fixed_cost(args.fixed_pairs, steps,
                                        DEFAULTS["small"][1]), steps)
    if "memory" in args.sections:
        print_memory(results, memory(args.memory_variables, args.memory_steps))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
