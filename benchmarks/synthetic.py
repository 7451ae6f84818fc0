"""A synthetic tb_stability run written with the writer's own summary ops.

Global rows per 256-step window, per-variable window aggregates and
per-step detail for the first 50 steps and around each planted spike, as
the recorder lays them out; used by the scale benchmarks and the plugin
tests.
"""

import numpy as np

from tb_stability import metadata


def write_run(logdir, steps, variables, spikes, window=256, start=0, seed=0,
              names=None):
    """Writes steps [start, start + steps) of a synthetic run to `logdir`
    with the writer's layout: the loss descends with lognormal noise and is
    1000x at the absolute steps in `spikes`, which are also flagged and
    have per-step detail from 32 before to 8 after them.
    """
    import tensorflow as tf

    from tb_stability import summary

    rng = np.random.default_rng(seed)
    G, S = len(metadata.GLOBAL_COLUMNS), len(metadata.STAT_COLUMNS)
    local = [s - start for s in spikes if start <= s < start + steps]
    loss = 0.3 * np.exp(rng.normal(0, 0.3, steps)) * np.logspace(0, -2, steps)
    loss[local] *= 1e3
    glob = np.abs(rng.normal(1, 0.1, (steps, G))).astype(np.float32)
    glob[:, metadata.GLOBAL_COLUMNS.index("loss")] = loss
    glob[:, metadata.GLOBAL_COLUMNS.index("flags")] = 0
    glob[:, metadata.GLOBAL_COLUMNS.index("nonfinite")] = 0
    glob[:, metadata.GLOBAL_COLUMNS.index("loss_scale")] = np.nan
    glob[local, metadata.GLOBAL_COLUMNS.index("flags")] = metadata.FLAG_LOSS_JUMP
    names = names or [f"model/layer_{i // 2}/{'kernel' if i % 2 == 0 else 'bias'}"
                      for i in range(variables)]
    info = {"optimizer": {"name": "Adam", "adam": True, "epsilon": 1e-7},
            "variables": [{"name": n, "shape": [64, 64] if i % 2 == 0 else [64]}
                          for i, n in enumerate(names)],
            "window": window, "detail_before": 32, "detail_after": 8}
    detail = sorted({s + d for s in local for d in range(-32, 9)} |
                    set(range(50 - start)))
    detail = [s for s in detail if 0 <= s < steps]
    writer = tf.summary.create_file_writer(logdir, max_queue=1000)
    with writer.as_default():
        summary.run_info(None, info, step=start)
        d = 0
        for lo in range(0, steps, window):
            hi = min(lo + window, steps)
            offsets = (np.arange(lo, hi) - (hi - 1)).astype(np.float32)[:, None]
            last = start + hi - 1
            summary.global_rows(None, np.concatenate([offsets, glob[lo:hi]], 1), step=last)
            summary.layers_window(
                None, np.abs(rng.normal(1, 0.1, (variables, S, 2))).astype(np.float32),
                step=last)
            while d < len(detail) and detail[d] < hi:
                summary.layers_detail(
                    None, np.abs(rng.normal(1, 0.1, (variables, S))).astype(np.float32),
                    step=start + detail[d])
                d += 1
    writer.close()
