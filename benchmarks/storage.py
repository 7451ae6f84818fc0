"""Bytes written per training step at default settings.

Trains a stable regression MLP whose depth gives the requested number of
trainable variables (two per Dense layer) with StabilityCallback at default
settings, then prints the event-file size per step, overall and per tag.

    python benchmarks/storage.py --variables 100 --steps 20000
"""

import argparse
import collections
import glob
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def tag_bytes(logdir):
    """Serialized bytes per tag (event records incl. framing)."""
    from tensorboard.backend.event_processing import event_file_loader

    sizes = collections.Counter()
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in event_file_loader.EventFileLoader(path).Load():
            size = event.ByteSize() + 16  # TFRecord: length, crcs
            tag = event.summary.value[0].tag if event.summary.value else "(other)"
            sizes[tag] += size
    return sizes


def run(variables, steps, batch=16, width=8):
    import keras
    import tb_stability

    layers = max(1, variables // 2)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * batch, width)).astype("float32")
    # Label noise keeps the loss off zero: a stable run, no Adam-epsilon
    # excursions (those are instabilities, and rightly kept in detail).
    y = (x[:, :1] * 0.5 + 0.3 * rng.normal(size=(steps * batch, 1))).astype(
        "float32")
    model = keras.Sequential([keras.Input((width,))] + [
        keras.layers.Dense(width, activation="tanh") for _ in range(layers - 1)
    ] + [keras.layers.Dense(1)])
    assert len(model.trainable_variables) == 2 * layers
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse",
                  steps_per_execution=50)
    logdir = tempfile.mkdtemp(prefix="tbs_storage_")
    cb = tb_stability.keras.StabilityCallback(logdir)
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[cb])
    seconds = time.perf_counter() - t0
    sizes = tag_bytes(logdir)
    total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(logdir, "*")))
    return logdir, total, sizes, seconds, 2 * layers


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variables", type=int, nargs="+", default=[100])
    parser.add_argument("--steps", type=int, default=20000)
    args = parser.parse_args()
    print(f"{'vars':>6} {'steps':>8} {'bytes':>10} {'B/step':>8}  per tag (B/step)")
    for v in args.variables:
        logdir, total, sizes, seconds, nvars = run(v, args.steps)
        per_tag = ", ".join(
            f"{tag.split('/')[-1]}={n / args.steps:.1f}"
            for tag, n in sorted(sizes.items(), key=lambda kv: -kv[1])
        )
        print(f"{nvars:>6} {args.steps:>8} {total:>10} {total / args.steps:>8.1f}  "
              f"{per_tag}   ({seconds:.0f} s, {logdir})")


if __name__ == "__main__":
    main()
