"""Training-step overhead of tb_stability against what users would otherwise use.

Three reference models on the CPU (or whatever device TensorFlow picks):

* `mlp`: 4 Dense layers, about 0.92M parameters, 8 variables;
* `cnn`: 4 convolutions and 2 Dense layers on 32x32x3 images, 12 variables;
* `transformer`: a 3-block Transformer encoder (d_model 64, 4 heads,
  sequence 64), 52 variables;
* `dense100` (on request): 50 Dense 64x64 layers, 100 tiny variables, the
  worst case for per-variable work (every op is dispatch, not arithmetic).

Conditions, each trained from a fresh model in the same process, interleaved
over repetitions (rep 1: all conditions, rep 2: all conditions, ...), timed
over one epoch after a warm-up epoch that traces the step:

* `plain`: no callback;
* `tb_stability`: `StabilityCallback(logdir)` at its defaults;
* `tb_stability_full`: `StabilityCallback(logdir, full_detail=True)`:
  every step's per-variable rows written;
* `keras_tb_hist`: Keras's `TensorBoard(histogram_freq=1)` (weight
  histograms once per epoch, epoch-level scalars);
* `keras_tb_batch`: Keras's `TensorBoard(histogram_freq=1, update_freq=1)`,
  what a user sets to see per-step loss;
* `debugger_v2`: `tf.debugging.experimental.enable_dump_debug_info(
  tensor_debug_mode="NO_TENSOR")`, TensorBoard Debugger V2's cheapest mode.

Prints one line per (model, condition): the median wall-clock and process
CPU milliseconds per step, and the median over repetitions of the ratio to
`plain` in the same repetition, the fastest repetition against plain's
fastest ("best"), and the same for process CPU time (what the step cost this
process; wall time also counts what other processes took from it); `--json`
also writes every repetition's figures to a file.

    python benchmarks/overhead.py                    # all models, 5 reps
    python benchmarks/overhead.py --models mlp --reps 3 --steps 200
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


def time_fit(name, condition, steps, batch, warmup):
    """Seconds per step of one timed epoch of a fresh model."""
    import keras
    import tensorflow as tf

    logdir = tempfile.mkdtemp(prefix=f"overhead-{name}-{condition}-")
    debug = condition == "debugger_v2"
    if debug:
        tf.debugging.experimental.enable_dump_debug_info(
            logdir, tensor_debug_mode="NO_TENSOR")
    try:
        model, shape, vocab = build(name)
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
        x, y = data(name, shape, vocab, steps * batch)
        cbs = callbacks(condition, logdir)
        n = warmup * batch
        model.fit(x[:n], y[:n], batch_size=batch, epochs=1, verbose=0,
                  shuffle=False, callbacks=cbs)
        t0, c0 = time.perf_counter(), time.process_time()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False,
                  callbacks=cbs)
        seconds = (time.perf_counter() - t0) / steps
        cpu = (time.process_time() - c0) / steps
    finally:
        if debug:
            tf.debugging.experimental.disable_dump_debug_info()
        keras.backend.clear_session()
        shutil.rmtree(logdir, ignore_errors=True)
    return seconds, cpu, model.count_params(), len(model.trainable_variables)


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
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timed epoch (default per model)")
    parser.add_argument("--warmup", type=int, default=20,
                        help="steps of the warm-up epoch")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    conditions = ["plain"] + [c for c in args.conditions if c != "plain"]
    env = environment()
    print("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
    results = []
    print(f"{'model':12} {'params':>8} {'vars':>4} {'condition':18} "
          f"{'ms/step':>9} {'ratio':>6} {'best':>6} {'cpu ms':>8} {'cpu ratio':>9}")
    for name in args.models:
        steps, batch = DEFAULTS[name]
        steps = args.steps or steps
        wall = {c: [] for c in conditions}
        cpu = {c: [] for c in conditions}
        for _ in range(args.reps):
            for c in conditions:
                seconds, cpu_s, params, variables = time_fit(
                    name, c, steps, batch, args.warmup)
                wall[c].append(seconds)
                cpu[c].append(cpu_s)
        for c in conditions:
            # Ratios are taken within a repetition (the conditions ran one
            # after the other), then their median: slow phases of a shared
            # machine hit both sides of a ratio.
            ratio = statistics.median(
                [a / b for a, b in zip(wall[c], wall["plain"])])
            cpu_ratio = statistics.median(
                [a / b for a, b in zip(cpu[c], cpu["plain"])])
            med, cpu_med = statistics.median(wall[c]), statistics.median(cpu[c])
            # Fastest against fastest: what each reached when nothing else
            # ran (robust to another process taking the CPU for a while).
            best = min(wall[c]) / min(wall["plain"])
            row = {"model": name, "params": params, "variables": variables,
                   "condition": c, "steps": steps, "batch": batch,
                   "reps": args.reps, "ms_per_step": med * 1e3, "ratio": ratio,
                   "best_ratio": best,
                   "cpu_ms_per_step": cpu_med * 1e3, "cpu_ratio": cpu_ratio,
                   "all_ms": [t * 1e3 for t in wall[c]],
                   "all_cpu_ms": [t * 1e3 for t in cpu[c]]}
            results.append(row)
            print(f"{name:12} {params:>8} {variables:>4} {c:18} "
                  f"{med * 1e3:>9.3f} {ratio:>6.3f} {best:>6.3f} {cpu_med * 1e3:>8.3f} "
                  f"{cpu_ratio:>9.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
