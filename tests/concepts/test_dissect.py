"""Network dissection: exact IoU on hand-built channels, the exact top-quantile level, the
sums over the data set, the random-weights control, user label maps, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convlens.cli import main
from convlens.concepts.dissect import (
    IouCounter,
    TopQuantile,
    dissect,
    random_weights,
    top_quantile,
)
from convlens.data.concept_masks import (
    Concept,
    LabelMapFolder,
    TensorConcepts,
    read_label_map,
)
from convlens.data.preprocess import Preprocess
from convlens.errors import DataError

CONCEPTS = (Concept("a", "label", 0, 0), Concept("b", "label", 0, 1), Concept("c", "label", 0, 2))


def _hand_built(count: int = 3, size: int = 12):
    """Images whose channel 0 is concept a's mask and channel 1 is a's mask plus extra
    pixels of concept c; label maps with a (value 0), b (1) and the rest c (2)."""
    maps = torch.full((count, 1, size, size), 2)
    maps[:, 0, 2:6, 2:6] = 0
    maps[:, 0, 7:10, 1:11] = 1
    maps[1, 0, :, :] = torch.where(maps[1, 0] == 0, 2, maps[1, 0])  # image 1 holds no a
    maps[1, 0, 0:3, 8:12] = 0
    images = torch.zeros(count, 3, size, size)
    images[:, 0] = (maps[:, 0] == 0).float()
    images[:, 1] = images[:, 0]
    images[:, 1, 11, :] = 1.0  # 12 extra pixels of c per image in channel 1
    return TensorConcepts(images, maps, CONCEPTS), maps


def _two_channel_net() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.ReLU())
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].weight[0, 0] = 1.0
        net[0].weight[1, 1] = 1.0
    return net.train()


def test_a_channel_equal_to_a_concept_mask_has_iou_one(unchanged):
    data, maps = _hand_built()
    net = _two_channel_net()
    with unchanged(net, data.images):
        (result,) = dissect(net, "1", data, quantile=0.25, control=False, batch_size=2)
    a = (maps == 0).sum().item()
    # channels 0 and 1 are on at 11% and 19% of the pixels: the top-25% level is 0
    assert torch.equal(result.thresholds, torch.zeros(2))
    assert result.iou[0].tolist() == [1.0, 0.0, 0.0]
    assert result.iou[1, 0].item() == a / (a + 3 * 12)
    c = (maps == 2).sum().item()
    assert result.iou[1, 2].item() == 3 * 12 / (a + c)
    labels = result.channels
    assert (labels[0].concept, labels[0].iou) == ("a", 1.0)
    assert result.unique_detectors == 1 and len(result.detectors) == 2
    assert result.concept_pixels.tolist() == [(maps == v).sum().item() for v in range(3)]
    record = result.record()
    assert record["channels"][0] == {
        "channel": 0,
        "concept": "a",
        "group": "label",
        "iou": 1.0,
        "threshold": 0.0,
        "on_share": a / maps.numel(),
    }
    assert record["unique_detectors"] == 1 and "control" not in record


def test_top_quantile_leaves_that_share_above_it_and_streams_exactly():
    generator = torch.Generator().manual_seed(0)
    values = torch.stack([torch.randperm(1000, generator=generator).float() for _ in range(3)])
    thresholds = top_quantile(values, 0.005)
    assert thresholds.tolist() == [994.0] * 3  # floor(0.005 * 1000) = 5 values above
    assert ((values > thresholds[:, None]).sum(1) == 5).all()
    streamed = TopQuantile(0.005, 6)
    for chunk in values.view(3, 4, 250).unbind(1):  # four batches of 250 "pixels"
        streamed.update(chunk.reshape(1, 3, 10, 25))
    assert torch.equal(streamed.thresholds(), thresholds)
    sparse = torch.zeros(1, 1000)
    sparse[0, :3] = 1.0  # fewer than 5 positive values: the level is 0
    assert top_quantile(sparse).tolist() == [0.0]


def test_iou_sums_intersections_and_unions_over_the_data_set():
    generator = torch.Generator().manual_seed(1)
    activations = torch.rand(4, 3, 4, 4, generator=generator)
    maps = torch.randint(-1, 3, (4, 1, 8, 8), generator=generator)
    thresholds = torch.tensor([0.3, 0.5, 0.7])
    counter = IouCounter(CONCEPTS, 3)
    counter.update(activations[:3], thresholds, maps[:3])
    counter.update(activations[3:], thresholds, maps[3:])
    one_channel_at_a_time = IouCounter(CONCEPTS, 3, chunk_elements=1)
    one_channel_at_a_time.update(activations, thresholds, maps)
    assert torch.equal(one_channel_at_a_time.iou(), counter.iou())
    up = nn.functional.interpolate(activations, size=(8, 8), mode="bilinear")
    on = up > thresholds[None, :, None, None]
    for k in range(3):
        for v in range(3):
            mask = maps[:, 0] == v
            inter = (on[:, k] & mask).sum().item()
            union = (on[:, k] | mask).sum().item()
            assert counter.iou()[k, v].item() == pytest.approx(inter / union, abs=1e-12)


def test_random_weights_are_seeded_and_leave_the_model_alone():
    net = _two_channel_net()
    before = net[0].weight.clone()
    twin, kept = random_weights(net, seed=3)
    again, _ = random_weights(net, seed=3)
    other, _ = random_weights(net, seed=4)
    assert torch.equal(net[0].weight, before) and net.training
    assert torch.equal(twin[0].weight, again[0].weight)
    assert not torch.equal(twin[0].weight, before)
    assert not torch.equal(twin[0].weight, other[0].weight)
    assert kept == [] and not twin.training


def _label_folder(tmp_path, bad: bytes | None = None):
    folder = tmp_path / "labelled"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    (folder / "classes.txt").write_text("sky\ngrass\n")
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[4:] = 1
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[4:] = 200
    Image.fromarray(pixels).save(folder / "images" / "a.png")
    Image.fromarray(labels).save(folder / "labels" / "a.png")
    if bad is not None:
        Image.fromarray(pixels).save(folder / "images" / "b.png")
        (folder / "labels" / "b.png").write_bytes(bad)
    return folder


def test_label_maps_follow_the_model_resize(tmp_path):
    data = LabelMapFolder(_label_folder(tmp_path))
    preprocess = Preprocess(size=16, mode="stretch", mean=(0, 0, 0), std=(1, 1, 1))
    image, maps = data.read(0, preprocess)
    assert [c.name for c in data.concepts] == ["sky", "grass"]
    assert image.shape == (3, 16, 16) and maps.shape == (1, 16, 16)
    expected = torch.zeros(16, 16, dtype=torch.long)
    expected[8:] = 1
    assert torch.equal(maps[0], expected)


def test_a_bad_label_map_is_a_clear_error_and_a_skipped_pair(tmp_path):
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (8, 8)).save(rgb)
    with pytest.raises(DataError, match="one integer per pixel.*RGB"):
        read_label_map(rgb, 2)
    seven = tmp_path / "seven.png"
    Image.fromarray(np.full((8, 8), 7, dtype=np.uint8)).save(seven)
    with pytest.raises(DataError, match="label 7 but classes.txt names 2"):
        read_label_map(seven, 2)
    with pytest.raises(DataError, match="classes.txt: missing"):
        LabelMapFolder(tmp_path)
    data = LabelMapFolder(_label_folder(tmp_path, bad=b"not a png"))
    preprocess = Preprocess(size=8, mode="stretch")
    ((batch, skipped),) = list(data.batches(preprocess, batch_size=4))
    assert len(batch.images) == 1 and batch.sources[0].endswith("a.png")
    assert len(skipped) == 1 and "not a readable PNG label map" in skipped[0][1]


def test_cli_writes_dissect_json_for_the_model_and_the_control(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["dissect", "--model", "synthetic-scenes", "--layer", "features.5"]
    assert main([*args, "--data", "scenes-test:2", "--out", str(out)]) == 0
    document = json.loads((out / "features.5" / "dissect.json").read_text())
    assert len(document["channels"]) == 32 and document["weights"] == "trained"
    assert set(document["channels"][0]) >= {"channel", "concept", "iou"}
    assert isinstance(document["unique_detectors"], int) and document["images"] == 2
    assert document["control"]["weights"] == "random" and document["control"]["seed"] == 0
    assert "features.5  random" in capsys.readouterr().out
    both = ["--data", "scenes:2", "--label-maps", str(tmp_path), "--out", str(out)]
    assert main([*args, *both]) == 2  # a usage error
    assert "not both" in capsys.readouterr().err
