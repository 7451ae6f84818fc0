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
* `tb_stability`: `StabilityCallback(logdir)` at its defaults;
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

    python benchmarks/overhead.py                    # all models, 20 rounds
    python benchmarks/overhead.py --models mlp --reps 10 --conditions plain tb_stability
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

CONDITIONS = ("plain", "tb_stability", "tb_stability_full", "keras_tb_hist",
              "keras_tb_batch", "debugger_v2")
# (steps per timed epoch, batch size) per model.
DEFAULTS = {"mlp": (300, 64), "cnn": (100, 32), "transformer": (100, 32),
            "dense100": (300, 32)}


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
    if condition == "tb_stability_full":
        return [tb_stability.keras.StabilityCallback(logdir, full_detail=True)]
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+",
                        default=["mlp", "cnn", "transformer"],
                        choices=sorted(DEFAULTS))
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS),
                        choices=CONDITIONS)
    parser.add_argument("--reps", type=int, default=20,
                        help="rounds (one timed epoch per condition each)")
    parser.add_argument("--debugger-reps", type=int, default=3,
                        help="fresh plain/debugger_v2 pairs")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timed epoch (default per model)")
    parser.add_argument("--warmup", type=int, default=20,
                        help="steps of the warm-up epoch")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    conditions = ["plain"] + [c for c in args.conditions
                              if c not in ("plain", "debugger_v2")]
    env = environment()
    print("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
    results = []
    print(f"{'model':12} {'params':>8} {'vars':>4} {'condition':18} {'reps':>4} "
          f"{'ms/step':>8} {'ratio':>6} {'p25-p75':>11} {'total':>6} "
          f"{'best':>6} {'cpu':>6}")
    for name in args.models:
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
                fig = summarise(times, block["plain"])
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
