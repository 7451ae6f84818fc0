"""The update guard under MirroredStrategy on two logical CPUs.

Run as a subprocess: logical devices must be set before TF starts.
Usage: guard_mirrored.py LOGDIR MODE OUT.npz   (MODE: keras | monitor)
A NaN row in one replica's half of one batch: the update is skipped on both
replicas, the weights and Adam's moments stay finite.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402

import tb_stability  # noqa: E402

logdir, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
STEPS, BATCH, NAN_STEP = 12, 16, 7
rng = np.random.default_rng(0)
x = rng.normal(size=(STEPS * BATCH, 5)).astype("float32")
y = (x @ rng.normal(size=(5, 1))).astype("float32")
x[NAN_STEP * BATCH + BATCH - 2] = np.nan  # the second replica's half

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4),
                              keras.layers.Dense(1)])
    opt = keras.optimizers.Adam(0.01)
if mode == "keras":
    with strategy.scope():
        model.compile(optimizer=opt, loss="mse")
    cb = tb_stability.keras.StabilityCallback(logdir, skip_nonfinite=True)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[cb])
else:
    with strategy.scope():
        opt.build(model.trainable_variables)
        monitor = tb_stability.Monitor(logdir, optimizer=opt,
                                       variables=model.trainable_variables,
                                       model=model, skip_nonfinite=True)

    @tf.function
    def step_fn(step, xb, yb):
        def replica(xb, yb):
            with tf.GradientTape() as tape:
                pred = model(xb)
                loss = tf.reduce_sum(tf.square(pred - yb)) / BATCH
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            monitor.record(step, loss, grads, batch_size=tf.shape(xb)[0])
        strategy.run(replica, args=(xb, yb))

    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH))
    for s, (xb, yb) in enumerate(dataset):
        step_fn(tf.constant(s, tf.int64), xb, yb)
        monitor.flush()
    monitor.close()

values = [v.numpy() for v in model.trainable_variables]
values += [v.numpy() for v in opt.variables]
np.savez(out, finite=all(np.all(np.isfinite(v)) for v in values),
         nan_step=NAN_STEP)
