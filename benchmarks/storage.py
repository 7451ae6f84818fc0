"""Bytes written per training step at default settings.

Two modes, with the same model (a stable regression MLP whose depth gives
the requested number of trainable variables, two per Dense layer, Adam) and
the recorder's default settings (window 256, detail 32 before / 8 after each
flagged step, the first 50 steps in detail):

* `--mode train` (default) trains the model with StabilityCallback and
  measures what it wrote. Slow at many variables (every step runs about
  20 graph ops per variable), so for short runs.
* `--mode writer` drives the real host-side path of the same `Recorder`
  (`flush()` / `_process()` / `_write_window()`, the same summary ops and
  event file) without training: it fills the recorder's ring buffers
  directly, chunk by chunk, with plausible global rows, random per-variable
  rows and flags at `--flag-rate` (planted evenly; flagged steps are what
  brings detail rows), and calls `flush()` after each chunk as
  StabilityCallback does (every `ceil(256 / steps_per_execution) *
  steps_per_execution` steps), then `flush(final=True)` and `close()`.
  What is written depends only on this layout, not on the values, so this
  measures 1,000 variables over 100k steps in about 10 seconds; at 10 and
  100 variables over 5,000 steps it writes what train mode writes to within
  0.05% (only the variable names in run_info differ).

Both print per run: flagged and detailed steps, total bytes (event file),
bytes per step overall, in steady state (events after the window that holds
step `--skip - 1`, i.e. without run_info, the first 50 detailed steps and the
first windows; divided by the steps they cover) and per tag.

    # how often does a healthy run flag? (train mode prints it)
    python benchmarks/storage.py --mode train --variables 100 --steps 5000
    # writer mode against train mode (same steps_per_execution, same flags)
    python benchmarks/storage.py --mode train --variables 10 100 --steps 5000
    python benchmarks/storage.py --mode writer --variables 10 100 --steps 5000 \\
        --steps-per-execution 50 --flag-rate 0
    # the figure asked for: Keras defaults (steps_per_execution=1)
    python benchmarks/storage.py --mode writer --variables 10 100 1000 \\
        --steps 100000

`--steps-per-execution` defaults to 50 in train mode (for speed) and to 1
(Keras's default) in writer mode; it sets the callback's flush cadence and
hence the rows per written window (300 rather than 256 at 50), which
changes the per-window bytes. `--flag-rate` defaults to 1e-4 (one flagged
step per 10,000): the healthy train-mode run flags none, so this is a
conservative planted rate (100 variables, 5,000 steps: 0 flagged); each
isolated flag adds 41 detailed steps.
"""

import argparse
import collections
import glob
import math
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

TAG_GLOBAL = "tb_stability/global"
TAG_RUN_INFO = "tb_stability/run_info"


def event_records(logdir):
    """(tag, step, serialized bytes incl. TFRecord framing) per event."""
    from tensorboard.backend.event_processing import event_file_loader

    out = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in event_file_loader.EventFileLoader(path).Load():
            size = event.ByteSize() + 16  # TFRecord: length, crcs
            tag = event.summary.value[0].tag if event.summary.value else "(other)"
            out.append((tag, int(event.step), size, event))
    return out


def tag_bytes(logdir):
    """Serialized bytes per tag (event records incl. framing)."""
    sizes = collections.Counter()
    for tag, _, size, _ in event_records(logdir):
        sizes[tag] += size
    return sizes


def measure(logdir, steps, first_step=0, skip=1000):
    """What was written to `logdir` for steps [first_step, first_step+steps)."""
    from tensorboard.util import tensor_util

    from tb_stability import metadata

    records = event_records(logdir)
    flag_col = 1 + metadata.GLOBAL_COLUMNS.index("flags")
    sizes = collections.Counter()
    flagged, window_ends, detailed = 0, [], 0
    for tag, step, size, event in records:
        sizes[tag] += size
        if tag == TAG_GLOBAL:
            rows = tensor_util.make_ndarray(event.summary.value[0].tensor)
            flagged += int(np.count_nonzero(rows[:, flag_col]))
            window_ends.append(step)
        elif tag == metadata.TAG_LAYERS_DETAIL:
            detailed += 1
    last = first_step + steps - 1
    # Steady state: every event after the window holding the skip-th step.
    cut = min((s for s in window_ends if s >= first_step + skip - 1),
              default=None)
    steady = None
    if cut is not None and cut < last:
        steady_bytes = sum(size for tag, step, size, _ in records
                           if step > cut and tag not in (TAG_RUN_INFO, "(other)"))
        steady = steady_bytes / (last - cut)
    total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(logdir, "*"))
                if os.path.isfile(p))
    assert total == sum(sizes.values()), (total, sum(sizes.values()))
    return dict(total=total, sizes=sizes, flagged=flagged, detailed=detailed,
                windows=len(window_ends), steady=steady, steady_from=cut)


def build_model(variables, width=8):
    import keras

    layers = max(1, variables // 2)
    model = keras.Sequential([keras.Input((width,))] + [
        keras.layers.Dense(width, activation="tanh") for _ in range(layers - 1)
    ] + [keras.layers.Dense(1)])
    assert len(model.trainable_variables) == 2 * layers
    return model


def run_train(variables, steps, spe=50, batch=16, width=8):
    import keras

    import tb_stability

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * batch, width)).astype("float32")
    # Label noise keeps the loss off zero: a stable run, no Adam-epsilon
    # excursions (those are instabilities, and rightly kept in detail).
    y = (x[:, :1] * 0.5 + 0.3 * rng.normal(size=(steps * batch, 1))).astype(
        "float32")
    model = build_model(variables, width)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse",
                  steps_per_execution=spe)
    logdir = tempfile.mkdtemp(prefix="tbs_storage_train_")
    cb = tb_stability.keras.StabilityCallback(logdir)
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[cb])
    seconds = time.perf_counter() - t0
    return logdir, seconds, len(model.trainable_variables)


def _global_rows(rng, first, n, total, flagged, batch=16):
    """Plausible global rows for steps [first, first + n) of a healthy run
    of `total` steps; `flagged` is a boolean mask over all steps.
    """
    from tb_stability import metadata

    col = {name: i for i, name in enumerate(metadata.GLOBAL_COLUMNS)}
    t = np.arange(first, first + n)
    rows = np.empty((n, len(metadata.GLOBAL_COLUMNS)), np.float32)
    decay = np.exp(-3.0 * t / max(total, 1))
    rows[:, col["loss"]] = 0.1 + 0.9 * decay * np.exp(rng.normal(0, 0.2, n))
    rows[:, col["grad_norm"]] = 0.5 * decay * np.exp(rng.normal(0, 0.3, n))
    rows[:, col["learning_rate"]] = 1e-3
    rows[:, col["batch_size"]] = batch
    rows[:, col["rms_ratio_max"]] = np.exp(rng.normal(0, 0.2, n))
    rows[:, col["nonfinite"]] = 0
    rows[:, col["update_ratio"]] = 1e-3 * np.exp(rng.normal(0, 0.3, n))
    rows[:, col["weight_norm"]] = 10.0 + 1e-4 * t
    rows[:, col["loss_scale"]] = np.nan
    rows[:, col["flags"]] = np.where(flagged[t], metadata.FLAG_LOSS_JUMP, 0)
    rows[:, col["eff_step_max"]] = 1e-3 * np.exp(rng.normal(0, 0.5, n))
    return rows


def run_writer(variables, steps, spe=1, flag_rate=1e-4, width=8, seed=0):
    """Drives the real Recorder's host path over `steps` steps without
    training: ring buffers filled directly, flushed as the callback does.
    """
    import keras
    import tensorflow as tf

    from tb_stability.record import recorder as _recorder

    keras.utils.set_random_seed(0)
    model = build_model(variables, width)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    logdir = tempfile.mkdtemp(prefix="tbs_storage_writer_")
    # StabilityCallback's defaults; the callback passes steps_per_call and
    # the optimizer's iterations as initial step.
    rec = _recorder.Recorder(logdir, optimizer, model.trainable_variables,
                             steps_per_call=spe, initial_step=0)
    rings = rec.rings
    R, W = rec.capacity, rec.config.window
    V, S = len(rec.variables), rings.layers.shape[-1]
    F = rings.input_rows.shape[-1] if rings.input_rows is not None else 0
    # The callback flushes once its step counter (in steps_per_execution
    # increments) reaches the window.
    chunk = math.ceil(W / spe) * spe
    assert chunk + spe <= R
    flagged = np.zeros(steps, bool)
    n_flags = int(round(steps * flag_rate))
    if n_flags:
        period = steps / n_flags
        flagged[(period * (np.arange(n_flags) + 0.5)).astype(int)] = True
    rng = np.random.default_rng(seed)
    # Random per-variable rows: one pool, a random slice of it per chunk
    # (the values do not change what is written; this keeps the filling
    # cheap at 1,000 variables).
    pool = np.abs(rng.normal(1.0, 0.5, (2 * chunk, V, S))).astype(np.float32)
    pool_rows = np.abs(rng.normal(1.0, 0.5, (2 * chunk, max(F, 1)))).astype(
        np.float32)
    t0 = time.perf_counter()
    fill_seconds = 0.0
    for first in range(0, steps, chunk):
        f0 = time.perf_counter()
        n = min(chunk, steps - first)
        idx = tf.constant(np.arange(first, first + n) % R, tf.int64)
        off = int(rng.integers(0, chunk + 1))

        def put(ring, value, idx=idx):
            ring.scatter_update(tf.IndexedSlices(tf.constant(value), idx))

        put(rings.steps, np.arange(first, first + n, dtype=np.int64))
        put(rings.global_rows, _global_rows(rng, first, n, steps, flagged))
        put(rings.layers, pool[off:off + n])
        if F:
            put(rings.input_rows, pool_rows[off:off + n])
        rings.count.assign(first + n)
        rings.next_step.assign(first + n)
        fill_seconds += time.perf_counter() - f0
        rec.flush()
    rec.flush(final=True)
    rec.close()
    seconds = time.perf_counter() - t0
    return logdir, seconds, V, fill_seconds


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--mode", choices=("train", "writer"), default="train")
    parser.add_argument("--variables", type=int, nargs="+", default=[100])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--steps-per-execution", type=int, default=None,
                        help="default: 50 (train), 1 (writer)")
    parser.add_argument("--flag-rate", type=float, default=1e-4,
                        help="writer mode: flagged steps per step")
    parser.add_argument("--skip", type=int, default=1000,
                        help="steps left out of the steady-state figure")
    args = parser.parse_args()
    spe = args.steps_per_execution or (50 if args.mode == "train" else 1)
    tags = ("global", "layers_window", "layers_detail", "input_grad_rows",
            "run_info")
    print(f"mode={args.mode} steps_per_execution={spe}"
          + (f" flag_rate={args.flag_rate:g}" if args.mode == "writer" else ""))
    print(f"{'vars':>5} {'steps':>7} {'flags':>5} {'detail':>6} {'bytes':>11} "
          f"{'B/step':>8} {'steady':>8}  "
          + " ".join(f"{t[:13]:>13}" for t in tags) + "   seconds")
    for v in args.variables:
        extra = ""
        if args.mode == "train":
            logdir, seconds, nvars = run_train(v, args.steps, spe=spe)
        else:
            logdir, seconds, nvars, fill = run_writer(
                v, args.steps, spe=spe, flag_rate=args.flag_rate)
            extra = f" (fill {fill:.1f})"
        m = measure(logdir, args.steps, skip=args.skip)
        per_tag = {t.split("/")[-1]: n / args.steps for t, n in m["sizes"].items()}
        known = sum(per_tag.get(t, 0.0) for t in tags)
        rest = sum(per_tag.values()) - known
        steady = "-" if m["steady"] is None else f"{m['steady']:.1f}"
        print(f"{nvars:>5} {args.steps:>7} {m['flagged']:>5} {m['detailed']:>6} "
              f"{m['total']:>11} {m['total'] / args.steps:>8.2f} {steady:>8}  "
              + " ".join(f"{per_tag.get(t, 0.0):>13.2f}" for t in tags)
              + f"   {seconds:.1f}{extra}  other={rest:.3f} "
              f"steady_after_step={m['steady_from']} {logdir}", flush=True)


if __name__ == "__main__":
    main()
