"""Reads tb_stability series from event files, at full resolution.

Pure Python and NumPy (TensorBoard's protobufs, no TensorFlow): the CLI and
the analysis must not be subject to TensorBoard's sampling, nor pay for a
TensorFlow import. TFRecord framing is parsed here: a record whose length
or payload check fails, or a file cut in the middle of a record (a live
run), ends that file's reading; what was read before is kept, with a
warning for damage (as TensorBoard's own loader stops at a bad record).
"""

import logging
import os
import struct

import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.util import tensor_util

from tb_stability import metadata
from tb_stability.events.series import RunData

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


def _mask(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _crc32c(data):
    """CRC32C of a few bytes (pure Python, ~10 MB/s)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc32c(data):
    return _mask(_crc32c(data))


_CHUNK = 256  # bytes per chunk of the vectorised CRC
_BATCH = 64 << 20  # payload bytes checked at once (bounds the extra memory)
_CRC_NP = np.array(_CRC_TABLE, np.uint32)
_SHIFT = []  # [4, 256] tables: _CHUNK zero bytes through the register


def _shift_tables():
    """Tables that run _CHUNK zero bytes through the CRC register at once.

    The map is linear on the 32-bit state: one 256-entry table per byte of
    the state.
    """
    if not _SHIFT:
        cols = []
        for bit in range(32):
            c = 1 << bit
            for _ in range(_CHUNK):
                c = _CRC_TABLE[c & 0xFF] ^ (c >> 8)
            cols.append(c)
        cols = np.array(cols, np.uint32).reshape(4, 8)
        bits = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(bool)
        _SHIFT.append(np.stack([
            np.bitwise_xor.reduce(np.where(bits, cols[k], np.uint32(0)), axis=1)
            for k in range(4)]).astype(np.uint32))
    return _SHIFT[0]


def _crc32c_many(data, spans):
    """[CRC32C of data[a:b] for (a, b) in spans] (not masked), in NumPy.

    CRC32C is linear: each payload is left-padded with zeros to whole
    chunks (leading zeros do not change a register that starts at 0; the
    standard start value 0xFFFFFFFF is the same as inverting the first four
    bytes), the chunks of all payloads go through the byte table together,
    and each payload's chunk CRCs are then folded in order, shifting the
    running value over one chunk of zeros (~100 MB/s).
    """
    out = [None] * len(spans)
    src = np.frombuffer(data, np.uint8)
    big = [i for i, (a, b) in enumerate(spans) if b - a >= 4]
    for i, (a, b) in enumerate(spans):
        if b - a < 4:
            out[i] = _crc32c(data[a:b])
    shift = _shift_tables()
    start = 0
    while start < len(big):
        batch, size = [], 0
        while start < len(big) and (not batch or size < _BATCH):
            a, b = spans[big[start]]
            batch.append(big[start])
            size += b - a
            start += 1
        chunks = np.array([-(-(spans[i][1] - spans[i][0]) // _CHUNK) for i in batch],
                          np.int64)
        total = int(chunks.sum())
        buf = np.zeros(total * _CHUNK, np.uint8)
        for i, end in zip(batch, (np.cumsum(chunks) * _CHUNK).tolist()):
            a, b = spans[i]
            buf[end - (b - a):end] = src[a:b]
            buf[end - (b - a):end - (b - a) + 4] ^= 0xFF
        buf = buf.reshape(total, _CHUNK)
        state = np.zeros(total, np.uint32)
        for j in range(_CHUNK):
            state = _CRC_NP[(state ^ buf[:, j]) & 0xFF] ^ (state >> 8)
        first = np.cumsum(chunks) - chunks
        acc = np.zeros(len(batch), np.uint32)
        for k in range(int(chunks.max())):
            moved = (shift[0][acc & 0xFF] ^ shift[1][(acc >> 8) & 0xFF]
                     ^ shift[2][(acc >> 16) & 0xFF] ^ shift[3][acc >> 24])
            acc = np.where(k < chunks, moved ^ state[np.minimum(first + k, total - 1)], acc)
        for i, crc in zip(batch, (acc ^ np.uint32(0xFFFFFFFF)).tolist()):
            out[i] = crc
    return out


def read_records(path):
    """Yields the payload of each whole TFRecord in `path`.

    Every length and payload is checked against its CRC (as TensorFlow's
    reader does): the first record that fails ends the file's reading,
    with a warning; a record cut short at the end (a live run still
    writing) ends it silently.
    """
    with open(path, "rb") as f:
        data = f.read()
    pos, size = 0, len(data)
    spans, damaged = [], None
    while pos + 12 <= size:
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if _masked_crc32c(header) != length_crc:
            damaged = pos
            break
        end = pos + 12 + length + 4
        if end > size:
            break  # a record still being written: read up to the last whole one
        spans.append((pos + 12, pos + 12 + length))
        pos = end
    # (fewer than 12 bytes left: a header still being written)
    for (a, b), crc in zip(spans, _crc32c_many(data, spans)):
        if _mask(crc) != struct.unpack("<I", data[b:b + 4])[0]:
            damaged = a - 12
            break
        yield data[a:b]
    if damaged is not None:
        logger.warning(
            "tb_stability: %s is corrupted at byte %d; the rest of the "
            "file is skipped", path, damaged)


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
                if not metadata.is_readable(md.plugin_data.content):
                    continue  # malformed, or written by a newer tb_stability
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
