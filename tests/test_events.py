"""The event format's readers (tb_stability/events): both paths, event files
and TensorBoard's data provider, skip series of a newer format version and
map a run's columns by the names its run_info lists, so a run written
before a statistic was added still loads in full.
"""

import json

import numpy as np
import pytest
from tensorboard import context
from tensorboard.backend.event_processing import data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
from tensorboard.compat.proto import summary_pb2

from tb_stability import metadata
from tb_stability.config import RecorderConfig
from tb_stability.events import provider, reader

G, S = len(metadata.GLOBAL_COLUMNS), len(metadata.STAT_COLUMNS)
STEPS = 300


def _summary_md(series, version=metadata.CONTENT_VERSION):
    content = json.dumps({"version": version, "series": series}).encode()
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=metadata.PLUGIN_NAME, content=content),
        data_class=summary_pb2.DATA_CLASS_TENSOR)


def _write(path, events):
    """[(tag, array or dict, step, version)] as tb_stability summaries."""
    import tensorflow as tf

    with tf.summary.create_file_writer(str(path)).as_default():
        for tag, data, step, version in events:
            if isinstance(data, dict):
                tensor = tf.constant(json.dumps(data), tf.string)
            else:
                tensor = tf.constant(np.asarray(data, np.float32))
            md = _summary_md(metadata.SERIES_BY_TAG[tag], version)
            tf.summary.write(tag=tag, tensor=tensor, step=step, metadata=md)


def _global(columns, seed=0):
    """One event's [STEPS, 1 + len(columns)] table with named columns."""
    rng = np.random.default_rng(seed)
    table = np.abs(rng.normal(1, 0.1, (STEPS, 1 + len(columns)))).astype(np.float32)
    table[:, 0] = np.arange(STEPS) - (STEPS - 1)
    for name, value in (("flags", 0), ("nonfinite", 0)):
        if name in columns:
            table[:, 1 + columns.index(name)] = value
    return table


def _info(global_columns, stat_columns, **extra):
    return {"format_version": 1,
            "optimizer": {"name": "Adam", "adam": True, "epsilon": 1e-7},
            "variables": [{"name": "m/d/kernel", "shape": [4, 4]},
                          {"name": "m/d/bias", "shape": [4]}],
            "global_columns": list(global_columns), "stat_columns": list(stat_columns),
            "window_aggregates": list(metadata.WINDOW_AGGREGATES), **extra}


def _both_paths(logdir, run):
    """RunData of `run` from the event files and through the data provider."""
    from_files = reader.load_logdir(str(logdir)).get(run)
    multiplexer = pem.EventMultiplexer(tensor_size_guidance={metadata.PLUGIN_NAME: 0})
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    dp = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    via_provider = provider.load_from_provider(
        dp, context.RequestContext(), "", run, downsample=10**9)
    return from_files, via_provider


def test_a_newer_format_version_is_skipped_on_both_paths(tmp_path):
    cols = list(metadata.GLOBAL_COLUMNS)
    _write(tmp_path / "newer", [
        (metadata.TAG_RUN_INFO, _info(cols, metadata.STAT_COLUMNS), 0, 1),
        (metadata.TAG_GLOBAL, _global(cols), STEPS - 1, metadata.CONTENT_VERSION + 1)])
    _write(tmp_path / "mixed", [
        (metadata.TAG_RUN_INFO, _info(cols, metadata.STAT_COLUMNS), 0, 1),
        (metadata.TAG_GLOBAL, _global(cols), STEPS - 1, 1),
        (metadata.TAG_LAYERS_DETAIL, np.ones([2, S]), 10, metadata.CONTENT_VERSION + 1)])
    for path in _both_paths(tmp_path, "newer"):
        assert path is None
    files, via_provider = _both_paths(tmp_path, "mixed")
    for run in (files, via_provider):
        assert len(run.steps) == STEPS and len(run.detail_steps) == 0
    np.testing.assert_array_equal(files.glob, via_provider.glob)


@pytest.mark.parametrize("change", ["older_without_a_column", "newer_with_an_extra_column",
                                    "reordered"])
def test_columns_are_mapped_by_the_names_in_run_info(tmp_path, change):
    glob_cols, stat_cols = list(metadata.GLOBAL_COLUMNS), list(metadata.STAT_COLUMNS)
    if change == "older_without_a_column":
        glob_cols.remove("eff_step_max")
        stat_cols.remove("moment_nonfinite")
    elif change == "newer_with_an_extra_column":
        glob_cols.insert(3, "future_global")
        stat_cols.insert(1, "future_stat")
    else:
        glob_cols.reverse()
        stat_cols.reverse()
    table = _global(glob_cols)
    rng = np.random.default_rng(1)
    detail = rng.normal(size=(2, len(stat_cols))).astype(np.float32)
    window = rng.normal(size=(2, len(stat_cols), 2)).astype(np.float32)
    _write(tmp_path / "run", [
        (metadata.TAG_RUN_INFO, _info(glob_cols, stat_cols), 0, 1),
        (metadata.TAG_GLOBAL, table, STEPS - 1, 1),
        (metadata.TAG_LAYERS_WINDOW, window, STEPS - 1, 1),
        (metadata.TAG_LAYERS_DETAIL, detail, 10, 1)])
    files, via_provider = _both_paths(tmp_path, "run")
    for run in (files, via_provider):
        assert run.glob.shape == (STEPS, G)
        assert run.detail.shape == (1, 2, S) and run.window.shape == (1, 2, S, 2)
        for name in metadata.GLOBAL_COLUMNS:
            if name in glob_cols:
                np.testing.assert_array_equal(run.col(name), table[:, 1 + glob_cols.index(name)])
            else:
                assert np.isnan(run.col(name)).all()
        for name in metadata.STAT_COLUMNS:
            got = run.detail[0, :, metadata.STAT[name]]
            got_window = run.window[0, :, metadata.STAT[name]]
            if name in stat_cols:
                np.testing.assert_array_equal(got, detail[:, stat_cols.index(name)])
                np.testing.assert_array_equal(got_window, window[:, stat_cols.index(name)])
            else:
                assert np.isnan(got).all() and np.isnan(got_window).all()
    np.testing.assert_array_equal(files.glob, via_provider.glob)


def test_recorder_settings_are_read_back_from_run_info():
    config = RecorderConfig(window=64, detail_before=5, stats_every=4, loss_z=4.5)
    back = RecorderConfig.from_run_info(config.to_run_info())
    assert (back.window, back.detail_before, back.stats_every, back.loss_z) == (64, 5, 4, 4.5)
    # A run written before stats_every existed computed every step; damaged
    # values take the defaults.
    old = RecorderConfig.from_run_info({"window": "x", "detail_after": -3,
                                        "detector": {"grad_z": None}})
    assert old.stats_every == 1
    assert (old.window, old.detail_after, old.grad_z) == (256, 8, 6.0)
    assert RecorderConfig.from_run_info([1, 2]) == RecorderConfig(stats_every=1)
    with pytest.raises(TypeError, match="stats_evry"):
        RecorderConfig().replace(stats_evry=2)
    with pytest.raises(ValueError, match="window"):
        RecorderConfig(window=0)
