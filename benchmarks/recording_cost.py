"""What the in-graph recording costs per step, part by part, against Adam's
own update measured in the same run.

Each part is a `tf.function` called repeatedly on the model's variables and
fixed random gradients (after a few real Adam steps, so that the moments are
those of training); the figure is process CPU milliseconds per call (other
processes on the machine do not inflate it) above an empty function of the
same arguments, the fastest of `--reps` rounds:

* `adam_update`: Keras's Adam `apply` (the baseline);
* `grad_norms`: the exact per-variable gradient sums of squares, computed
  every step;
* `light_step`: `Recorder.push` on a step that computes only those (and the
  detector, the rings);
* `full_step`: `Recorder.push` on a step that computes every statistic;
* `default_mix`: the light and full costs weighted by the share of full
  steps a default recorder computed over a 2,000-step stretch of this
  gradient sequence (every 8th, plus the first 50 and any precursor);
* `guard`: the update guard's own cost (`skip_nonfinite=True,
  skip_outlier_z=6.0`: its decision and the cond around Adam's `apply`,
  given the sums of squares the recording computes anyway): a guarded
  update minus `adam_update` and `grad_norms`, measured alike (a
  difference of two large figures: noisy); `guard_decision`: the decision
  alone, on given sums (small, measured precisely).

    python benchmarks/recording_cost.py --models mlp cnn transformer dense100
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def measure(fn, args, reps, calls):
    best = float("inf")
    for _ in range(reps):
        t = time.process_time()
        for _ in range(calls):
            fn(*args)
        best = min(best, (time.process_time() - t) / calls)
    return best * 1e3


def run(name, reps, calls):
    import keras
    import numpy as np
    import overhead
    import tensorflow as tf

    from tb_stability import metadata
    from tb_stability.config import RecorderConfig
    from tb_stability.record import guard as _guard
    from tb_stability.record import recorder as _recorder

    model, _, _ = overhead.build(name)
    variables = model.trainable_variables
    opt = keras.optimizers.Adam(1e-3)
    opt.build(variables)
    rng = np.random.default_rng(0)
    grads = [tf.constant(rng.normal(size=v.shape).astype("float32") * 1e-2)
             for v in variables]
    for _ in range(3):
        opt.apply(grads, variables)
    loss = tf.constant(1.0)
    light = _recorder.Recorder(None, opt, variables, stats_every=1 << 30,
                               first_steps=0)
    full = _recorder.Recorder(None, opt, variables, stats_every=1)
    default = _recorder.Recorder(None, opt, variables)
    vstats = light.variable_stats

    @tf.function
    def empty(g):
        return tf.constant(0.0)

    @tf.function
    def adam_update(g):
        opt.apply(g, variables)

    @tf.function
    def grad_norms(g):
        return vstats.grad_sums(g)

    @tf.function
    def light_step(g):
        return light.push(loss, g)

    @tf.function
    def full_step(g):
        return full.push(loss, g)

    guard = _guard.Guard(RecorderConfig(skip_nonfinite=True,
                                        skip_outlier_z=6.0))

    @tf.function
    def guarded_update(g):
        decision, assign = guard.decide(tf.reduce_sum(vstats.grad_sums(g)))
        with tf.control_dependencies([assign]):
            skip = tf.equal(decision, float(metadata.GUARD_SKIPPED))
        _guard.apply_unless(skip, opt.apply, g, variables)

    sums = vstats.grad_sums(grads)

    @tf.function
    def guard_decision(g):
        return guard.decide(tf.reduce_sum(sums))[0]

    @tf.function
    def default_step(g, scale):
        return default.push(loss, [x * scale for x in g])

    # The share of full steps of a default recorder, over gradients whose
    # size wanders as in training (a lognormal scale per step).
    for s in np.exp(rng.normal(0, 0.3, size=2000)).astype("float32"):
        default_step(grads, tf.constant(s))
    rms_column = metadata.GLOBAL["rms_ratio_max"]
    computed = np.isfinite(default.rings.global_rows.numpy()[:, rms_column])
    share = float(computed.mean())

    base = measure(empty, (grads,), reps, calls)
    parts = {}
    for fn in (adam_update, grad_norms, light_step, full_step, guarded_update,
               guard_decision):
        fn(grads)
        parts[fn.__name__] = measure(fn, (grads,), reps, calls) - base
    parts["default_mix"] = (share * parts["full_step"]
                            + (1 - share) * parts["light_step"])
    parts["guard"] = (parts.pop("guarded_update") - parts["adam_update"]
                      - parts["grad_norms"])
    return model.count_params(), len(variables), share, parts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "transformer"])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    print(f"{'model':12} {'vars':>4} {'full share':>10}  part: CPU ms per step "
          f"above an empty call (x Adam's update)")
    for name in args.models:
        params, variables, share, parts = run(name, args.reps, args.calls)
        adam = parts["adam_update"]
        cells = "  ".join(f"{k} {v:.3f} ({v / adam:.2f}x)" for k, v in parts.items())
        print(f"{name:12} {variables:>4} {share:>10.3f}  {cells}", flush=True)


if __name__ == "__main__":
    main()
