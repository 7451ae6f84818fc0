"""The main job: train example runs with tb_stability, serve TensorBoard.

    python -m demo.main --logdir demo_logs            # train, then serve
    python -m demo.main --logdir demo_logs --logs-only

The seed blow-ups (issue: demo/) will join these runs; for now a clean
Keras run, a Keras run with one outlier batch (a one-step loss spike the
detector keeps in detail) and a custom training loop with `Monitor`.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def _regression(steps, batch, seed, outlier_step=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps * batch, 10)).astype("float32")
    y = (x @ rng.normal(size=(10, 1)) + 0.1 * rng.normal(size=(steps * batch, 1)))
    y = y.astype("float32")
    if outlier_step is not None:
        y[outlier_step * batch:(outlier_step + 1) * batch] *= 300.0
    return x, y


def _model(seed):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((10,)),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.Dense(1, name="out"),
    ])


def keras_run(logdir, name, outlier_step=None, steps=1500, batch=16):
    import keras
    import tb_stability

    x, y = _regression(steps, batch, seed=0, outlier_step=outlier_step)
    model = _model(0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    cb = tb_stability.keras.StabilityCallback(os.path.join(logdir, name))
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0,
              callbacks=[cb])


def custom_loop_run(logdir, name="custom-loop", steps=800, batch=16):
    import keras
    import tensorflow as tf
    import tb_stability

    x, y = _regression(steps, batch, seed=1)
    model = _model(1)
    opt = keras.optimizers.Adam(1e-3)
    variables = model.trainable_variables

    with tb_stability.Monitor(os.path.join(logdir, name), optimizer=opt,
                              variables=variables) as monitor:
        @tf.function
        def train_step(step, xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(xb) - yb))
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables))
            monitor.record(step, loss, grads, batch_size=tf.shape(xb)[0],
                           inputs=xb)

        for step in range(steps):
            sl = slice(step * batch, (step + 1) * batch)
            train_step(tf.constant(step, tf.int64), x[sl], y[sl])


RUNS = (
    ("clean", lambda d: keras_run(d, "clean")),
    ("outlier-batch", lambda d: keras_run(d, "outlier-batch", outlier_step=900)),
    ("custom-loop", custom_loop_run),
)


def run_all(logdir, log=print):
    """Trains every demo run into `logdir` (one sub-directory per run)."""
    os.makedirs(logdir, exist_ok=True)
    for i, (name, fn) in enumerate(RUNS, start=1):
        t0 = time.perf_counter()
        log(f"[{i}/{len(RUNS)}] training {name} ...")
        fn(logdir)
        log(f"[{i}/{len(RUNS)}] {name} done in {time.perf_counter() - t0:.1f} s")
    return [name for name, _ in RUNS]


def serve(logdir, port):
    """Starts TensorBoard (with the tb_stability plugin) and blocks."""
    from tensorboard import default, program
    from tb_stability.plugin import StabilityLoader

    plugins = default.get_plugins()
    if not any(getattr(p, "__name__", "") == "StabilityLoader"
               or isinstance(p, StabilityLoader) for p in plugins):
        plugins = plugins + [StabilityLoader]
    tb = program.TensorBoard(plugins=plugins)
    tb.configure(argv=["", "--logdir", logdir, "--host", "127.0.0.1",
                       "--port", str(port)])
    url = tb.launch()
    print(f"TensorBoard with tb_stability: {url}  (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def main(argv=None):
    parser = argparse.ArgumentParser(description="tb_stability demo")
    parser.add_argument("--logdir", default="demo_logs")
    parser.add_argument("--logs-only", action="store_true",
                        help="only write the logs, do not start TensorBoard")
    parser.add_argument("--port", type=int, default=6006)
    args = parser.parse_args(argv)
    run_all(args.logdir)
    print(f"logs written to {os.path.abspath(args.logdir)}", flush=True)
    if not args.logs_only:
        serve(args.logdir, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
