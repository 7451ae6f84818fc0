"""A one-step spike in a 5,000-step run survives, at its exact step."""

import keras
import numpy as np
from conftest import G, S, global_table, read_run

import tb_stability
from tb_stability import metadata
from tb_stability.server.plugin import StabilityLoader

STEPS = 5000


def _read_through_tensorboard(logdir):
    """Reads via TensorBoard's Python data ingester + data provider, with the
    flags our loader fixes (what `tensorboard --logdir` does).
    """
    from tensorboard import context, default, program
    from tensorboard.backend.event_processing import data_ingester

    tb = program.TensorBoard(
        plugins=default.get_static_plugins() + [StabilityLoader]
    )
    tb.configure(argv=["", "--logdir", logdir, "--reload_interval", "0",
                        "--reload_task", "blocking"])
    flags = tb.flags  # configure() ran our fix_flags
    assert flags.samples_per_plugin == {"tb_stability": 0}
    ingester = data_ingester.LocalDataIngester(flags)
    ingester.start()  # blocking, reload_interval=0: loads once
    provider = ingester.data_provider
    ctx = context.RequestContext()
    listing = provider.list_tensors(ctx, experiment_id="", plugin_name="tb_stability")
    run = next(iter(listing))
    data = provider.read_tensors(
        ctx, experiment_id="", plugin_name="tb_stability", downsample=10**9,
        run_tag_filter=None,
    )[run]
    return {tag: [(d.step, d.numpy) for d in datums] for tag, datums in data.items()}


def test_planted_spike_kept_at_exact_step(tmp_path):
    # Fixed seed: some draws of this noisy low-loss regression also raise a
    # few genuine loss-rise flags (100x its lowest level), which the count
    # of detail rows below does not allow for.
    rng = np.random.default_rng(0)
    spike_step = int(rng.integers(200, STEPS - 100))
    batch = 4
    x = rng.normal(size=(STEPS * batch, 8)).astype("float32")
    w = rng.normal(size=(8, 1)).astype("float32")
    y = x @ w
    y[spike_step * batch:(spike_step + 1) * batch] *= 1000.0  # one bad batch
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)),
                              keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse",
                  steps_per_execution=10)
    logdir = str(tmp_path / "run")
    cb = tb_stability.keras.StabilityCallback(logdir)
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0,
              callbacks=[cb])

    for reader in (read_run, _read_through_tensorboard):
        run = reader(logdir)
        steps, rows = global_table(run)
        assert list(steps) == list(range(STEPS)), reader  # nothing sampled away
        loss = rows[:, G["loss"]]
        assert int(np.argmax(loss)) == spike_step
        flags = rows[:, G["flags"]].astype(int)
        assert flags[spike_step] & metadata.FLAG_LOSS_JUMP
        detail = dict(run[metadata.TAG_LAYERS_DETAIL])
        for s in range(spike_step - 32, spike_step + 9):
            assert s in detail, (reader, s)
        grads = detail[spike_step][:, S["grad_norm"]]
        before = detail[spike_step - 1][:, S["grad_norm"]]
        assert np.all(grads > 10 * before)  # the per-layer evidence
        # A long stable run keeps little detail besides the spike and the
        # first 50 steps.
        assert len(detail) < 50 + 41 + 3 * 41, len(detail)
