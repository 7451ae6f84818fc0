"""The main job's runs train and record what they should."""

import numpy as np

from demo import main as demo
from tb_stability import metadata
from conftest import G, global_table, read_run


def test_run_all_writes_every_run(tmp_path):
    lines = []
    names = demo.run_all(str(tmp_path), log=lines.append)
    assert names == ["clean", "outlier-batch", "custom-loop"]
    assert any("[3/3] custom-loop done" in line for line in lines)
    for name in names:
        steps, rows = global_table(read_run(str(tmp_path / name)))
        assert len(steps) > 500 and np.all(np.diff(steps) == 1), name
    _, clean = global_table(read_run(str(tmp_path / "clean")))
    assert not np.any(clean[50:, G["flags"]]), "a clean run raises no flag"
    steps, spiky = global_table(read_run(str(tmp_path / "outlier-batch")))
    assert int(np.argmax(spiky[:, G["loss"]])) == 900
    assert int(spiky[900, G["flags"]]) & metadata.FLAG_LOSS_JUMP
    inputs = read_run(str(tmp_path / "custom-loop"))[metadata.TAG_INPUTS_WINDOW]
    assert inputs[0][1].shape == (10, 4)
