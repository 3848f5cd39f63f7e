"""Explanation.save writes a folder as one unit: a failure halfway keeps the old folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import convlens.render
from convlens.attribution.explain import Explanation
from convlens.errors import ConvlensError
from convlens.files import LEDGER


def _explanation(rows: int, method: str = "gradcam", display: bool = True) -> Explanation:
    pixels = np.arange(rows * 4 * 4 * 3, dtype=np.uint8).reshape(rows, 4, 4, 3)
    return Explanation(
        maps=torch.arange(rows * 16, dtype=torch.float32).view(rows, 4, 4) * (1 + rows),
        method=method,
        layer="1",
        image_index=torch.arange(rows),
        class_ids=torch.arange(rows),
        scores=torch.ones(rows),
        probabilities=torch.full((rows,), 0.5),
        class_names=[f"c{r}" for r in range(rows)],
        sources=[f"{r}.png" for r in range(rows)],
        display=pixels if display else None,
        seconds=0.01,
        target="top1",
    )


def _contents(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_failure_halfway_leaves_the_old_folder_intact(tmp_path, monkeypatch):
    folder = _explanation(3).save(tmp_path / "out")
    before = _contents(folder)
    calls = []

    def fail_on_second_png(array, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save_png(array, path)

    real_save_png = convlens.render.save_png
    monkeypatch.setattr(convlens.render, "save_png", fail_on_second_png)
    with pytest.raises(OSError, match="disk full"):
        _explanation(2, "saliency").save(folder)
    assert len(calls) == 2  # it did fail midway: maps.npy and one overlay were written
    assert _contents(folder) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left


def test_failure_on_a_new_folder_leaves_nothing(tmp_path):
    broken = _explanation(2)
    broken = Explanation(**(broken.__dict__ | {"display": np.zeros((2, 4, 4), np.uint8)}))
    with pytest.raises(ConvlensError):  # no colour axis: the overlay fails
        broken.save(tmp_path / "new" / "out")
    assert list((tmp_path / "new").iterdir()) == []


def test_saving_again_replaces_the_whole_folder(tmp_path):
    folder = _explanation(3).save(tmp_path / "out")
    _explanation(1, "saliency").save(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [LEDGER, "maps.npy", "manifest.json", *manifest["overlays"]]
    )  # no stale overlays of the three-row save
    assert manifest["overlays"] == ["000_saliency.png"]
    assert np.load(folder / "maps.npy").shape == (1, 4, 4)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_folder_with_other_files_is_refused_untouched(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    (folder / "maps.npy").write_bytes(b"old")
    with pytest.raises(ConvlensError, match=r"notes\.txt.*new or empty folder"):
        _explanation(1).save(folder)
    assert _contents(folder) == {"maps.npy": b"old", "notes.txt": b"keep me"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (_explanation(1, display=False).save(empty) / "manifest.json").is_file()
