"""Reads tb_stability series through TensorBoard's data provider.

The plugin's path: the same `RunData` as `reader.load_logdir`, but what
TensorBoard ingested (sampled unless `--samples_per_plugin=tb_stability=0`).
"""

from tb_stability import metadata
from tb_stability.events.series import RunData


def load_from_provider(provider, ctx, experiment_id, run, downsample):
    """RunData of one run read through TensorBoard's data provider.

    Arguments:
      provider: a `tensorboard.data.provider.DataProvider`.
      ctx, experiment_id: as every provider call takes them.
      run: the run name.
      downsample: points per series to ask for (the plugin passes a large
        number; with `samples_per_plugin tb_stability=0` nothing is dropped).

    Returns None when the run has no tb_stability global rows.
    """
    from tensorboard.data import provider as provider_lib

    data = provider.read_tensors(
        ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME,
        downsample=downsample,
        run_tag_filter=provider_lib.RunTagFilter(runs=[run]))
    tags = {tag: [(int(d.step), d.numpy) for d in datums]
            for tag, datums in data.get(run, {}).items()}
    return RunData.from_tags(run, tags)
