"""Reads tb_stability series from event files, at full resolution.

Pure Python and NumPy (TensorBoard's protobufs, no TensorFlow): the CLI and
the analysis must not be subject to TensorBoard's sampling, nor pay for a
TensorFlow import. TFRecord framing is parsed here: a record whose length
check fails, or a file cut in the middle of a record (a live run), ends that
file's reading; what was read before is kept, with a warning for damage.
"""

import logging
import os
import struct

import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.util import tensor_util

from tb_stability import metadata
from tb_stability.analysis.series import RunData

logger = logging.getLogger("tb_stability")

_EVENT_PREFIX = "events.out.tfevents."


def _crc32c_table():
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path):
    """Yields the payload of each whole TFRecord in `path`.

    The length field is checked against its CRC (cheap); payload CRCs are
    not recomputed (pure Python would be slow on large files), a damaged
    payload shows up as an unparsable event instead.
    """
    with open(path, "rb") as f:
        data = f.read()
    pos, size = 0, len(data)
    while pos + 12 <= size:
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if _masked_crc32c(header) != length_crc:
            logger.warning(
                "tb_stability: %s is corrupted at byte %d; the rest of the "
                "file is skipped", path, pos)
            return
        end = pos + 12 + length + 4
        if end > size:
            return  # a record still being written: read up to the last whole one
        yield data[pos + 12:pos + 12 + length]
        pos = end
    # fewer than 12 bytes left: a header still being written


def _event_files(directory):
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(
        os.path.join(directory, n) for n in names if n.startswith(_EVENT_PREFIX)
    )


def read_tags(directory):
    """{tag: [(step, ndarray), ...]} of tb_stability series in one run dir.

    Events are returned in the order they were written (file by file, in
    file-name order, which is creation order).
    """
    out = {}
    for path in _event_files(directory):
        try:
            records = list(read_records(path))
        except OSError as e:
            logger.warning("tb_stability: cannot read %s: %s", path, e)
            continue
        for payload in records:
            event = event_pb2.Event()
            try:
                event.ParseFromString(payload)
            except Exception:  # pylint: disable=broad-except
                logger.warning(
                    "tb_stability: %s holds an unparsable event; the rest of "
                    "the file is skipped", path)
                break
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                md = value.metadata
                if md.plugin_data.plugin_name != metadata.PLUGIN_NAME:
                    continue
                try:
                    content = metadata.parse_plugin_metadata(md.plugin_data.content)
                except (TypeError, ValueError):
                    continue
                if content["version"] > metadata.CONTENT_VERSION:
                    continue  # written by a newer tb_stability
                try:
                    array = tensor_util.make_ndarray(value.tensor)
                except Exception:  # pylint: disable=broad-except
                    continue
                out.setdefault(value.tag, []).append((int(event.step), array))
    return out


def list_runs(logdir):
    """[(run name, directory)] of directories holding event files.

    The run name is the path relative to `logdir` ("." for logdir itself),
    as TensorBoard names runs.
    """
    runs = []
    for directory, dirs, files in os.walk(logdir):
        dirs.sort()
        if any(f.startswith(_EVENT_PREFIX) for f in files):
            rel = os.path.relpath(directory, logdir)
            runs.append((rel.replace(os.sep, "/"), directory))
    return runs


def load_logdir(logdir, run=None):
    """{run name: RunData} for every run with tb_stability data.

    Raises:
      FileNotFoundError: if `logdir` is not a directory.
      KeyError: if `run` is given and has no tb_stability data.
    """
    if not os.path.isdir(logdir):
        raise FileNotFoundError(f"not a directory: {logdir}")
    result = {}
    for name, directory in list_runs(logdir):
        if run is not None and name != run:
            continue
        data = RunData.from_tags(name, read_tags(directory))
        if data is not None:
            result[name] = data
    if run is not None and run not in result:
        raise KeyError(run)
    return result


def decode_string(array):
    """The Python str of a rank-0 string ndarray."""
    value = np.asarray(array).item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


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
