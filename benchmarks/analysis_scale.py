"""Time to read and analyse a 1M-step, 100-variable run.

Writes a synthetic run through tb_stability's own summary ops (as the
writer lays it out: global rows per 256-step window, per-variable window
aggregates, per-step detail around 20 planted spikes), then times the
pure-NumPy reader and the analysis separately, and checks the planted
spikes are all found.

    python benchmarks/analysis_scale.py --steps 1000000 --variables 100
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from tb_stability import metadata


def write_run(logdir, steps, variables, spikes, window=256):
    import tensorflow as tf
    from tb_stability import summary

    rng = np.random.default_rng(0)
    G, S = len(metadata.GLOBAL_COLUMNS), len(metadata.STAT_COLUMNS)
    loss = 0.3 * np.exp(rng.normal(0, 0.3, steps)) * np.logspace(0, -2, steps)
    loss[spikes] *= 1e3
    glob = np.abs(rng.normal(1, 0.1, (steps, G))).astype(np.float32)
    glob[:, metadata.GLOBAL_COLUMNS.index("loss")] = loss
    glob[:, metadata.GLOBAL_COLUMNS.index("flags")] = 0
    glob[:, metadata.GLOBAL_COLUMNS.index("nonfinite")] = 0
    glob[spikes, metadata.GLOBAL_COLUMNS.index("flags")] = metadata.FLAG_LOSS_JUMP
    info = {"optimizer": {"name": "Adam", "adam": True, "epsilon": 1e-7},
            "variables": [{"name": f"model/layer_{i // 2}/{'kernel' if i % 2 == 0 else 'bias'}",
                           "shape": [64, 64] if i % 2 == 0 else [64]}
                          for i in range(variables)]}
    detail_steps = sorted({s + d for s in spikes for d in range(-32, 9)} | set(range(50)))
    detail_steps = [s for s in detail_steps if 0 <= s < steps]
    writer = tf.summary.create_file_writer(logdir, max_queue=1000)
    with writer.as_default():
        summary.run_info(None, info, step=0)
        d = 0
        for end in range(window, steps + window, window):
            end = min(end, steps)
            start = end - window if end % window == 0 else end - end % window
            rows = glob[start:end]
            offsets = (np.arange(start, end) - (end - 1)).astype(np.float32)[:, None]
            summary.global_rows(None, np.concatenate([offsets, rows], 1), step=end - 1)
            summary.layers_window(
                None, np.abs(rng.normal(1, 0.1, (variables, S, 2))).astype(np.float32),
                step=end - 1)
            while d < len(detail_steps) and detail_steps[d] < end:
                summary.layers_detail(
                    None, np.abs(rng.normal(1, 0.1, (variables, S))).astype(np.float32),
                    step=detail_steps[d])
                d += 1
    writer.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--variables", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    spikes = sorted(rng.choice(np.arange(1000, args.steps - 1000, 5000), 20, replace=False).tolist())
    logdir = tempfile.mkdtemp(prefix="tbs_scale_")
    t0 = time.perf_counter()
    write_run(os.path.join(logdir, "big"), args.steps, args.variables, spikes)
    size = sum(os.path.getsize(os.path.join(logdir, "big", f))
               for f in os.listdir(os.path.join(logdir, "big")))
    print(f"wrote {args.steps} steps x {args.variables} variables: {size / 1e6:.1f} MB "
          f"in {time.perf_counter() - t0:.1f} s")

    from tb_stability import analysis

    timings = {"read": [], "analyse": []}
    for _ in range(3):
        t0 = time.perf_counter()
        runs = analysis.load_logdir(logdir)
        t1 = time.perf_counter()
        result = analysis.analyze_run(runs["big"])
        t2 = time.perf_counter()
        timings["read"].append(t1 - t0)
        timings["analyse"].append(t2 - t1)
    found = sorted(a["peak_step"] for a in result)
    print(f"read    (median of 3): {np.median(timings['read']):.2f} s")
    print(f"analyse (median of 3): {np.median(timings['analyse']):.2f} s  (target < 2 s)")
    print(f"planted spikes: {len(spikes)}, found: {len(found)}, "
          f"all at their exact step: {found == spikes}")


if __name__ == "__main__":
    main()
