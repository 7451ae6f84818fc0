"""One worker of a MultiWorkerMirroredStrategy run on localhost, or the
single-worker reference run of the same model on the same data: a custom
loop with `tb_stability.Monitor` (Keras 3's `fit` does not run under
MultiWorkerMirroredStrategy: keras-team/keras#20585).

Usage: multiworker_run.py LOGDIR TASK PORTS OUT.npz
  TASK: worker index (0 is the chief), or -1 for the single-worker run
  PORTS: comma-separated localhost ports, one per worker

Each replica gets the same batch and its share of the loss, so the
all-reduced gradient is that batch's gradient: the chief must record what
the single-worker run records.
A bad batch (targets 1000x) is planted at step SPIKE. Each process saves
whether it is the chief and its final weights (OUT.npz).
"""

import json
import os
import sys

logdir, task, ports, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if task >= 0:
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports.split(",")]},
        "task": {"type": "worker", "index": task},
    })
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if task >= 0:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
else:
    strategy = tf.distribute.get_strategy()

import keras  # noqa: E402

import tb_stability  # noqa: E402

STEPS, BATCH, SPIKE = 600, 32, 400
rng = np.random.default_rng(0)
x = rng.normal(size=(STEPS * BATCH, 8)).astype("float32")
y = (x @ rng.normal(size=(8, 1))).astype("float32")
y[SPIKE * BATCH:(SPIKE + 1) * BATCH] *= 1000.0  # one bad batch


with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(16, activation="tanh"),
        keras.layers.Dense(1),
    ])
    opt = keras.optimizers.Adam(1e-2)
    opt.build(model.trainable_variables)
    monitor = tb_stability.Monitor(logdir, optimizer=opt,
                                   variables=model.trainable_variables,
                                   flush_secs=1.0)
replicas = strategy.num_replicas_in_sync


@tf.function
def train_step(step, xb, yb):
    def replica(xb, yb):
        with tf.GradientTape() as tape:
            # Global-batch loss: each replica's share, summed by the
            # all-reduce (every replica sees the same batch here).
            loss = tf.reduce_mean(tf.square(model(xb) - yb)) / replicas
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        monitor.record(step, loss, grads, batch_size=tf.shape(xb)[0] / replicas)
    strategy.run(replica, args=(xb, yb))


for step in range(STEPS):
    sl = slice(step * BATCH, (step + 1) * BATCH)
    train_step(tf.constant(step, tf.int64), x[sl], y[sl])
    monitor.flush()
monitor.close()
np.savez(out, chief=tb_stability.record.runtime.is_chief(strategy),
         weights=np.concatenate([w.numpy().ravel() for w in model.weights]))
print("done", task, flush=True)
