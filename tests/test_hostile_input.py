"""Hostile and broken input against the plugin's routes, through TensorBoard's
real WSGI app over its data provider (and, for damaged files, the CLI's own
event-file reader): damaged event files, runs without tb_stability data or
with only some of its series, hand-written or damaged series, odd run and
variable names, a 10,000-variable run, and a property-based fuzz of every
route's query. Nothing may answer 500 or hang: bad requests get a 400/404
with a short plain-text message, damaged data is skipped (with a warning
from the reader) and what was recorded before the damage is still served.
"""

import json
import logging
import os
import struct
import time
import urllib.parse

import numpy as np
import pytest
from conftest import no_bare_nan, reload_logdir, tensorboard_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug import test as wtest

from benchmarks.synthetic import write_run
from tb_stability import analysis, metadata
from tb_stability.events import reader
from tb_stability.server import payloads

BASE = "/data/plugin/tb_stability"
ROUTES = ("/timeline", "/anomaly", "/layers")
G = {name: 1 + i for i, name in enumerate(metadata.GLOBAL_COLUMNS)}  # table column
N_STATS = len(metadata.STAT_COLUMNS)

# The damaged runs: a 2048-step synthetic run (4 variables, one spike at 300,
# global rows and window aggregates every 256 steps) whose global event of
# step 1535 is damaged; what was written before it ends at step 1279.
DAMAGE_STEPS, DAMAGE_SPIKE, DAMAGED_EVENT, LAST_GOOD = 2048, 300, 1535, 1279

HTML_NAME = '<img src=x onerror="alert(1)">'
LONG_NAME = "x" * 250 + "/" + "y" * 249  # 500 characters, two 250-byte components
LONG_UNICODE = "\u00fc" * 125 + "/" + "\u65e5\u672c\u8a9e" * 27  # 206 chars, 250 + 243 bytes
NAMES = [HTML_NAME, "\u00fcn\u00ef/\u65e5\u672c\u8a9e run", "a/b/c", LONG_NAME, LONG_UNICODE,
         "%2e%2e", "+&=?#;%", " spaces  ", "tab\there", "new\nline", "back\\slash",
         "'quote\"", "\u202eRTL\u200b", "...", "a b/c d/e"]
LONG_VARIABLE = "m/" + "v" * 491 + "/kernel"  # 500 characters
VARIABLES = [LONG_VARIABLE, "\u00fc/" + "\u65e5" * 498, "<b>m</b>/dense/kernel", "m/&amp;/bias"]

EMPTY_RUNS = ("empty/zero_bytes", "empty/scalar_only", "partial/info_only",
              "partial/detail_only", "damaged/at_start")
INFO = {"optimizer": {"name": "Adam", "adam": True, "epsilon": 1e-7},
        "variables": [{"name": f"m/l{i}/kernel", "shape": [4, 4]} for i in range(3)],
        "window": 256, "detail_before": 32, "detail_after": 8}
# run_info a hand-written recorder or a damaged file could hold.
BAD_INFOS = {
    "variables_str": {"variables": "abc"},
    "variables_ints": {"variables": [5, None]},
    "name_int": {"variables": [{"name": 7, "shape": [2]}]},
    "shape_str": {"variables": [{"name": "a/b", "shape": "xy"}]},
    "shape_null_dim": {"variables": [{"name": "a/b", "shape": [None, 3]}]},
    "optimizer_list": {"optimizer": [1, 2], "variables": []},
    "settings_junk": {"window": "x", "detail_before": -5, "detail_after": 1e300},
    "not_a_dict": [1, 2, 3],
    "not_json": "{{{",
    "nan_in_json": '{"optimizer": {"name": "Adam", "adam": true, "epsilon": NaN}}',
}


# -- writing ------------------------------------------------------------------

def _global_table(n=600, spike=300, seed=0):
    """One global event's table [n, 1 + G]: rows n-1 .. 0 steps before the
    event's step, a loss that learned (from 10x over the first 100 rows)
    then flat, with a 1000x one-step spike at row `spike`.
    """
    rng = np.random.default_rng(seed)
    table = np.ones([n, 1 + len(metadata.GLOBAL_COLUMNS)], np.float32)
    table[:, 0] = np.arange(n) - (n - 1)
    loss = 0.3 * np.exp(rng.normal(0, 0.05, n))
    loss[:100] *= np.logspace(1, 0, 100)
    loss[spike] *= 1e3
    table[:, G["loss"]] = loss
    table[:, G["grad_norm"]] = np.abs(rng.normal(1, 0.1, n))
    table[:, G["nonfinite"]] = 0
    table[:, G["flags"]] = 0
    table[spike, G["flags"]] = metadata.FLAG_LOSS_JUMP
    table[:, G["loss_scale"]] = np.nan
    return table


def _write_events(path, events):
    """Writes [(tag, data, step)] as tb_stability summaries, shapes unchecked
    (a hand-written or buggy recorder).
    """
    import tensorflow as tf

    with tf.summary.create_file_writer(str(path)).as_default():
        for tag, data, step in events:
            if isinstance(data, (dict, list)):
                data = json.dumps(data)
            tensor = tf.constant(data, tf.string) if isinstance(data, str) \
                else tf.constant(np.asarray(data, np.float32))
            md = metadata.create_summary_metadata(metadata.SERIES_BY_TAG[tag])
            tf.summary.write(tag=tag, tensor=tensor, step=step, metadata=md)


def _windows(variables, steps=(255, 511)):
    return [(metadata.TAG_LAYERS_WINDOW, np.ones([variables, N_STATS, 2]), s) for s in steps]


def _details(variables, steps=range(268, 309)):
    return [(metadata.TAG_LAYERS_DETAIL, np.ones([variables, N_STATS]), s) for s in steps]


def _records(path):
    """[(offset, payload length, event step, first tag)] of an event file."""
    from tensorboard.compat.proto import event_pb2

    data = open(path, "rb").read()
    out, pos = [], 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
        tag = event.summary.value[0].tag if event.HasField("summary") else None
        out.append((pos, length, event.step, tag))
        pos += 16 + length
    return out


def _damaged_copies(src, root):
    """Copies of the single event file in `src` under root/damaged/NAME with
    the global event of DAMAGED_EVENT cut or corrupted (and one corrupted in
    its first tb_stability record). Returns {name: offset of the damage}.
    """
    (name,) = [f for f in os.listdir(src) if f.startswith("events.out.tfevents.")]
    data = open(os.path.join(src, name), "rb").read()
    records = _records(os.path.join(src, name))
    off, length = next((o, n) for o, n, step, tag in records
                       if tag == metadata.TAG_GLOBAL and step == DAMAGED_EVENT)
    info_off, info_len = next((o, n) for o, n, _, tag in records
                              if tag == metadata.TAG_RUN_INFO)

    def flipped(at, count=8):
        d = bytearray(data)
        d[at:at + count] = bytes(b ^ 0xFF for b in d[at:at + count])
        return bytes(d)

    damaged = {
        # A crash (or a copy) cut the file in the middle of a record.
        "truncated": (data[:off + 12 + length // 2], off),
        # Bytes flipped in the middle of a payload: its CRC fails.
        "corrupt": (flipped(off + 12 + length // 2), off),
        # A flipped bit in a record's length: the length CRC fails.
        "bad_length": (flipped(off + 2, 1), off),
        # The first tb_stability record is damaged: nothing can be read.
        "at_start": (flipped(info_off + 12 + info_len // 2), info_off),
    }
    for run, (content, _) in damaged.items():
        os.makedirs(root / "damaged" / run)
        # An early timestamp in the name: read before any file written later.
        with open(root / "damaged" / run / "events.out.tfevents.1000000000.host.v2", "wb") as f:
            f.write(content)
    return {run: at for run, (_, at) in damaged.items()}


@pytest.fixture(scope="module")
def hostile_logdir(tmp_path_factory):
    """Every run of the tests but the wide one. Returns (logdir, source of
    the damaged runs, {damaged run: byte offset of its damage}).
    """
    import tensorflow as tf

    root = tmp_path_factory.mktemp("hostile")
    src = tmp_path_factory.mktemp("undamaged")
    write_run(str(src), DAMAGE_STEPS, 4, [DAMAGE_SPIKE])
    offsets = _damaged_copies(src, root)
    # A run whose first file was cut by a crash and which resumed (a new
    # event file) after the last whole step: both files are read.
    os.makedirs(root / "damaged" / "resumed")
    with open(root / "damaged" / "resumed" / "events.out.tfevents.1000000000.host.v2", "wb") as f:
        f.write(open(root / "damaged" / "truncated" / "events.out.tfevents.1000000000.host.v2",
                     "rb").read())
    write_run(str(root / "damaged" / "resumed"), DAMAGE_STEPS - LAST_GOOD - 1, 4, [1600],
              start=LAST_GOOD + 1, seed=1)

    os.makedirs(root / "empty" / "zero_bytes")
    open(root / "empty" / "zero_bytes" / "events.out.tfevents.1000000000.host.v2", "wb").close()
    with tf.summary.create_file_writer(str(root / "empty" / "scalar_only")).as_default():
        for step in range(20):
            tf.summary.scalar("loss", 1.0 / (step + 1), step=step)

    info = (metadata.TAG_RUN_INFO, INFO, 0)
    glob = (metadata.TAG_GLOBAL, _global_table(), 599)
    _write_events(root / "partial" / "info_only", [info])
    _write_events(root / "partial" / "global_only", [glob])
    _write_events(root / "partial" / "global_window", [info, glob] + _windows(3))
    _write_events(root / "partial" / "global_window_noinfo", [glob] + _windows(3))
    _write_events(root / "partial" / "global_detail", [info, glob] + _details(3))
    _write_events(root / "partial" / "detail_noinfo", [glob] + _details(3))
    _write_events(root / "partial" / "detail_only", [info] + _details(3, range(10)))

    for name, bad in BAD_INFOS.items():
        _write_events(root / "hostile" / f"info_{name}",
                      [(metadata.TAG_RUN_INFO, bad, 0), glob] + _windows(1) + _details(1))
    nan_offsets = _global_table()
    nan_offsets[10:20, 0] = np.nan
    nan_offsets[30, 0] = np.inf
    nan_offsets[40, 0] = 3e38
    _write_events(root / "hostile" / "nan_offsets", [(metadata.TAG_GLOBAL, nan_offsets, 599)])
    _write_events(root / "hostile" / "wrong_shapes", [
        info, glob,
        (metadata.TAG_GLOBAL, np.ones([5]), 700),
        (metadata.TAG_GLOBAL, np.ones([5, 3]), 701),
        (metadata.TAG_LAYERS_WINDOW, np.ones([3, 5, 2]), 255),  # too few statistics
        (metadata.TAG_LAYERS_WINDOW, np.ones([3, N_STATS]), 256),  # rank 2
        (metadata.TAG_LAYERS_DETAIL, np.ones([3, 4]), 300),
        (metadata.TAG_LAYERS_DETAIL, np.ones([7]), 301),
        (metadata.TAG_LAYERS_DETAIL, "a string", 302),
        (metadata.TAG_RUN_INFO, np.ones([3]), 1),
    ])
    # Steps too far apart for int64 arithmetic (the bucketing's span).
    _write_events(root / "hostile" / "extreme_steps", [
        (metadata.TAG_GLOBAL, _global_table(300, 150), -2**62),
        (metadata.TAG_GLOBAL, _global_table(300, 150, seed=1), 2**62)])

    for name in NAMES:
        write_run(str(root / name), 300, len(VARIABLES), [150], names=VARIABLES)
    return root, src, offsets


@pytest.fixture(scope="module")
def client(hostile_logdir):
    app, _ = tensorboard_app(hostile_logdir[0])
    return wtest.Client(app)


def _get(client, route, **args):
    """(status, body text, seconds) of one request; a plain-text message
    for every non-200.
    """
    t0 = time.monotonic()
    response = client.get(BASE + route, query_string=args)
    elapsed = time.monotonic() - t0
    text = response.get_data(as_text=True)
    assert response.status_code in (200, 400, 404), (route, args, text[:300])
    if response.status_code != 200:
        assert response.mimetype == "text/plain", (route, args)
        assert "<" not in text and len(text) < 500, (route, args, text[:300])
    return response.status_code, text, elapsed


def _json(client, route, **args):
    status, text, _ = _get(client, route, **args)
    assert status == 200, (route, args, text[:300])
    return no_bare_nan(text)


def _listed(client):
    return [r["run"] for r in _json(client, "/runs")["runs"]]


# -- 1. damaged event files ------------------------------------------------------

@pytest.mark.parametrize("run", ["truncated", "corrupt", "bad_length"])
def test_damaged_event_file_is_served_up_to_the_damage(client, run):
    run = f"damaged/{run}"
    assert run in _listed(client)
    data = _json(client, "/timeline", run=run, width="100")
    assert (data["first_step"], data["last_step"], data["steps"]) == (0, LAST_GOOD, LAST_GOOD + 1)
    assert [a["peak_step"] for a in data["anomalies"]] == [DAMAGE_SPIKE]
    detail = _json(client, "/anomaly", run=run, step=str(DAMAGE_SPIKE))
    assert detail["evidence"]["resolution"] == "step"
    assert detail["evidence"]["steps"] == list(range(DAMAGE_SPIKE - 32, DAMAGE_SPIKE + 9))
    layers = _json(client, "/layers", run=run)
    assert len(layers["variables"]) == 4
    assert all(v["grad_norm_max"] is not None for v in layers["variables"])


def test_damaged_at_the_first_record_is_a_run_without_data(client):
    assert "damaged/at_start" not in _listed(client)
    for route in ROUTES:
        status, text, _ = _get(client, route, run="damaged/at_start", step="300")
        assert status == 404 and "no tb_stability data" in text


def test_a_run_resumed_after_a_damaged_file_reads_both_files(client, hostile_logdir):
    data = _json(client, "/timeline", run="damaged/resumed")
    assert (data["first_step"], data["last_step"]) == (0, DAMAGE_STEPS - 1)
    assert data["steps"] == DAMAGE_STEPS
    peaks = [a["peak_step"] for a in data["anomalies"]]
    assert DAMAGE_SPIKE in peaks and 1600 in peaks
    run = analysis.load_logdir(str(hostile_logdir[0] / "damaged"), run="resumed")["resumed"]
    assert list(run.steps) == list(range(DAMAGE_STEPS))


def test_reader_keeps_what_precedes_the_damage_and_warns(hostile_logdir, caplog):
    """The CLI's reader agrees with TensorBoard's: it stops at the damaged
    record (a bad payload CRC included, which parses as a valid event with
    wrong numbers) and warns, except for a cut at the end of the file,
    which is what a run still writing looks like.
    """
    root, _, offsets = hostile_logdir
    with caplog.at_level(logging.WARNING, logger="tb_stability"):
        runs = analysis.load_logdir(str(root / "damaged"))
    assert "at_start" not in runs
    for name in ("truncated", "corrupt", "bad_length"):
        assert list(runs[name].steps) == list(range(LAST_GOOD + 1)), name
        assert runs[name].window_steps[-1] == LAST_GOOD
        assert np.all(np.isfinite(runs[name].col("loss")))
    warned = {r.getMessage() for r in caplog.records if r.levelno == logging.WARNING}
    for name in ("corrupt", "bad_length", "at_start"):
        assert any(f"{os.sep}{name}{os.sep}" in m and f"corrupted at byte {offsets[name]}" in m
                   for m in warned), (name, warned)
    assert not any(f"{os.sep}truncated{os.sep}" in m for m in warned)
    report = analysis.report_logdir(str(root / "damaged"), run="corrupt")
    assert [a["peak_step"] for a in report["runs"][0]["anomalies"]] == [DAMAGE_SPIKE]


def test_a_cut_record_completed_later_is_read_on_reload(hostile_logdir, tmp_path):
    """A run still writing: the half-written record is not an error, and
    once the writer finishes it (and the rest) the plugin serves all of it.
    """
    _, src, _ = hostile_logdir
    (name,) = os.listdir(src)
    data = open(src / name, "rb").read()
    cut = open(hostile_logdir[0] / "damaged" / "truncated" /
               "events.out.tfevents.1000000000.host.v2", "rb").read()
    os.makedirs(tmp_path / "live")
    path = tmp_path / "live" / name
    path.write_bytes(cut)
    app, ingester = tensorboard_app(tmp_path)
    live = wtest.Client(app)
    assert _json(live, "/timeline", run="live")["last_step"] == LAST_GOOD
    with open(path, "ab") as f:
        f.write(data[len(cut):])
    reload_logdir(ingester)
    assert _json(live, "/timeline", run="live")["last_step"] == DAMAGE_STEPS - 1
    assert list(reader.load_logdir(str(tmp_path))["live"].steps) == list(range(DAMAGE_STEPS))


def test_payload_crc_matches_the_byte_at_a_time_crc():
    """The vectorised CRC32C the reader checks payloads with."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    spans = [(0, 0), (0, 1), (1, 4), (4, 9), (9, 265), (265, 266 + 256), (600, 4999),
             (100, 5000)]
    assert reader._crc32c_many(data, spans) == [reader._crc32c(data[a:b]) for a, b in spans]
    assert reader._crc32c(b"123456789") == 0xE3069283  # the standard check value


# -- 2. runs without tb_stability data ---------------------------------------------

@pytest.mark.parametrize("run", EMPTY_RUNS)
def test_run_without_tb_stability_rows_is_not_listed_and_404s(client, run):
    assert run not in _listed(client)
    for route in ROUTES:
        status, text, _ = _get(client, route, run=run, step="0")
        assert status == 404, (route, text)
        assert "no tb_stability data for run" in text and json.dumps(run) in text


def test_runs_without_data_are_not_in_the_cli_either(hostile_logdir):
    runs = analysis.load_logdir(str(hostile_logdir[0]))
    assert not set(EMPTY_RUNS) & set(runs)
    assert "partial/global_only" in runs


# -- 3. only some series -----------------------------------------------------------

def test_global_rows_only(client):
    """No run_info, no per-variable series: the timeline is all there; the
    anomaly has its causes and global rows, no layer matrix; /layers lists
    no variable (none was recorded), not an error.
    """
    data = _json(client, "/timeline", run="partial/global_only", width="50")
    assert data["steps"] == 600 and data["buckets"] == 50
    assert [a["peak_step"] for a in data["anomalies"]] == [300]
    assert data["optimizer"] == {}
    detail = _json(client, "/anomaly", run="partial/global_only", step="300")
    assert detail["evidence"]["steps"] == [] and detail["evidence"]["variables"] == []
    assert detail["evidence"]["stats"] == {}
    assert detail["global"]["steps"] == list(range(300 - 32, 300 + 9))
    assert detail["causes"]
    assert _json(client, "/layers", run="partial/global_only") == \
        {"run": "partial/global_only", "variables": [], "layers": []}


@pytest.mark.parametrize("run, names", [
    ("partial/global_window", ["m/l0/kernel", "m/l1/kernel", "m/l2/kernel"]),
    ("partial/global_window_noinfo", ["var0", "var1", "var2"]),
])
def test_window_aggregates_without_detail(client, run, names):
    """The evidence falls back to the per-window maxima; /layers has the
    run maxima, named var<i> when no run_info names them.
    """
    detail = _json(client, "/anomaly", run=run, step="300")
    assert detail["evidence"]["resolution"] == "window"
    assert detail["evidence"]["steps"] == [255, 511]
    assert detail["evidence"]["variables"] == names
    assert len(detail["evidence"]["stats"]["grad_norm"]) == 3
    layers = _json(client, "/layers", run=run)
    assert [v["name"] for v in layers["variables"]] == names
    assert all(v["grad_norm_max"] == 1.0 for v in layers["variables"])


@pytest.mark.parametrize("run, names, shape", [
    ("partial/global_detail", ["m/l0/kernel", "m/l1/kernel", "m/l2/kernel"], [4, 4]),
    ("partial/detail_noinfo", ["var0", "var1", "var2"], None),
])
def test_detail_without_window_aggregates(client, run, names, shape):
    detail = _json(client, "/anomaly", run=run, step="300")
    assert detail["evidence"]["resolution"] == "step"
    assert detail["evidence"]["variables"] == names
    assert detail["evidence"]["steps"] == list(range(268, 309))
    layers = _json(client, "/layers", run=run)["variables"]
    assert [v["name"] for v in layers] == names
    assert layers[0]["shape"] == shape
    assert "grad_norm_max" not in layers[0]  # no window aggregates: no run maxima


@pytest.mark.parametrize("name", sorted(BAD_INFOS))
def test_unusable_run_info_does_not_take_the_run_down(client, name):
    """Every route still answers 200, the spike is still found and the
    variables are named var<i> where run_info cannot name them.
    """
    run = f"hostile/info_{name}"
    data = _json(client, "/timeline", run=run)
    assert [a["peak_step"] for a in data["anomalies"]] == [300]
    assert isinstance(data["optimizer"], dict)
    variables = _json(client, "/layers", run=run)["variables"]
    assert variables and all(isinstance(v["name"], str) for v in variables)
    assert variables[0]["grad_norm_max"] == 1.0
    detail = _json(client, "/anomaly", run=run, step="300")
    assert detail["evidence"]["variables"][0] == variables[0]["name"]


def test_damaged_rows_and_wrong_shapes_are_skipped(client):
    data = _json(client, "/timeline", run="hostile/nan_offsets", width="3")
    assert data["steps"] == 600 - 12 and data["first_step"] == 0  # 12 rows unplaceable
    assert data["last_step"] == 599 and data["buckets"] == 3
    data = _json(client, "/timeline", run="hostile/wrong_shapes")
    assert data["steps"] == 600 and data["last_step"] == 599  # bad global events ignored
    layers = _json(client, "/layers", run="hostile/wrong_shapes")["variables"]
    assert [v["name"] for v in layers] == ["m/l0/kernel", "m/l1/kernel", "m/l2/kernel"]
    assert "grad_norm_max" not in layers[0]  # both window events were malformed
    status, _, _ = _get(client, "/anomaly", run="hostile/wrong_shapes", step="300")
    assert status == 200


def test_steps_too_far_apart_for_int64_arithmetic(client):
    for width in ("1", "7", "599", "10000"):
        data = _json(client, "/timeline", run="hostile/extreme_steps", width=width)
        assert data["first_step"] == -2**62 - 299 and data["last_step"] == 2**62
        assert data["buckets"] <= int(width)
        assert all(a <= b for a, b in zip(data["step_min"], data["step_max"]))
        assert all(b < a for a, b in zip(data["step_min"][1:], data["step_max"]))
    assert _json(client, "/timeline", run="hostile/extreme_steps", width="2")["buckets"] == 2


# -- 4. run and variable names ------------------------------------------------------

def test_odd_run_names_round_trip(client):
    """Every name /runs lists opens with /timeline, /layers and /anomaly,
    the query encoded as the frontend's encodeURIComponent does.
    """
    listed = _listed(client)
    assert set(NAMES) <= set(listed)
    for name in NAMES:
        assert listed.count(name) == 1
        query = "run=" + urllib.parse.quote(name, safe="")
        response = client.get(f"{BASE}/timeline?{query}&width=20")
        assert response.status_code == 200, (name, response.data[:200])
        data = no_bare_nan(response.data)
        assert data["run"] == name and data["last_step"] == 299
        assert [a["peak_step"] for a in data["anomalies"]] == [150]
        layers = _json(client, "/layers", run=name)
        assert layers["run"] == name
        assert [v["name"] for v in layers["variables"]] == VARIABLES
        assert layers["variables"][0]["layer"] == LONG_VARIABLE[:-len("/kernel")]
        detail = _json(client, "/anomaly", run=name, step="150")
        assert detail["run"] == name and detail["evidence"]["variables"] == VARIABLES


def test_overview_summarises_every_listed_run(client):
    """GET overview over the hostile logdir: damaged files, unusable
    run_info, odd names, wrong shapes: every run /runs lists, each with a
    status, never a 500."""
    data = _json(client, "/overview")
    while data["pending"]:
        data = _json(client, "/overview")
    assert sorted(e["run"] for e in data["runs"]) == sorted(_listed(client))
    for e in data["runs"]:
        assert e["status"] in ("nonfinite", "anomalies", "healthy", "no data"), e
        assert (e["first"] is None) == (e["anomalies"] == 0), e


def test_names_are_data_in_error_messages(client):
    """A name that is not a run comes back JSON-quoted, never as markup."""
    from tb_stability.server.plugin import _quote

    for name in NAMES:
        status, text, _ = _get(client, "/timeline", run=name + "-missing")
        assert status == 404 and _quote(name + "-missing") in text


# -- 5. a run with 10,000 variables ----------------------------------------------

WIDE_VARIABLES, WIDE_STEPS, WIDE_SPIKE = 10_000, 600, 300


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Each route once on a 10,000-variable run: {route: (status, seconds,
    bytes, facts)}, printed (timings are not asserted tightly).
    """
    root = tmp_path_factory.mktemp("wide")
    t0 = time.monotonic()
    write_run(str(root / "wide"), WIDE_STEPS, WIDE_VARIABLES, [WIDE_SPIKE])
    written = time.monotonic() - t0
    size = sum(os.path.getsize(root / "wide" / f) for f in os.listdir(root / "wide"))
    client = wtest.Client(tensorboard_app(root)[0])
    out = {}
    for route, args in (("/timeline", {}), ("/anomaly", {"step": str(WIDE_SPIKE)}),
                        ("/layers", {})):
        status, text, elapsed = _get(client, route, run="wide", **args)
        facts = {}
        if status == 200:
            data = no_bare_nan(text)
            if route == "/timeline":
                facts["peaks"] = [a["peak_step"] for a in data["anomalies"]]
            elif route == "/anomaly":
                ev = data["evidence"]
                facts.update(steps=len(ev["steps"]), variables=len(ev["variables"]),
                             rows={k: len(v) for k, v in ev["stats"].items()},
                             total=ev["variables_total"], index=ev["variable_index"],
                             names=ev["variables"], highlight=ev["highlight"])
            else:
                facts["variables"] = len(data["variables"])
            del data
        out[route] = (status, elapsed, len(text.encode()), facts)
    print(f"\nwide run: {WIDE_VARIABLES} variables x {WIDE_STEPS} steps, "
          f"{size / 1e6:.1f} MB written in {written:.1f} s")
    for route, (status, elapsed, nbytes, _) in out.items():
        print(f"  {route:10s} {status}  {elapsed:5.2f} s  {nbytes / 1e6:7.2f} MB")
    return out


def test_wide_run_routes_answer_in_time(wide):
    for route, (status, elapsed, _, _) in wide.items():
        assert status == 200 and elapsed < 60, (route, elapsed)
    assert wide["/timeline"][3]["peaks"] == [WIDE_SPIKE]
    assert wide["/timeline"][2] < 1e6
    assert wide["/layers"][3]["variables"] == WIDE_VARIABLES
    assert wide["/layers"][2] < 5e6  # ~240 bytes a variable
    facts = wide["/anomaly"][3]
    assert facts["variables"] == payloads.MAX_ROWS < WIDE_VARIABLES
    assert facts["steps"] == 41 <= payloads.MAX_ANOMALY_COLUMNS
    assert set(facts["rows"].values()) == {payloads.MAX_ROWS}


def test_wide_run_anomaly_payload_is_bounded(wide):
    """Only MAX_ROWS of the 10,000 variables are served (every one would be
    10,000 x 41 steps x 9 statistics, ~74 MB), with the run's count and
    each served row's index in it, in the model's order.
    """
    assert wide["/anomaly"][2] < 20e6
    facts = wide["/anomaly"][3]
    assert facts["total"] == WIDE_VARIABLES
    index = facts["index"]
    assert len(index) == payloads.MAX_ROWS and index == sorted(set(index))
    assert 0 <= index[0] and index[-1] < WIDE_VARIABLES
    # The synthetic run names its variables model/layer_<i // 2>/kernel|bias.
    assert facts["names"] == [f"model/layer_{i // 2}/{'kernel' if i % 2 == 0 else 'bias'}"
                              for i in index]
    hl = facts["highlight"]
    assert hl["index"] is None or facts["names"][hl["index"]] == hl["variable"]


# -- 6. fuzzed queries ------------------------------------------------------------

# Real runs the fuzz sometimes names (no more than the plugin caches, 8).
FUZZ_RUNS = ["damaged/corrupt", "partial/global_only", "partial/detail_noinfo",
             "hostile/extreme_steps", "hostile/info_variables_str", HTML_NAME,
             NAMES[1], LONG_NAME]
KEYS = st.one_of(st.sampled_from(["run", "width", "first", "last", "step"]),
                 st.text(max_size=8))
VALUES = st.one_of(
    st.sampled_from(FUZZ_RUNS),
    st.text(max_size=40),
    st.integers(-2**70, 2**70).map(str),
    st.integers(-3, 700).map(str),
    st.sampled_from(["150", "300", "1234", "0"]),
    st.floats().map(str),
    st.sampled_from(["", " 12", "12 ", "+5", "0x10", "1e3", "\u0661\u0662", "\x00", "-0",
                     "00012", "9" * 19, "-", "NaN", "Infinity", "[]", "null"]),
)
PLAUSIBLE = st.one_of(st.sampled_from(["150", "300"]), st.integers(-3, 2100).map(str))


def _queries(required=()):
    """Query strings: mostly a real run with the route's `required`
    arguments and others, each a plausible or a fuzzed value, plus junk
    keys; or anything at all.
    """
    value = {k: st.one_of(PLAUSIBLE, VALUES) for k in ("width", "first", "last")}
    value["step"] = st.one_of(st.sampled_from(["150", "300"]), PLAUSIBLE, VALUES)
    args = st.fixed_dictionaries({k: value[k] for k in required},
                                 optional={k: v for k, v in value.items() if k not in required})
    return st.one_of(
        st.tuples(st.sampled_from(FUZZ_RUNS), args, st.lists(st.tuples(KEYS, VALUES), max_size=2))
        .map(lambda q: urllib.parse.urlencode([("run", q[0]), *q[1].items(), *q[2]])),
        st.lists(st.tuples(KEYS, VALUES), max_size=6).map(urllib.parse.urlencode),
        # Raw bytes, invalid UTF-8 and stray '%' included.
        st.tuples(st.sampled_from(["run", "width", "step", "first"]), st.binary(max_size=20))
        .map(lambda kv: kv[0] + "=" + urllib.parse.quote_from_bytes(kv[1])),
        st.text(alphabet="%&=;?+#abc0123456789", max_size=20),
    )


STATIC_PATHS = st.one_of(
    st.text(max_size=30).map(lambda p: urllib.parse.quote(p, safe="/")),
    st.lists(st.sampled_from(["..", ".", "", "index.js", "%2e%2e", "%2f", "static",
                              "a", "\\", "%00", "..%2f", "index.js%00.png"]),
             max_size=5).map("/".join),
)
TIME_LIMIT_S = 10


def _check_response(route, url, response, elapsed, runs):
    text = response.get_data(as_text=True)
    assert response.status_code in (200, 400, 404), (url, response.status_code, text[:300])
    assert elapsed < TIME_LIMIT_S, (url, elapsed)
    if response.status_code != 200:
        assert response.mimetype == "text/plain", url
        assert "<" not in text and len(text) < 500, (url, text[:300])
    elif route != "/static":
        data = no_bare_nan(text)
        if route in ("/runs", "/overview"):
            assert isinstance(data["runs"], list)
        else:
            assert data["run"] in runs, url


@pytest.mark.parametrize("route, required", [
    ("/runs", ()), ("/overview", ()), ("/timeline", ()), ("/anomaly", ("step",)), ("/layers", ())])
def test_fuzzed_queries_never_fail(client, route, required):
    runs = set(_listed(client))

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(query=_queries(required))
    def check(query):
        url = f"{BASE}{route}?{query}"
        t0 = time.monotonic()
        response = client.get(url)
        _check_response(route, url, response, time.monotonic() - t0, runs)

    check()


def test_fuzzed_static_paths_never_fail(client):
    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(path=STATIC_PATHS, query=_queries())
    def check(path, query):
        url = f"{BASE}/static/{path}?{query}"
        t0 = time.monotonic()
        response = client.get(url)
        _check_response("/static", url, response, time.monotonic() - t0, ())
        if response.status_code == 200:
            assert response.mimetype in ("text/javascript", "text/css", "application/json",
                                         "image/svg+xml", "image/png", "text/plain")

    check()
