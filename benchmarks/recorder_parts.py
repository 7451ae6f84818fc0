"""Where the in-graph recorder's per-step cost goes, part by part.

The README's custom loop on `small` (overhead.py's 64-128-128-10 MLP, Adam,
batch 64), with `Recorder.push` inside the `tf.function` step, and the same
recorder with parts of its step taken out (a diagnostic: the variants
without a part do not record what the recorder records):

  plain        no recording
  recorder     `Recorder.push` at the defaults
  stats_rare   the full statistics never computed after the first step
               (`stats_every` huge, `first_steps=0`): the conditional stays
  light_only   no conditional at all: every step light
  bare         light_only, and no detector, a constant global row, two
               ring writes
  minimal      no recorder: the gradients' sums of squares and the loss
               as one row into one ring variable, the floor of any
               per-step recording

Every condition has its own model and optimizer, traced before the clock
starts; rounds time one epoch of each, the order rotating. A condition's
figure is the median over rounds of its epoch over plain's in the same
round (wall and process CPU), with the quartiles of those ratios.

    python benchmarks/recorder_parts.py --reps 16
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONDITIONS = ("plain", "recorder", "stats_rare", "light_only", "bare", "minimal")


def _strip(rec, condition):
    """Takes parts out of `rec`'s step, per `condition` (on this instance)."""
    import tensorflow as tf

    from tb_stability import metadata
    from tb_stability.record.detector import Outliers
    from tb_stability.record.global_stats import GLOBAL_FROM_STATS, GLOBAL_LIGHT
    from tb_stability.record.recorder import _StepStats

    if condition in ("light_only", "bare"):
        vstats = rec.variable_stats

        def light(count, loss, grad_norm, grads, grad_sq, weights_before, hot):
            nan_rows = np.full([vstats.input_rows], np.nan, np.float32)
            glob = tf.unstack(tf.constant(GLOBAL_LIGHT))
            return _StepStats(tf.constant(False), vstats.light(grads, grad_sq),
                              tf.constant(nan_rows), rec.rings.median.read_value(),
                              dict(zip(GLOBAL_FROM_STATS, glob)))

        rec._statistics = light
    if condition == "bare":
        false = tf.constant(False)
        rec.detector.outliers = lambda state, loss, grad_norm: Outliers(
            tf.stack([loss, grad_norm]), loss, false, false, false)
        rec.detector.detect = lambda state, *args: (tf.constant(0.0), state, false)
        rec._global_row = lambda *args, **kwargs: tf.zeros(
            [len(metadata.GLOBAL_COLUMNS)])
        rings = rec.rings

        def put(count, *, global_row, stats, **unused):
            index = tf.reshape(count % rings.capacity, [1])
            writes = [
                rings.global_rows.scatter_update(
                    tf.IndexedSlices(global_row[None], index)),
                rings.layers.scatter_update(tf.IndexedSlices(stats[None], index)),
            ]
            with tf.control_dependencies(writes):
                return rings.count.assign_add(1)

        rings.put = put


class Trainer:
    """One condition: a model, its optimizer, the compiled step, the batches."""

    def __init__(self, condition, steps, batch):
        import keras
        import overhead
        import tensorflow as tf

        from tb_stability.record.recorder import Recorder

        self.condition = condition
        model, shape, vocab = overhead.build("small")
        x, y = overhead.data("small", shape, vocab, steps * batch)
        self.batches = [(tf.constant(x[i:i + batch]), tf.constant(y[i:i + batch]))
                        for i in range(0, len(x), batch)]
        opt = keras.optimizers.Adam(1e-3)
        variables = model.trainable_variables
        rec = ring = None
        if condition == "minimal":
            ring = tf.Variable(tf.zeros([512, len(variables) + 1]))
        elif condition != "plain":
            options = ({"stats_every": 10**9, "first_steps": 0}
                       if condition == "stats_rare" else {})
            rec = Recorder(None, opt, variables, **options)
            _strip(rec, condition)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        def train_step(step, xb, yb):
            with tf.GradientTape() as tape:
                loss = loss_fn(yb, model(xb, training=True))
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables))
            if rec is not None:
                rec.push(loss, grads, step=step)
            if ring is not None:
                sq = tf.stack([tf.nn.l2_loss(g) for g in grads])
                row = tf.concat([tf.reshape(loss, [1]), sq], 0)
                ring.scatter_update(tf.IndexedSlices(
                    row[None], tf.reshape(step % 512, [1])))
            return loss, grads

        self.train_step = tf.function(train_step, autograph=False)
        self.step = 0
        self.epoch()  # traces the step

    def epoch(self):
        import tensorflow as tf

        t0, c0 = time.perf_counter(), time.process_time()
        for xb, yb in self.batches:
            self.train_step(tf.constant(self.step, tf.int64), xb, yb)
            self.step += 1
        return time.perf_counter() - t0, time.process_time() - c0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS),
                        choices=CONDITIONS)
    args = parser.parse_args()
    conditions = ["plain"] + [c for c in args.conditions if c != "plain"]
    trainers = [Trainer(c, args.steps, args.batch) for c in conditions]
    times = {c: [] for c in conditions}
    for r in range(args.reps):
        k = r % len(trainers)
        for t in trainers[k:] + trainers[:k]:
            times[t.condition].append(t.epoch())

    def quartiles(values):
        values = sorted(values)
        return (values[len(values) // 4], statistics.median(values),
                values[(3 * len(values)) // 4])

    print(f"small, {args.reps} rounds of {args.steps} steps")
    print("| condition | ms/step | wall ratio | p25-p75 | CPU ratio | p25-p75 |")
    print("|---|---|---|---|---|---|")
    base = times["plain"]
    for c in conditions:
        wall = quartiles([a[0] / b[0] for a, b in zip(times[c], base)])
        cpu = quartiles([a[1] / b[1] for a, b in zip(times[c], base)])
        ms = 1000 * statistics.median(a[0] for a in times[c]) / args.steps
        print(f"| {c} | {ms:.3f} | {wall[1]:.3f} | {wall[0]:.2f}-{wall[2]:.2f} "
              f"| {cpu[1]:.3f} | {cpu[0]:.2f}-{cpu[2]:.2f} |")


if __name__ == "__main__":
    main()
