"""Shared helpers: read what tb_stability wrote, through TensorBoard."""

import glob
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from tb_stability import metadata


def read_run(logdir):
    """Reads one run directory with TensorBoard's event accumulator.

    Every point is kept (size guidance 0), as the plugin's fix_flags makes
    TensorBoard do. Returns {tag: [(step, ndarray), ...]} for tb_stability
    tags, plus the summary metadata per tag under the key "__metadata__".
    """
    from tensorboard.backend.event_processing import plugin_event_accumulator as pea
    from tensorboard.util import tensor_util

    acc = pea.EventAccumulator(
        logdir, size_guidance={pea.TENSORS: 0}
    )
    acc.Reload()
    out = {}
    md = {}
    for tag in acc.Tags()[pea.TENSORS]:
        meta = acc.SummaryMetadata(tag)
        if meta.plugin_data.plugin_name != metadata.PLUGIN_NAME:
            continue
        md[tag] = meta
        out[tag] = [
            (e.step, tensor_util.make_ndarray(e.tensor_proto))
            for e in acc.Tensors(tag)
        ]
    out["__metadata__"] = md
    return out


def global_table(run):
    """All global rows of a run as (steps int64 [n], values [n, G])."""
    steps, rows = [], []
    for event_step, table in run.get(metadata.TAG_GLOBAL, []):
        steps.append(event_step + table[:, 0].astype(np.int64))
        rows.append(table[:, 1:])
    if not steps:
        return np.zeros([0], np.int64), np.zeros([0, len(metadata.GLOBAL_COLUMNS)])
    return np.concatenate(steps), np.concatenate(rows)


def detail_by_step(run):
    return {step: value for step, value in run.get(metadata.TAG_LAYERS_DETAIL, [])}


def event_files(logdir):
    return sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*")))


G = {name: i for i, name in enumerate(metadata.GLOBAL_COLUMNS)}
S = {name: i for i, name in enumerate(metadata.STAT_COLUMNS)}


@pytest.fixture
def logdir(tmp_path):
    return str(tmp_path / "run")


@pytest.fixture(scope="session")
def demo_logs(tmp_path_factory):
    """The whole demo, trained once per test session (about two minutes).

    Returns (logdir Path, {run: what its function returned}, progress lines).
    """
    from demo import main as demo

    logdir = tmp_path_factory.mktemp("demo")
    lines = []
    results = demo.run_all(str(logdir), log=lines.append)
    return logdir, results, lines


def tensorboard_app(logdir):
    """(TensorBoard's WSGI app serving our plugin over its Python data
    provider, the ingester): what `tensorboard --load_fast=false` serves,
    with the flags our loader fixed. `ingester.data_provider` re-reads the
    logdir when `reload_logdir(ingester)` is called.
    """
    from tensorboard import default, program
    from tensorboard.backend import application
    from tensorboard.backend.event_processing import data_ingester
    from tensorboard.plugins import base_plugin

    from tb_stability.server.plugin import StabilityLoader

    tb = program.TensorBoard(plugins=default.get_static_plugins() + [StabilityLoader])
    tb.configure(argv=["", "--logdir", str(logdir), "--reload_interval", "0",
                       "--reload_task", "blocking"])
    ingester = data_ingester.LocalDataIngester(tb.flags)
    ingester.start()
    context = base_plugin.TBContext(
        flags=tb.flags, data_provider=ingester.data_provider, logdir=str(logdir),
        sampling_hints=tb.flags.samples_per_plugin)
    plugin = StabilityLoader().load(context)
    app = application.TensorBoardWSGI([plugin], data_provider=ingester.data_provider)
    return app, ingester


def free_ports(n=1):
    """n localhost TCP ports free at the time of the call."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start_tensorboard(logdir, port, *flags, **popen_kwargs):
    """A real `tensorboard` process (the CLI installed next to this Python,
    so the plugin's entry point is the one under test) on 127.0.0.1:port.
    """
    import shutil
    import subprocess
    import sys

    exe = shutil.which("tensorboard", path=os.path.dirname(sys.executable))
    assert exe, "tensorboard CLI not installed next to this Python"
    return subprocess.Popen(
        [exe, "--logdir", str(logdir), "--host", "127.0.0.1", "--port",
         str(port), *flags], **popen_kwargs)


def stop_process(proc, timeout=20):
    """Terminates `proc` (killed if it does not exit within `timeout` s);
    returns what it wrote to a stdout pipe, or "" if it had none.
    """
    import subprocess

    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def reload_logdir(ingester):
    ingester._multiplexer.Reload()  # pylint: disable=protected-access


def no_bare_nan(body):
    """json.loads that fails on bare NaN/Infinity (not JSON)."""
    import json

    def reject(name):
        raise AssertionError(f"bare {name} in JSON")
    return json.loads(body, parse_constant=reject)
