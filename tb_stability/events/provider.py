"""Reads tb_stability series through TensorBoard's data provider.

The plugin's path: the same `RunData` as `reader.load_logdir`, from what
TensorBoard ingested (sampled unless `--samples_per_plugin=tb_stability=0`).
As on the event-file path, a series whose plugin content is malformed or of
a newer format version than this reader knows is skipped.
"""

from tb_stability import metadata
from tb_stability.events.series import RunData


def readable_tags(listing):
    """The tags of one run's `list_tensors` listing this reader can read.

    Args:
      listing: {tag: `TensorTimeSeries`} of one run.

    Returns:
      The tags whose plugin content parses and whose version is at most
      `metadata.CONTENT_VERSION`, sorted.
    """
    return sorted(tag for tag, series in listing.items()
                  if metadata.is_readable(getattr(series, "plugin_content", None)))


def load_from_provider(provider, ctx, experiment_id, run, downsample, listing=None):
    """RunData of one run read through TensorBoard's data provider.

    Args:
      provider: a `tensorboard.data.provider.DataProvider`.
      ctx: the request context, as every provider call takes it.
      experiment_id: the experiment, as every provider call takes it.
      run: the run name.
      downsample: points per series to ask for (the plugin passes a large
        number; with `samples_per_plugin tb_stability=0` nothing is dropped).
      listing: the run's {tag: `TensorTimeSeries`} from `list_tensors`, when
        the caller already has it (asked for here otherwise).

    Returns:
      The run's `RunData`, or None when it has no readable global rows.
    """
    from tensorboard.data import provider as provider_lib

    if listing is None:
        listing = provider.list_tensors(
            ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME,
            run_tag_filter=provider_lib.RunTagFilter(runs=[run])).get(run, {})
    tags = readable_tags(listing)
    if metadata.TAG_GLOBAL not in tags:
        return None
    data = provider.read_tensors(
        ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME,
        downsample=downsample,
        run_tag_filter=provider_lib.RunTagFilter(runs=[run], tags=tags))
    series = {tag: [(int(d.step), d.numpy) for d in datums]
              for tag, datums in data.get(run, {}).items()}
    return RunData.from_tags(run, series)
