"""Localisation accuracy, MaxBoxAcc (V1/V2) and the pointing game on hand-made cases."""

from __future__ import annotations

import pytest
import torch

from convlens.errors import MetricError
from convlens.localize import (
    localization_accuracy,
    localization_hits,
    max_box_acc,
    pointing_game,
    pointing_points,
)


def nested_map(outer: float) -> torch.Tensor:
    """10x10: value 1 on rows/cols 0-3 (box 0,0,4,4), ``outer`` on the rest of rows/cols
    0-7 (box 0,0,8,8), 0 elsewhere."""
    m = torch.zeros(10, 10)
    m[:8, :8] = outer
    m[:4, :4] = 1.0
    return m


def test_localization_accuracy_needs_class_and_overlap():
    gt = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 3)
    pred = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 8.0, 8.0]])
    size = (10, 10)
    hits = localization_hits(
        pred, torch.tensor([1, 2, 1]), gt, torch.tensor([1, 1, 1]), image_size=size
    )
    assert hits.tolist() == [True, False, False]  # wrong class; IoU 16/64 < 0.5
    accuracy = localization_accuracy(pred, [1, 2, 1], gt, [1, 1, 1], image_size=size)
    assert accuracy == pytest.approx(1 / 3)
    assert localization_accuracy(pred, [1, 1, 1], gt, [1, 1, 1], 0.25, image_size=size) == 1.0


def test_localization_with_several_boxes_and_no_box():
    gt = [torch.tensor([[0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 9.0, 9.0]]), torch.tensor([0, 0, 2, 2])]
    pred = [torch.tensor([[5.0, 5.0, 9.0, 9.0]]), torch.zeros(0, 4)]
    assert localization_hits(pred, [0, 0], gt, [0, 0], image_size=(9, 9)).tolist() == [
        True,
        False,
    ]


def test_localization_rejects_boxes_outside_the_image():
    inside = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    far = torch.tensor([[500.0, 500.0, 600.0, 600.0]])
    with pytest.raises(MetricError, match="ground-truth boxes of image 0.*outside the 10x10"):
        localization_hits(inside, [0], far, [0], image_size=(10, 10))
    with pytest.raises(MetricError, match="predicted boxes of image 0.*outside the 10x10"):
        localization_accuracy(far, [0], inside, [0], image_size=(10, 10))
    # a box may end exactly at the border (x1, y1 exclusive)
    edge = torch.tensor([[6.0, 6.0, 10.0, 10.0]])
    assert localization_hits(edge, [0], edge, [0], image_size=(10, 10)).tolist() == [True]


def test_max_box_acc_v1_threshold_sweep():
    maps = torch.stack([nested_map(0.5), nested_map(0.8), nested_map(0.5)])
    gt = torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 8.0, 8.0]])
    result = max_box_acc(maps, gt, thresholds=[0.3, 0.6, 0.9], image_size=(10, 10))
    # IoU per image and threshold: big box = 1 vs the 8x8 box, 16/64 vs the 4x4 box
    expected_iou = torch.tensor([[1.0, 0.25, 0.25], [0.25, 0.25, 1.0], [1.0, 0.25, 0.25]])
    assert torch.allclose(result["best_iou"], expected_iou)
    assert torch.allclose(result["box_acc"][:, 0], torch.tensor([2 / 3, 0.0, 1 / 3]))
    assert result["maxboxacc"] == pytest.approx(2 / 3)
    assert result["best_threshold"] == {0.5: pytest.approx(0.3)}
    assert result["version"] == 1


def test_max_box_acc_v2_uses_every_component_and_averages_deltas():
    two = torch.zeros(12, 12)
    two[:6, :6] = 1.0  # largest component, far from the object
    two[9:11, 9:11] = 1.0  # small component, exactly the object
    partial = torch.zeros(12, 12)
    partial[:4, :4] = 1.0  # IoU 16/40 = 0.4 with the object box
    gt = [torch.tensor([[9.0, 9.0, 11.0, 11.0]]), torch.tensor([[0.0, 0.0, 4.0, 10.0]])]
    size = (12, 12)
    v1 = max_box_acc(two[None], gt[:1], thresholds=[0.5], image_size=size)
    v2 = max_box_acc(two[None], gt[:1], thresholds=[0.5], version=2, image_size=size)
    assert v1["maxboxacc"] == 0.0 and v2["maxboxacc"] == 1.0
    v2_partial = max_box_acc(partial[None], gt[1:], thresholds=[0.5], version=2, image_size=size)
    assert v2_partial["per_iou"] == {0.3: 1.0, 0.5: 0.0, 0.7: 0.0}
    assert v2_partial["maxboxacc"] == pytest.approx(1 / 3)


def test_max_box_acc_default_sweep_and_constant_map():
    maps = torch.stack([nested_map(0.5), torch.zeros(10, 10)])
    gt = torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 8.0, 8.0]])
    result = max_box_acc(maps, gt, image_size=(10, 10))
    assert len(result["thresholds"]) == 99
    assert result["maxboxacc"] == 0.5  # the constant map never localises
    assert bool((result["best_iou"][1] == 0).all())


def test_max_box_acc_bad_inputs():
    maps = nested_map(0.5)[None]
    box = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    size = (10, 10)
    with pytest.raises(MetricError, match="outside"):
        max_box_acc(maps, torch.tensor([[0.0, 0.0, 12.0, 8.0]]), image_size=size)
    with pytest.raises(MetricError, match="one Tensor"):
        max_box_acc(maps, torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 2), image_size=size)
    with pytest.raises(MetricError, match="thresholds"):
        max_box_acc(maps, box, thresholds=[-0.1, 0.5], image_size=size)
    with pytest.raises(MetricError, match="version"):
        max_box_acc(maps, box, version=3, image_size=size)
    with pytest.raises(MetricError, match="connectivity must be 4"):
        max_box_acc(maps, box, connectivity=5, image_size=size)


def test_max_box_acc_v2_sweep_includes_zero_the_whole_image():
    """At tau = 0 every pixel is kept, so V2's default sweep (0, 0.01, ...) finds a box equal
    to the whole image; V1's (from 0.01) does not."""
    maps = torch.zeros(1, 10, 10)
    maps[0, 3:6, 3:6] = 1.0  # a blob inside a 10 x 10 image, zero elsewhere
    whole = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    v2 = max_box_acc(maps, whole, version=2, image_size=(10, 10))
    assert v2["maxboxacc"] == 1.0 and float(v2["thresholds"][0]) == 0.0
    assert set(v2["best_threshold"].values()) == {0.0}
    v1 = max_box_acc(maps, whole, version=1, image_size=(10, 10))
    assert v1["maxboxacc"] < 1.0


def test_max_box_acc_rejects_a_map_at_feature_resolution():
    """Boxes are in image pixels: a 10x10 map for a 40x40 image would be scored in the wrong
    coordinates (this box lies inside 10x10 too, so only the size check can catch it)."""
    with pytest.raises(MetricError, match=r"maps are \(10, 10\) pixels .* 40x40 image.*upsample"):
        max_box_acc(
            nested_map(0.5)[None], torch.tensor([[0.0, 0.0, 8.0, 8.0]]), image_size=(40, 40)
        )


def test_max_box_acc_connectivity_changes_the_components():
    """Two 2x2 blocks touching at a corner: one component with 8-connectivity (box 4x4,
    IoU 1 with the object) and two with 4-connectivity (largest box 2x2, IoU 4/16)."""
    m = torch.zeros(1, 6, 6)
    m[0, 0:2, 0:2] = 1.0
    m[0, 2:4, 2:4] = 1.0
    gt = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    eight = max_box_acc(m, gt, thresholds=[0.5], connectivity=8, image_size=(6, 6))
    four = max_box_acc(m, gt, thresholds=[0.5], connectivity=4, image_size=(6, 6))
    assert eight["best_iou"].tolist() == [[1.0]]
    assert four["best_iou"].tolist() == [[0.25]]


def test_max_box_acc_v2_with_several_ground_truth_boxes():
    """Two objects per image; every component is matched against every object.

    Image 0: components exactly on both objects: best IoU 1.
    Image 1: one component covering object A (4x4 box) plus one column: IoU 16/20 = 0.8,
    and one 2x2 component inside object B (4x4): IoU 4/16 = 0.25; best 0.8.
    Image 2: one component half on object A: IoU 8/24 = 1/3; best 1/3."""
    objects = torch.tensor([[0.0, 0.0, 4.0, 4.0], [8.0, 8.0, 12.0, 12.0]])
    maps = torch.zeros(3, 12, 12)
    maps[0, 0:4, 0:4] = 1.0
    maps[0, 8:12, 8:12] = 1.0
    maps[1, 0:4, 0:5] = 1.0
    maps[1, 9:11, 9:11] = 1.0
    maps[2, 0:4, 2:6] = 1.0
    result = max_box_acc(maps, [objects] * 3, thresholds=[0.5], version=2, image_size=(12, 12))
    assert result["best_iou"][:, 0].tolist() == pytest.approx([1.0, 0.8, 1 / 3])
    assert result["per_iou"] == {0.3: 1.0, 0.5: pytest.approx(2 / 3), 0.7: pytest.approx(2 / 3)}
    assert result["maxboxacc"] == pytest.approx((1.0 + 2 / 3 + 2 / 3) / 3)


def one_pixel_object() -> torch.Tensor:
    mask = torch.zeros(1, 7, 7, dtype=torch.bool)
    mask[0, 3, 3] = True
    return mask


@pytest.mark.parametrize(
    ("peak", "tolerance", "hit"),
    [
        ((3, 3), 0, True),  # on the object
        ((3, 4), 0, False),  # one pixel off
        ((3, 4), 1, True),
        ((4, 4), 1, False),  # diagonal: sqrt(2) pixels away
        ((4, 4), 1.5, True),
        ((0, 0), 4, False),  # sqrt(18) = 4.24 pixels away
    ],
)
def test_pointing_game_tolerance(peak, tolerance, hit):
    maps = torch.zeros(1, 7, 7)
    maps[0, peak[0], peak[1]] = 1.0
    assert pointing_game(maps, one_pixel_object(), tolerance=tolerance).tolist() == [hit]


def test_pointing_ties_point_at_the_middle():
    plateau = torch.zeros(7, 7)
    plateau[0, 0:5] = 2.0
    constant = torch.full((7, 7), 0.3)
    points = pointing_points(torch.stack([plateau, constant]))
    assert points.tolist() == [[0, 2], [3, 3]]
    corner = torch.zeros(1, 7, 7, dtype=torch.bool)
    corner[0, 0, 0] = True
    assert pointing_game(constant[None], one_pixel_object(), 0).tolist() == [True]
    assert pointing_game(constant[None], corner, 0).tolist() == [False]


def test_pointing_game_bad_inputs():
    maps = torch.rand(1, 7, 7)
    with pytest.raises(MetricError, match="empty"):
        pointing_game(maps, torch.zeros(1, 7, 7, dtype=torch.bool))
    with pytest.raises(MetricError, match="resize"):
        pointing_game(torch.rand(1, 8, 7), one_pixel_object())
    nan = maps.clone()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(MetricError, match="NaN"):
        pointing_game(nan, one_pixel_object())
    with pytest.raises(MetricError, match="tolerance"):
        pointing_game(maps, one_pixel_object(), tolerance=-1)


@pytest.mark.parametrize("version", [1, 2])
def test_max_box_acc_agrees_with_maps_to_boxes_and_box_iou(version):
    """The fast numpy sweep equals thresholding with the public functions, per threshold."""
    from convlens.localize import box_iou, maps_to_boxes
    from convlens.maps import resize_maps

    maps = resize_maps(torch.rand(4, 5, 5, generator=torch.Generator().manual_seed(2)), (40, 40))
    gt = [torch.tensor([[5.0, 8.0, 30.0, 36.0]]), torch.tensor([[0.0, 0.0, 12.0, 12.0]])] * 2
    thresholds = [0.1, 0.35, 0.6, 0.85]
    result = max_box_acc(maps, gt, thresholds=thresholds, version=version, image_size=(40, 40))
    mode = "largest" if version == 1 else "all"
    for t, tau in enumerate(thresholds):
        for n, boxes in enumerate(maps_to_boxes(maps, tau, mode=mode)):
            expected = float(box_iou(boxes, gt[n]).max()) if len(boxes) else 0.0
            assert float(result["best_iou"][n, t]) == pytest.approx(expected, abs=1e-6)
