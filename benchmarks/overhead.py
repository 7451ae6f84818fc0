"""Training-step overhead of StabilityCallback at default settings.

Interleaved repetitions in one process: the same MLP trained for the same
steps without and with the callback; prints median seconds per step and the
ratio monitored / unmonitored.

    python benchmarks/overhead.py --variables 100 --steps 2000 --reps 3
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def build(variables, width):
    import keras

    layers = max(1, variables // 2)
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((width,))] + [
        keras.layers.Dense(width, activation="tanh") for _ in range(layers - 1)
    ] + [keras.layers.Dense(1)])


def time_fit(variables, width, steps, batch, monitored, spe):
    import keras
    import tb_stability

    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * batch, width)).astype("float32")
    y = (x[:, :1] + 0.3 * rng.normal(size=(steps * batch, 1))).astype("float32")
    model = build(variables, width)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse",
                  steps_per_execution=spe)
    cbs = [tb_stability.keras.StabilityCallback(tempfile.mkdtemp())] if monitored else []
    # Warm-up epoch (tracing), then the timed epoch.
    model.fit(x[: 50 * batch * spe], y[: 50 * batch * spe], batch_size=batch,
              epochs=1, verbose=0, callbacks=cbs)
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=cbs)
    return (time.perf_counter() - t0) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variables", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps-per-execution", type=int, default=1)
    args = parser.parse_args()
    print(f"{'vars':>5} {'width':>5} {'plain ms':>9} {'monitored ms':>13} {'ratio':>6}")
    for v in args.variables:
        plain, mon = [], []
        for _ in range(args.reps):
            for monitored, out in ((False, plain), (True, mon)):
                out.append(time_fit(v, args.width, args.steps, args.batch,
                                    monitored, args.steps_per_execution))
        p, m = statistics.median(plain), statistics.median(mon)
        print(f"{v:>5} {args.width:>5} {p * 1e3:>9.3f} {m * 1e3:>13.3f} {m / p:>6.2f}")


if __name__ == "__main__":
    main()
