"""The main job: train the demo runs with tb_stability, serve TensorBoard.

    python -m demo.main --logdir demo_logs            # train, then serve
    python -m demo.main --logdir demo_logs --logs-only
    python -m demo.main --logdir demo_logs --retrain  # train again from scratch

Runs already trained into the logdir (listed in its `.demo-runs` file once
they finished) are reused, not trained again; `--retrain` deletes and
retrains them.

The runs: four reported training blow-ups (demo/README.md), each broken and fixed
(`seedNNN-bad`, `seedNNN-fixed`, see demo/README.md), seed 001's NaN variant
(`seed001-bad-nan`) and a Keras run with one outlier batch (`outlier-batch`,
a one-step spike from a bad batch).
"""

import argparse
import contextlib
import glob
import os
import shutil
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


def keras_run(logdir, name, outlier_step=None, steps=1500, batch=16, seed=0):
    import keras

    import tb_stability

    x, y = _regression(steps, batch, seed=seed, outlier_step=outlier_step)
    model = _model(seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    cb = tb_stability.keras.StabilityCallback(os.path.join(logdir, name))
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0,
              callbacks=[cb])


def _seed_runs():
    from demo import seeds

    runs = []
    for name, fn in seeds.SCENARIOS:
        runs.append((f"{name}-bad", lambda d, fn=fn, name=name, **kw:
                     fn(os.path.join(d, f"{name}-bad"), fixed=False, **kw)))
        runs.append((f"{name}-fixed", lambda d, fn=fn, name=name, **kw:
                     fn(os.path.join(d, f"{name}-fixed"), fixed=True, **kw)))
        if name == "seed001":
            runs.append(("seed001-bad-nan", lambda d, **kw: seeds.seed001(
                os.path.join(d, "seed001-bad-nan"), fixed=False, lr=3e-3, **kw)))
    return runs


# (name, fn(logdir, seed=0, **overrides)): each trains one run into
# logdir/name; `seed` picks its data, batch order and initialisation.
RUNS = tuple(_seed_runs()) + (
    ("outlier-batch", lambda d, **kw: keras_run(d, "outlier-batch", outlier_step=900, **kw)),
)


@contextlib.contextmanager
def deterministic(seed=0):
    """Seeds Python, NumPy and TensorFlow; op determinism inside the block.

    With op determinism (and the fixed intra-op thread count demo/__init__
    sets) a run gives the same numbers on every execution; across machines
    the CPU's instruction set can still change the last bits, which is why
    each scenario's diagnosis is checked over several seeds
    (tests/test_seeds.py), not over one trajectory. Op determinism is
    process-wide: it is turned off again on exit if it was off before, so
    that training a demo run does not change the numbers of what runs next.
    """
    import keras
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    was_on = tf_config.is_op_determinism_enabled()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_on:
            tf_config.disable_op_determinism()


def run_one(logdir, name, seed=0, **overrides):
    """Trains the demo run `name` into logdir/name with the given seed.

    `overrides` go to the run's function (e.g. steps=...). Returns what the
    run's function returned.
    """
    fn = dict(RUNS)[name]
    with deterministic(seed):
        return fn(logdir, seed=seed, **overrides)


DONE_FILE = ".demo-runs"  # in the logdir: the runs whose training finished


def finished_runs(logdir):
    """The demo runs trained to the end in `logdir` that still have their
    event files (the names in its `.demo-runs` file)."""
    try:
        with open(os.path.join(logdir, DONE_FILE)) as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError:
        return set()
    return {n for n in names
            if glob.glob(os.path.join(logdir, n, "events.out.tfevents.*"))}


def run_all(logdir, log=print, only=None, reuse=False):
    """Trains the demo runs into `logdir` (one sub-directory per run).

    Arguments:
      logdir: the log directory (created if needed).
      log: where progress lines go.
      only: optional iterable of run names to train (default: all).
      reuse: keep the runs `logdir` already holds trained to the end
        (`finished_runs`) instead of training them again; their result is
        None. Otherwise a run's old directory is deleted before it is
        trained, so that it holds one event file.

    Returns {run name: what the run's function returned}.
    """
    os.makedirs(logdir, exist_ok=True)
    runs = [(n, fn) for n, fn in RUNS if only is None or n in set(only)]
    done = finished_runs(logdir) if reuse else set()
    results = {}
    for i, (name, fn) in enumerate(runs, start=1):
        if name in done:
            log(f"[{i}/{len(runs)}] {name}: reusing the logs already trained")
            results[name] = None
            continue
        shutil.rmtree(os.path.join(logdir, name), ignore_errors=True)
        t0 = time.perf_counter()
        log(f"[{i}/{len(runs)}] training {name} ...")
        with deterministic(0):
            results[name] = fn(logdir)
        with open(os.path.join(logdir, DONE_FILE), "a") as f:
            f.write(name + "\n")
        log(f"[{i}/{len(runs)}] {name} done in {time.perf_counter() - t0:.1f} s")
    return results


def serve(logdir, port):
    """Starts TensorBoard (with the tb_stability plugin) and blocks."""
    from tensorboard import default, program

    from tb_stability.server.plugin import StabilityLoader

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
    parser.add_argument("--retrain", action="store_true",
                        help="train every run again, even those the logdir already holds")
    parser.add_argument("--only", action="append", metavar="RUN",
                        help="only this run (repeatable; default: all)")
    args = parser.parse_args(argv)
    where = os.path.abspath(args.logdir)
    reused = set() if args.retrain else finished_runs(args.logdir)
    wanted = {n for n, _ in RUNS if not args.only or n in args.only}
    if reused & wanted:
        print(f"reusing the {len(reused & wanted)} demo runs already trained in {where} "
              f"(--retrain to train them again)", flush=True)
    run_all(args.logdir, only=args.only, reuse=not args.retrain)
    print(f"logs in {where}", flush=True)
    if not args.logs_only:
        serve(args.logdir, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
