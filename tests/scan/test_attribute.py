"""``attribute``: a dataset's maps in float16 shards with an index; the maps equal `explain`
on the same images, a stopped run resumes to the uninterrupted files, and two torchrun
processes give the maps of one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers.networks import small_convnet
from tests.helpers.scans import Stop, stop_after
from tests.helpers.torchrun import TWO_PROCESS_COMMANDS

from convlens.attribution import explain
from convlens.cli import main
from convlens.data.datasets import open_dataset
from convlens.data.preprocess import Preprocess
from convlens.errors import DataError, TargetError
from convlens.models.loading import LoadedModel
from convlens.scan.attribute import attribute_dataset, load_attributions, shrink_maps

pytestmark = pytest.mark.usefixtures("one_thread")
PREPROCESS = Preprocess(size=16, mode="stretch", mean=(0.5,) * 3, std=(0.5,) * 3)
RUN = dict(size=8, batch_size=2, shard_rows=3, save_every=1)


def _model() -> LoadedModel:
    net = small_convnet()
    net[7] = torch.nn.Linear(4, 6)  # the six shape classes (seeded by small_convnet)
    return LoadedModel(net, "small", PREPROCESS)


def test_maps_and_index_equal_explain_on_the_same_images(tmp_path, unchanged):
    model = _model()
    with unchanged(model.module):
        index = attribute_dataset(model, "shapes:5", tmp_path, "gradcam", target="label", **RUN)
    stored = load_attributions(tmp_path)
    dataset = open_dataset("shapes:5", PREPROCESS)
    images = torch.stack([dataset[i][1] for i in range(5)])
    labels = [dataset.label(i) for i in range(5)]
    reference = explain(model.module, images, "gradcam", labels)
    expected = shrink_maps(reference.maps, 8)
    assert stored.maps.shape == (5, 8, 8)
    # float16 keeps 11 significant bits of each map divided by its largest absolute value
    scale = expected.flatten(1).abs().amax(1)[:, None, None]
    assert bool(((stored.maps - expected).abs() <= 5e-4 * scale).all())
    on_disk = json.loads((tmp_path / "index.json").read_text())
    assert on_disk == index
    assert [r["source"] for r in index["rows"]] == [f"shapes:{i}" for i in range(5)]
    assert [r["class"] for r in index["rows"]] == labels == [r["label"] for r in index["rows"]]
    assert [r["score"] for r in index["rows"]] == pytest.approx(reference.scores.tolist())
    # a shard is written once it holds shard_rows=3 maps: after the 2nd batch, then the rest
    assert index["shards"] == ["r0of1-00000.npy", "r0of1-00001.npy"]
    assert [r["row"] for r in index["rows"]] == [0, 1, 2, 3, 0]
    assert (index["count"], index["size"], index["target"]) == (5, 8, "label")
    # top1 explains the predicted class
    top = attribute_dataset(model, "shapes:5", tmp_path / "top", "gradcam", **RUN)
    predicted = model.module(images).argmax(1).tolist()
    assert [r["class"] for r in top["rows"]] == predicted


def test_area_shrinking_keeps_every_pixel():
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 1] = 4.0  # one pixel a bilinear 2x shrink would skip
    assert torch.equal(shrink_maps(maps, 2), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and ".state" not in p.parts
    }


def test_a_stopped_run_resumes_to_the_uninterrupted_files(tmp_path):
    model = _model()
    whole, part = tmp_path / "whole", tmp_path / "part"
    saved = whole / ".state" / "attribute"  # the same run, saving its state, never stopped
    attribute_dataset(model, "shapes:9", whole, "saliency", 1, checkpoint=saved, **RUN)
    state = part / ".state" / "attribute"
    with pytest.raises(Stop):
        attribute_dataset(
            model, "shapes:9", part, "saliency", 1, checkpoint=state, on_batch=stop_after(3), **RUN
        )
    assert not (part / "index.json").exists()
    seen: list[int] = []
    attribute_dataset(
        model, "shapes:9", part, "saliency", 1, checkpoint=state, resume=True,
        on_batch=seen.append, **RUN,
    )  # fmt: skip
    assert seen == [4, 5]  # batches 1-3 were not run again
    assert _files(part) == _files(whole)
    with pytest.raises(DataError, match=r"options changed \(size 8 -> 6\)"):
        attribute_dataset(
            model, "shapes:9", part, "saliency", 1, checkpoint=state, resume=True,
            **RUN | {"size": 6},
        )  # fmt: skip


def test_targets_that_give_several_maps_or_need_labels_are_refused(tmp_path):
    with pytest.raises(TargetError, match="one map per image"):
        attribute_dataset(_model(), "shapes:2", tmp_path, "gradcam", "top3", **RUN)
    folder = tmp_path / "plain"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16)).save(folder / "a.png")
    with pytest.raises(TargetError, match="needs a dataset with labels"):
        attribute_dataset(_model(), folder, tmp_path / "o", "gradcam", "label", **RUN)


@pytest.mark.slow
def test_two_process_torchrun_equals_one_process(tmp_path, two_process_outputs):
    """``attribute`` under ``torchrun --nproc_per_node 2`` (the suite's one launch,
    `tests.helpers.torchrun`) gives the maps of one process."""
    args = TWO_PROCESS_COMMANDS["attribute"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    one = load_attributions(tmp_path / "one")
    two = load_attributions(two_process_outputs / "attribute")
    assert two.index["shards"] == ["r0of2-00000.npy", "r1of2-00000.npy"]
    same = ("source", "label", "class", "class_name")
    for a, b in zip(one.rows, two.rows, strict=True):
        assert {k: a[k] for k in same} == {k: b[k] for k in same}
        assert a["score"] == pytest.approx(b["score"], rel=1e-5)
    # batches of other images sum in another order: float rounding, then float16 storage
    tolerance = 1e-3 * float(one.maps.abs().max())
    assert np.allclose(one.maps.numpy(), two.maps.numpy(), rtol=2e-3, atol=tolerance)
