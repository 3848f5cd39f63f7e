"""The multi-object scenes: determinism, label map vs masks/boxes, distinct classes, and no
colour statistic that separates objects from background."""

from __future__ import annotations

import pytest
import torch

from convlens.data.scenes import (
    MAX_OBJECTS,
    MIN_VISIBLE,
    SCENE_CLASSES,
    SyntheticScenes,
    make_scenes,
)
from convlens.errors import DataError
from convlens.maps import mask_box


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(96, seed=11)


def test_scene_is_a_pure_function_of_seed_and_index():
    a = SyntheticScenes(10, seed=3)[6]
    b = SyntheticScenes(4, seed=3, start=5)[1]
    assert torch.equal(a.image, b.image) and torch.equal(a.label_map, b.label_map)
    assert not torch.equal(a.image, SyntheticScenes(10, seed=4)[6].image)
    batch = SyntheticScenes(3, seed=3, start=5).batch()
    assert torch.equal(batch.images[1], a.image) and int(batch.indices[1]) == 6


def test_label_map_masks_boxes_and_labels_agree(scenes):
    classes = len(SCENE_CLASSES)
    assert scenes.label_maps.dtype == torch.long
    assert int(scenes.label_maps.min()) >= 0 and int(scenes.label_maps.max()) <= classes
    for b in range(len(scenes)):
        for k in range(classes):
            mask = scenes.masks[b, k]
            assert torch.equal(mask, scenes.label_maps[b] == k + 1)
            assert bool(mask.any()) == bool(scenes.labels[b, k] > 0)
            if mask.any():
                assert torch.equal(scenes.boxes[b, k], mask_box(mask))
            else:
                assert torch.equal(scenes.boxes[b, k], torch.zeros(4))
    # masks of different classes never share a pixel; background is what no mask covers
    assert int(scenes.masks.sum(1).max()) <= 1
    assert torch.equal(scenes.masks.any(1), scenes.label_maps > 0)


def test_one_to_four_distinct_classes_and_every_count_occurs(scenes):
    counts = scenes.labels.sum(1)
    assert set(counts.long().tolist()) == set(range(1, MAX_OBJECTS + 1))
    assert torch.equal(scenes.present, scenes.labels > 0)
    item = SyntheticScenes(5, seed=2)[3]
    assert len(set(item.classes.tolist())) == len(item.classes)
    assert torch.equal(item.masks, torch.stack([item.label_map == k + 1 for k in item.classes]))


def test_occlusion_happens_but_objects_stay_mostly_visible():
    """Visible masks lie inside the silhouettes; many objects are partly hidden (by another
    object or the bar), and (up to the rare scene where no placement fit) each keeps at
    least MIN_VISIBLE of its silhouette."""
    occluded, too_hidden, total = 0, 0, 0
    for item in SyntheticScenes(40, seed=8):
        assert bool((item.masks <= item.silhouettes).all())
        visible = item.masks.flatten(1).sum(1) / item.silhouettes.flatten(1).sum(1)
        occluded += int((visible < 1).sum())
        too_hidden += int((visible < MIN_VISIBLE).sum())
        total += len(visible)
    assert occluded > total / 5 and too_hidden <= total / 50


def test_no_colour_statistic_separates_objects_from_background():
    """Over many scenes, mean colour (and its spread) inside object masks equals that
    outside them within sampling error: object and background fills share one distribution."""
    batch = make_scenes(120, seed=5)
    objects = batch.label_maps > 0
    pairs = list(zip(batch.images, objects, strict=True))
    inside = torch.stack([img[:, m].mean(1) for img, m in pairs])
    outside = torch.stack([img[:, ~m].mean(1) for img, m in pairs])
    difference = inside - outside  # [N, 3] paired per image
    standard_error = difference.std(0) / len(batch) ** 0.5
    assert bool((difference.mean(0).abs() < 3 * standard_error).all())
    assert bool((difference.mean(0).abs() < 0.1).all())
    spread_in = torch.stack([img[:, m].std(1) for img, m in pairs])
    spread_out = torch.stack([img[:, ~m].std(1) for img, m in pairs])
    assert float((spread_in.mean() - spread_out.mean()).abs()) < 0.05


def test_pixels_quantised_and_bad_arguments_refused():
    item = SyntheticScenes(1, seed=0)[0]
    assert torch.equal((item.image * 255).round() / 255, item.image)
    with pytest.raises(DataError, match="size"):
        SyntheticScenes(3, size=16)
    with pytest.raises(DataError, match="length"):
        SyntheticScenes(-1)
    with pytest.raises(IndexError):
        SyntheticScenes(3)[3]
