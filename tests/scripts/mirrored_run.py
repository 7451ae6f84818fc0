"""Trains under MirroredStrategy on two logical CPUs; writes ground truth.

Run as a subprocess: logical devices must be set before TF starts.
Usage: mirrored_run.py LOGDIR MODE OUT.npz   (MODE: keras | monitor)
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
STEPS, BATCH = 6, 16
rng = np.random.default_rng(0)
x = rng.normal(size=(STEPS * BATCH, 5)).astype("float32")
y = rng.normal(size=(STEPS * BATCH, 1)).astype("float32")


def make_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(4),
                             keras.layers.Dense(1)])


# Ground truth on one device: the gradient of the mean loss over the global
# batch, applied with SGD, step by step (SGD keeps the trajectory simple).
ref_model = make_model()
ref_opt = keras.optimizers.SGD(0.05)
ref_norms, ref_losses = [], []
for s in range(STEPS):
    xb, yb = x[s * BATCH:(s + 1) * BATCH], y[s * BATCH:(s + 1) * BATCH]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(ref_model(xb) - yb))
    grads = tape.gradient(loss, ref_model.trainable_variables)
    ref_opt.apply_gradients(zip(grads, ref_model.trainable_variables))
    ref_norms.append(float(tf.linalg.global_norm(grads)))
    ref_losses.append(float(loss))

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
if mode == "keras":
    with strategy.scope():
        model = make_model()
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    cb = tb_stability.keras.StabilityCallback(logdir)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[cb])
else:
    with strategy.scope():
        model = make_model()
        opt = keras.optimizers.SGD(0.05)
        opt.build(model.trainable_variables)
        monitor = tb_stability.Monitor(logdir, optimizer=opt,
                                       variables=model.trainable_variables,
                                       model=model)

    @tf.function
    def step_fn(step, xb, yb):
        def replica(xb, yb):
            with tf.GradientTape() as tape:
                pred = model(xb)
                per_example = tf.reduce_sum(tf.square(pred - yb), axis=1)
                loss = tf.reduce_sum(per_example) / BATCH  # global batch
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            monitor.record(step, loss, grads, batch_size=tf.shape(xb)[0],
                           inputs=xb, targets=yb, predictions=pred)
        strategy.run(replica, args=(xb, yb))

    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH))
    for s, (xb, yb) in enumerate(dataset):
        step_fn(tf.constant(s, tf.int64), xb, yb)
        monitor.flush()
    monitor.close()
# The targets of each global batch (both replicas' halves together).
batches = y.reshape(STEPS, BATCH)
np.savez(out, norms=np.array(ref_norms), losses=np.array(ref_losses),
         target_min=batches.min(1), target_max=batches.max(1),
         target_mean=batches.mean(1))
