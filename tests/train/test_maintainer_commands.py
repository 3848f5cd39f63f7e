"""The hidden maintainer commands that replaced ``python -m convlens.train.synthetic`` and
``python -m convlens.train.scenes``: measured on a few held-out items, the shipped file kept
(shapes-model: tests/train/test_shapes_model.py)."""

from __future__ import annotations

import re

import pytest
from tests.helpers.cli import command_paths

from convlens.cli import main
from convlens.models.scenes import WEIGHTS_FILE as SCENES_WEIGHTS

pytestmark = pytest.mark.usefixtures("one_thread")


def test_they_are_train_sub_commands_hidden_from_help(capsys):
    commands = command_paths()
    assert commands["train shapes-model"].hidden and commands["train scenes-model"].hidden
    assert main(["train", "--help"]) == 0
    shown = capsys.readouterr().out
    assert "head" in shown and "segmentation" in shown and "shapes-model" not in shown


def test_scenes_model_test_only_prints_its_held_out_scores(capsys):
    before = SCENES_WEIGHTS.read_bytes()
    assert main(["train", "scenes-model", "--test-only", "--test", "20"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("held-out (20 scenes, seed 1): mAP ")
    assert float(re.search(r"mAP ([0-9.]+)", line).group(1)) > 0.5
    assert SCENES_WEIGHTS.read_bytes() == before


def test_scenes_model_refuses_an_unknown_init(capsys, tmp_path):
    out = tmp_path / "w.pt"
    assert main(["train", "scenes-model", "--init", "imagenet", "--out", str(out)]) == 1
    assert "--init must be one of synthetic-shapes, scratch" in capsys.readouterr().err
    assert not out.exists()
