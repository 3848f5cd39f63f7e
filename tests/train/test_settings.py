"""The settings objects of ``convlens train head`` / ``convlens train segmentation``."""

from __future__ import annotations

from pathlib import Path

import pytest

from convlens.cli import main
from convlens.errors import DataError
from convlens.train.settings import HeadTraining, SegmentationTraining


def test_loop_keywords_come_from_the_settings(tmp_path):
    settings = SegmentationTraining(out=str(tmp_path), epochs=3, batch_size=5, seed=7)
    keywords = settings.loop_keywords()
    assert settings.out == tmp_path and isinstance(settings.out, Path)
    assert keywords["checkpoint"] == tmp_path / "checkpoint.pt"
    assert (keywords["epochs"], keywords["batch_size"], keywords["seed"]) == (3, 5, 7)
    assert keywords["resume"] is False and keywords["checkpoint_every"] == 1


def test_head_training_items_default_to_2000_synthetic_and_a_whole_folder(tmp_path):
    assert HeadTraining(out=tmp_path).train_items == 2000
    assert HeadTraining(out=tmp_path, limit=16).train_items == 16
    assert HeadTraining(out=tmp_path, data=str(tmp_path)).train_items is None


@pytest.mark.parametrize(
    ("make", "option"),
    [
        (lambda out: HeadTraining(out=out, epochs=0), "--epochs"),
        (lambda out: HeadTraining(out=out, limit=0), "--limit"),
        (lambda out: HeadTraining(out=out, learning_rate=0.0), "--lr"),
        (lambda out: SegmentationTraining(out=out, checkpoint_every=0), "--checkpoint-every"),
        (lambda out: SegmentationTraining(out=out, masks="labels"), "--masks"),
        (lambda out: SegmentationTraining(out=out, upsample="cubic"), "--upsample"),
        (lambda out: SegmentationTraining(out=out, threshold=1.5), "--threshold"),
        (lambda out: SegmentationTraining(out=out, threshold=-1.0), "--threshold"),
    ],
)
def test_a_value_out_of_range_names_its_option(tmp_path, make, option):
    with pytest.raises(DataError, match=option):
        make(tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["head", "cam", "--limit", "0"], "--limit must be >= 1"),
        (["segmentation", "--masks", "labels"], "--masks must be 'true' or 'cam'"),
        (["segmentation", "--backbone-width", "0"], "--backbone-width must be >= 1"),
        (["head", "bogus"], "unknown head 'bogus'"),
        (["head", "cam", "--epochs", "0"], "--epochs must be >= 1"),
    ],
)
def test_the_cli_checks_its_settings_before_writing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train", *args, "--out", str(out)]) == 2  # usage errors, before any work
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert not out.exists()


@pytest.mark.parametrize("old", [["--head", "cam"], ["--task", "segmentation"]])
def test_the_old_one_command_spelling_is_a_usage_error(tmp_path, capsys, old):
    assert main(["train", *old, "--out", str(tmp_path)]) == 2
    assert "No such option" in capsys.readouterr().err
