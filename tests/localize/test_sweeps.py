"""The vectorised sweeps (one scipy labelling for a stack of masks, the mask IoU of every
threshold from one normalisation) against a direct one-mask-at-a-time reference written
here, on random maps of several kinds: the results must be identical, not just close."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from convlens.localize import (
    maps_to_boxes,
    mask_iou,
    max_box_acc,
    pointing_game,
    pointing_points,
    threshold_maps,
)
from convlens.localize.boxes import stacked_component_boxes
from convlens.localize.masks import connectivity_structure, mask_iou_sweep
from convlens.localize.metrics import (
    DEFAULT_THRESHOLDS,
    DEFAULT_THRESHOLDS_V2,
    max_box_acc_v1_v2,
)
from convlens.maps import normalize_maps, resize_maps


def reference_boxes(mask: np.ndarray, mode: str, connectivity: int) -> np.ndarray:
    """Boxes of one mask's components, largest first (ties: lower label), by
    ``ndimage.label`` + ``find_objects`` on that mask alone."""
    structure = connectivity_structure(connectivity)
    labels, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return np.zeros((0, 4))
    areas = np.bincount(labels.ravel())[1:]
    order = sorted(range(count), key=lambda i: (-areas[i], i))
    order = order[:1] if mode == "largest" else order
    found = ndimage.find_objects(labels)
    return np.array(
        [[found[i][1].start, found[i][0].start, found[i][1].stop, found[i][0].stop] for i in order],
        dtype=np.float64,
    )


def reference_best_iou(maps, gts, taus, mode, connectivity) -> torch.Tensor:
    """``Tensor[N, T]``: per map and threshold, the best IoU of the thresholded map's boxes
    with the map's ground-truth boxes (0 for a constant map or an empty mask)."""
    normalized = normalize_maps(maps).numpy()
    best = np.zeros((len(maps), len(taus)))
    for n in range(len(maps)):
        if float(maps[n].max()) == float(maps[n].min()):
            continue
        gt = gts[n].double().numpy()
        for t, tau in enumerate(taus.tolist()):
            for box in reference_boxes(normalized[n] >= tau, mode, connectivity):
                x0, y0 = np.maximum(box[:2], gt[:, :2]).T
                x1, y1 = np.minimum(box[2:], gt[:, 2:]).T
                inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
                area_b = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
                area_a = (box[2] - box[0]) * (box[3] - box[1])
                best[n, t] = max(best[n, t], (inter / (area_a + area_b - inter)).max())
    return torch.from_numpy(best).float()


def random_maps(seed: int, height: int = 24, width: int = 20) -> torch.Tensor:
    """Maps of several kinds: pixel noise (many small components), smooth blobs, coarse
    maps with large plateaus and ties (upsampled 4x5 grids, values rounded), a constant map
    and an all-zero map."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(3, height, width, generator=gen)
    smooth = resize_maps(torch.rand(3, 6, 5, generator=gen), (height, width))
    coarse = (resize_maps(torch.rand(3, 4, 5, generator=gen), (height, width)) * 4).round()
    flat = torch.stack([torch.full((height, width), 0.7), torch.zeros(height, width)])
    return torch.cat([noise, smooth, coarse, flat])


def random_boxes(count: int, seed: int, height: int = 24, width: int = 20) -> list:
    """1-3 random ground-truth boxes per map, inside the image."""
    gen = np.random.default_rng(seed)
    boxes = []
    for _ in range(count):
        k = int(gen.integers(1, 4))
        x0, y0 = gen.integers(0, width - 1, k), gen.integers(0, height - 1, k)
        x1 = x0 + 1 + gen.integers(0, width - x0, k)
        y1 = y0 + 1 + gen.integers(0, height - y0, k)
        boxes.append(torch.tensor(np.stack([x0, y0, x1, y1], 1), dtype=torch.float32))
    return boxes


@pytest.mark.parametrize("connectivity", [4, 8])
def test_stacked_labelling_gives_each_masks_own_components(connectivity):
    structure = connectivity_structure(connectivity)
    masks = normalize_maps(random_maps(0)).numpy()[:, None] >= np.array([0.0, 0.3, 0.8])[
        :, None, None
    ].astype(np.float32)
    masks = masks.reshape(-1, *masks.shape[2:])
    boxes, areas, owner = stacked_component_boxes(masks, structure)
    assert np.all(np.diff(owner) >= 0)  # grouped by mask, in mask order
    for s, mask in enumerate(masks):
        mine = owner == s
        labels, count = ndimage.label(mask, structure=structure)
        assert mine.sum() == count
        found = ndimage.find_objects(labels)
        expected = [[f[1].start, f[0].start, f[1].stop, f[0].stop] for f in found]
        assert boxes[mine].tolist() == expected  # label order within the mask
        assert areas[mine].tolist() == np.bincount(labels.ravel())[1:].tolist()


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("version", [1, 2])
def test_max_box_acc_sweep_equals_the_one_mask_at_a_time_reference(version, connectivity):
    maps = torch.cat([random_maps(1), random_maps(2)])
    gts = random_boxes(len(maps), seed=version)
    taus = torch.tensor([0.0, 0.05, 0.2, 0.25, 0.5, 0.75, 0.99, 1.0])
    result = max_box_acc(
        maps, gts, thresholds=taus, version=version, connectivity=connectivity, image_size=(24, 20)
    )
    mode = "largest" if version == 1 else "all"
    expected = reference_best_iou(maps, gts, taus, mode, connectivity)
    assert torch.equal(result["best_iou"], expected)
    assert bool((expected > 0).any()) and bool((expected[-2:] == 0).all())  # flat maps: 0


def test_both_versions_from_one_sweep_equal_separate_calls():
    assert torch.equal(DEFAULT_THRESHOLDS_V2[1:], DEFAULT_THRESHOLDS)
    maps = random_maps(3)
    gts = random_boxes(len(maps), seed=3)
    both = max_box_acc_v1_v2(maps, gts, image_size=(24, 20))
    for version in (1, 2):
        alone = max_box_acc(maps, gts, version=version, image_size=(24, 20))
        assert torch.equal(both[version]["best_iou"], alone["best_iou"])
        assert torch.equal(both[version]["box_acc"], alone["box_acc"])
        assert both[version]["maxboxacc"] == alone["maxboxacc"]
        assert both[version]["best_threshold"] == alone["best_threshold"]


@pytest.mark.parametrize("mode", ["largest", "all"])
def test_maps_to_boxes_equals_the_one_mask_at_a_time_reference(mode):
    maps = random_maps(4)
    for fraction in (0.2, 0.5):
        masks = threshold_maps(maps, fraction).numpy()
        for mask, boxes in zip(masks, maps_to_boxes(maps, fraction, mode), strict=True):
            expected = torch.from_numpy(reference_boxes(mask, mode, 8)).float()
            assert torch.equal(boxes, expected)


def test_mask_iou_sweep_equals_thresholding_at_each_fraction():
    maps = random_maps(5)
    gen = torch.Generator().manual_seed(5)
    masks = torch.rand(len(maps), 24, 20, generator=gen) > 0.7
    fractions = (0.1, 0.5, 0.9)
    sweep = mask_iou_sweep(maps, masks, fractions)
    for t, fraction in enumerate(fractions):
        assert torch.equal(sweep[t], mask_iou(threshold_maps(maps, fraction), masks))
    assert bool((sweep[:, -2:] == 0).all())  # constant maps give empty masks


def reference_points(maps: torch.Tensor) -> torch.Tensor:
    """Each map's maximum; among tied maxima the one nearest their centroid (then raster)."""
    points = []
    for single in maps:
        rows, cols = torch.nonzero(single == single.max(), as_tuple=True)
        distance = (rows.float() - rows.float().mean()) ** 2 + (
            cols.float() - cols.float().mean()
        ) ** 2
        pick = int(torch.argmin(distance))
        points.append([int(rows[pick]), int(cols[pick])])
    return torch.tensor(points)


def test_pointing_equals_the_distance_transform_reference():
    maps = torch.cat([random_maps(6), random_maps(7)])
    assert torch.equal(pointing_points(maps), reference_points(maps))
    gen = torch.Generator().manual_seed(6)
    masks = torch.rand(len(maps), 24, 20, generator=gen) > 0.97
    masks[:, 0, 0] = True  # none empty
    points = reference_points(maps).tolist()
    for tolerance in (0.0, 1.0, 2.5, 4.3):
        expected = [
            ndimage.distance_transform_edt(~mask)[row, col] <= tolerance + 1e-9
            for mask, (row, col) in zip(masks.numpy(), points, strict=True)
        ]
        assert pointing_game(maps, masks, tolerance).tolist() == expected
