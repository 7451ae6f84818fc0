import json
import subprocess
import sys

import pytest
from tensorboard.compat.proto import summary_pb2

from tb_stability import metadata


def test_create_and_parse_round_trip():
    md = metadata.create_summary_metadata("global", description="d")
    assert md.plugin_data.plugin_name == "tb_stability"
    assert md.data_class == summary_pb2.DATA_CLASS_TENSOR
    parsed = metadata.parse_plugin_metadata(md.plugin_data.content)
    assert parsed == {"version": metadata.CONTENT_VERSION, "series": "global"}
    assert md.summary_description == "d"


def test_every_tag_has_a_series():
    for tag, series in metadata.SERIES_BY_TAG.items():
        assert tag.startswith("tb_stability/")
        md = metadata.create_summary_metadata(series)
        assert metadata.parse_plugin_metadata(md.plugin_data.content)["series"] == series


def test_unknown_series_rejected():
    with pytest.raises(ValueError, match="Unknown tb_stability series"):
        metadata.create_summary_metadata("nope")


@pytest.mark.parametrize(
    "content, error",
    [("str", TypeError), (b"\xff", ValueError), (b"[]", ValueError),
     (b'{"version": "1"}', ValueError), (b"{", ValueError)],
)
def test_parse_rejects_malformed(content, error):
    with pytest.raises(error):
        metadata.parse_plugin_metadata(content)


def test_parse_accepts_newer_fields():
    parsed = metadata.parse_plugin_metadata(
        json.dumps({"version": 9, "series": "global", "x": 1}).encode()
    )
    assert parsed["version"] == 9


def test_import_does_not_import_tensorflow():
    code = (
        "import sys, tb_stability, tb_stability.server.plugin, tb_stability.metadata,"
        " tb_stability.analysis, tb_stability.cli;"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["False", "False"]
