"""Segmentation scores on hand-made label maps with known values; stream = one shot."""

from __future__ import annotations

import math

import pytest
import torch

from convlens.errors import MetricError
from convlens.localize import ConfusionMatrix, segmentation_scores


def _maps(*rows: str) -> torch.Tensor:
    return torch.tensor([[int(c) for c in row] for row in rows])


def test_scores_of_a_hand_made_prediction():
    truth = _maps("0011", "0011", "0000", "2200")
    pred = _maps("0011", "0111", "0000", "0200")
    scores = segmentation_scores(pred[None], truth[None], num_classes=4)
    assert scores["pixel_accuracy"] == pytest.approx(14 / 16)
    iou = scores["per_class_iou"]
    assert iou[:3] == pytest.approx([9 / 11, 4 / 5, 1 / 2])
    assert math.isnan(iou[3])  # class 3 is neither true nor predicted anywhere
    assert scores["mean_iou"] == pytest.approx((9 / 11 + 4 / 5 + 1 / 2) / 3)
    assert scores["fw_iou"] == pytest.approx((10 * 9 / 11 + 4 * 4 / 5 + 2 * 1 / 2) / 16)
    assert scores["pixels"] == 16


def test_perfect_prediction_scores_one_and_a_missed_class_scores_zero():
    truth = _maps("0110", "0110", "2222")
    perfect = segmentation_scores(truth, truth, num_classes=3)
    assert perfect["pixel_accuracy"] == perfect["mean_iou"] == perfect["boundary_f1"] == 1.0
    missed = segmentation_scores(torch.zeros_like(truth), truth, num_classes=3)
    assert missed["per_class_iou"][1:] == [0.0, 0.0]


def test_boundary_f1_of_a_square_shifted_by_one_pixel():
    truth = torch.zeros(6, 6, dtype=torch.long)
    pred = truth.clone()
    truth[1:3, 1:3] = 1
    pred[1:3, 2:4] = 1
    exact = segmentation_scores(pred, truth, num_classes=2, tolerance=0)
    # class 1: half of each 4-pixel boundary overlaps; class 0: 2 of the 8 ring pixels
    assert exact["per_class_boundary_f1"] == pytest.approx([0.25, 0.5])
    assert exact["boundary_f1"] == pytest.approx(0.375)
    assert segmentation_scores(pred, truth, 2, tolerance=1)["boundary_f1"] == pytest.approx(1.0)


def test_ignored_pixels_count_nowhere():
    truth = _maps("09", "11")
    pred = _maps("00", "10")
    scores = segmentation_scores(pred, truth, num_classes=2, ignore_index=9)
    assert scores["pixels"] == 3
    assert scores["pixel_accuracy"] == pytest.approx(2 / 3)
    assert scores["per_class_iou"] == pytest.approx([0.5, 0.5])


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        left = a[key] if isinstance(a[key], list) else [a[key]]
        right = b[key] if isinstance(b[key], list) else [b[key]]
        for x, y in zip(left, right, strict=True):
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, abs=1e-12), key


def test_a_stream_in_any_chunks_equals_the_one_shot_scores():
    generator = torch.Generator().manual_seed(3)
    blobs = torch.nn.functional.avg_pool2d(torch.rand(6, 5, 16, 16, generator=generator), 5, 1, 2)
    truth = blobs.argmax(1)
    pred = (blobs + 0.05 * torch.rand(blobs.shape, generator=generator)).argmax(1)
    truth[0, :3] = 255
    one_shot = segmentation_scores(pred, truth, num_classes=6, ignore_index=255, tolerance=1.5)
    stream = ConfusionMatrix(6, ignore_index=255, tolerance=1.5)
    for rows in (slice(0, 2), slice(2, 3), slice(3, 6)):
        stream.update(pred[rows], truth[rows])
    _same(stream.scores(), one_shot)
    assert int(stream.matrix.sum()) == 6 * 16 * 16 - 3 * 16


@pytest.mark.parametrize(
    ("pred", "truth", "message"),
    [
        (torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), "integer class ids"),
        (
            torch.zeros(1, 4, 4, dtype=torch.long),
            torch.zeros(1, 4, 5, dtype=torch.long),
            "same size",
        ),
        (torch.full((1, 2, 2), 3), torch.zeros(1, 2, 2, dtype=torch.long), "outside 0..2"),
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7), "ignore_index"),
    ],
)
def test_malformed_label_maps_raise_metric_errors(pred, truth, message):
    with pytest.raises(MetricError, match=message):
        segmentation_scores(pred, truth, num_classes=3)


def test_ignore_index_must_not_be_a_class():
    with pytest.raises(MetricError, match="outside the classes"):
        ConfusionMatrix(3, ignore_index=1)
