"""Maps to masks to boxes, and box IoU, on hand-labelled cases."""

from __future__ import annotations

import pytest
import torch

from convlens.errors import ConvlensError, MetricError
from convlens.localize import (
    box_iou,
    check_boxes,
    connected_components,
    maps_to_boxes,
    mask_to_boxes,
    resize_maps,
    threshold_maps,
)
from convlens.maps import mask_box


def two_blobs() -> torch.Tensor:
    """A 10x12 map with a 2x3 blob (rows 2-3, cols 3-5, value 1.0) and a single pixel
    touching nothing (row 7, col 9, value 0.5); everything else 0.1."""
    m = torch.full((10, 12), 0.1)
    m[2:4, 3:6] = 1.0
    m[7, 9] = 0.5
    return m


def test_threshold_is_a_fraction_of_the_range():
    m = torch.tensor([[0.0, 0.1, 0.2, 0.3, 1.0]])
    assert threshold_maps(m, 0.2).tolist() == [[[False, False, True, True, True]]]
    # min-max normalisation: with a minimum of 0.5 the threshold is 0.5 + 0.2 * 0.5 = 0.6
    shifted = torch.tensor([[0.5, 0.55, 0.6, 0.9, 1.0]])
    assert threshold_maps(shifted, 0.2).tolist() == [[[False, False, True, True, True]]]


def test_constant_and_zero_maps_give_empty_masks():
    masks = threshold_maps(torch.stack([torch.zeros(4, 4), torch.full((4, 4), 3.0)]))
    assert not bool(masks.any())
    assert [len(b) for b in maps_to_boxes(torch.zeros(2, 4, 4))] == [0, 0]


def test_connected_components_connectivity():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = mask[1, 1] = mask[3, 3] = True  # (0,0)-(1,1) touch only at a corner
    assert connected_components(mask, 8).max() == 2
    labels4 = connected_components(mask, 4)
    assert labels4.max() == 3
    assert labels4[0, 0] == 1 and labels4[1, 1] == 2 and labels4[3, 3] == 3


def test_boxes_of_hand_labelled_two_component_map():
    # threshold 0.2 of range [0.1, 1.0] is 0.28: both blobs survive, the background not
    all_boxes = maps_to_boxes(two_blobs(), fraction=0.2, mode="all")[0]
    assert all_boxes.tolist() == [[3.0, 2.0, 6.0, 4.0], [9.0, 7.0, 10.0, 8.0]]
    largest = maps_to_boxes(two_blobs(), fraction=0.2, mode="largest")[0]
    assert largest.tolist() == [[3.0, 2.0, 6.0, 4.0]]
    # at 0.5 of the range (0.55) the single pixel (0.5) drops out
    assert maps_to_boxes(two_blobs(), fraction=0.5, mode="all")[0].tolist() == [
        [3.0, 2.0, 6.0, 4.0]
    ]


def test_all_mode_orders_by_size_then_raster():
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[0, 0] = True  # area 1, first in raster order
    mask[4:6, 4:6] = True  # area 4
    mask[0, 4] = True  # area 1
    boxes = mask_to_boxes(mask, "all")
    assert boxes.tolist() == [[4.0, 4.0, 6.0, 6.0], [0.0, 0.0, 1.0, 1.0], [4.0, 0.0, 5.0, 1.0]]


def test_upsampling_is_explicit():
    coarse = torch.zeros(1, 2, 2)
    coarse[0, 0, 0] = 1.0
    nearest = maps_to_boxes(coarse, 0.2, upsample_to=(8, 8), interpolation="nearest")[0]
    assert nearest.tolist() == [[0.0, 0.0, 4.0, 4.0]]
    bilinear = resize_maps(coarse, (8, 8), "bilinear")
    # bilinear spreads the peak past the cell: the 20% box is larger than the cell
    box = maps_to_boxes(coarse, 0.2, upsample_to=(8, 8), interpolation="bilinear")[0][0]
    assert box[0] == 0 and box[1] == 0 and box[2] > 4 and box[3] > 4
    assert bilinear[0, 0, 0] == 1.0 and bilinear[0, 7, 7] == 0.0
    with pytest.raises(MetricError, match="interpolation"):
        maps_to_boxes(coarse, upsample_to=(8, 8), interpolation="cubic")


def test_box_iou_golden_values():
    a = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor(
        [
            [0.0, 0.0, 4.0, 4.0],  # same: 1
            [1.0, 1.0, 3.0, 3.0],  # box inside a box: 4 / 16
            [2.0, 0.0, 6.0, 4.0],  # half overlap: 8 / 24
            [4.0, 0.0, 8.0, 4.0],  # touching edges, exclusive x1: 0
            [10.0, 10.0, 11.0, 12.0],  # far: 0
        ]
    )
    iou = box_iou(a, b)
    assert iou.shape == (1, 5)
    assert torch.allclose(iou[0], torch.tensor([1.0, 0.25, 1 / 3, 0.0, 0.0]))
    assert torch.allclose(box_iou(b, a), iou.T)


def test_bad_boxes_raise():
    with pytest.raises(MetricError, match="x1 > x0"):
        box_iou(torch.tensor([[3.0, 0.0, 3.0, 2.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    with pytest.raises(MetricError, match="outside"):
        check_boxes(torch.tensor([[0.0, 0.0, 11.0, 5.0]]), image_size=(10, 10))
    with pytest.raises(MetricError, match="outside"):
        check_boxes(torch.tensor([[-1.0, 0.0, 3.0, 5.0]]), image_size=(10, 10))
    with pytest.raises(MetricError, match="NaN"):
        check_boxes(torch.tensor([[0.0, float("nan"), 3.0, 5.0]]))
    with pytest.raises(MetricError, match=r"Tensor\[k, 4\]"):
        check_boxes(torch.zeros(2, 3))
    # exactly the image is allowed (x1, y1 exclusive)
    assert check_boxes(torch.tensor([0.0, 0.0, 10.0, 10.0]), image_size=(10, 10)).shape == (1, 4)


def test_bad_maps_raise():
    nan_map = torch.zeros(1, 4, 4)
    nan_map[0, 1, 1] = float("nan")
    with pytest.raises(MetricError, match="NaN"):
        maps_to_boxes(nan_map)
    with pytest.raises(MetricError, match=r"Tensor\[N, H, W\]"):
        threshold_maps(torch.zeros(4))
    with pytest.raises(MetricError, match="fraction"):
        threshold_maps(torch.rand(1, 4, 4), 0.0)
    assert issubclass(MetricError, ConvlensError) and issubclass(MetricError, ValueError)


def test_input_map_not_modified():
    m = two_blobs()[None]
    before = m.clone()
    maps_to_boxes(m, upsample_to=(20, 24))
    assert torch.equal(m, before)


def test_mask_box_is_tight_around_every_pixel_exclusive_corners():
    mask = torch.zeros(8, 10, dtype=torch.bool)
    mask[2:5, 3:7] = True
    assert mask_box(mask).tolist() == [3.0, 2.0, 7.0, 5.0]
    mask[7, 0] = True  # a second, separate component: the box covers both
    assert mask_box(mask).tolist() == [0.0, 2.0, 7.0, 8.0]
    assert mask_to_boxes(mask, "largest").tolist() == [[3.0, 2.0, 7.0, 5.0]]
    with pytest.raises(MetricError, match="empty"):
        mask_box(torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(MetricError, match="one mask"):
        mask_box(torch.ones(2, 4, 4, dtype=torch.bool))


@pytest.mark.parametrize("connectivity", [0, 5, 6, "8"])
def test_connectivity_other_than_4_or_8_raises_everywhere(connectivity):
    mask = torch.ones(4, 4, dtype=torch.bool)
    for call in (
        lambda: maps_to_boxes(torch.rand(1, 4, 4), connectivity=connectivity),
        lambda: mask_to_boxes(mask, connectivity=connectivity),
        lambda: connected_components(mask, connectivity),
    ):
        with pytest.raises(MetricError, match="connectivity must be 4"):
            call()


def test_maps_to_boxes_connectivity_four_splits_diagonal_neighbours():
    m = torch.zeros(1, 6, 6)
    m[0, 0:2, 0:2] = 1.0
    m[0, 2:4, 2:4] = 1.0
    assert maps_to_boxes(m, 0.5, "all", connectivity=8)[0].tolist() == [[0.0, 0.0, 4.0, 4.0]]
    assert maps_to_boxes(m, 0.5, "all", connectivity=4)[0].tolist() == [
        [0.0, 0.0, 2.0, 2.0],
        [2.0, 2.0, 4.0, 4.0],
    ]


@pytest.mark.parametrize("connectivity", [4, 8])
def test_mask_to_boxes_equals_maps_to_boxes_on_the_same_mask(connectivity):
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        mask = torch.rand(12, 15, generator=gen) > 0.6
        for mode in ("largest", "all"):
            from_mask = mask_to_boxes(mask, mode, connectivity)
            from_map = maps_to_boxes(mask.float()[None], 1.0, mode, connectivity=connectivity)[0]
            assert torch.equal(from_mask, from_map)
    assert mask_to_boxes(torch.zeros(4, 4, dtype=torch.bool)).shape == (0, 4)
    with pytest.raises(MetricError, match="one mask"):
        mask_to_boxes(torch.ones(2, 4, 4, dtype=torch.bool))
