"""Pixel accuracy and mask IoU on hand-made masks."""

from __future__ import annotations

import pytest
import torch

from convlens.errors import MetricError
from convlens.localize import mask_iou, pixel_accuracy


def masks() -> tuple[torch.Tensor, torch.Tensor]:
    gt = torch.zeros(2, 4, 4, dtype=torch.bool)
    gt[:, 0:2, 0:2] = True  # 4 object pixels
    pred = torch.zeros(2, 4, 4, dtype=torch.bool)
    pred[0, 0:2, 0:2] = True  # exact
    pred[1, 1:3, 1:3] = True  # overlaps in 1 pixel
    return pred, gt


def test_golden_values():
    pred, gt = masks()
    assert torch.allclose(mask_iou(pred, gt), torch.tensor([1.0, 1 / 7]))
    # image 1: 3 missed + 3 false positives out of 16 pixels wrong
    assert torch.allclose(pixel_accuracy(pred, gt), torch.tensor([1.0, 10 / 16]))


def test_empty_prediction_and_integer_masks():
    _, gt = masks()
    empty = torch.zeros(2, 4, 4, dtype=torch.uint8)
    assert mask_iou(empty, gt.int()).tolist() == [0.0, 0.0]
    assert torch.allclose(pixel_accuracy(empty, gt), torch.tensor([12 / 16, 12 / 16]))


def test_bad_masks_raise():
    pred, gt = masks()
    with pytest.raises(MetricError, match="empty"):
        mask_iou(pred, torch.zeros_like(gt))
    with pytest.raises(MetricError, match="resize"):
        mask_iou(pred, torch.ones(2, 5, 4, dtype=torch.bool))
    with pytest.raises(MetricError, match="one per image"):
        pixel_accuracy(pred, gt[:1])
    with pytest.raises(MetricError, match="0/1"):
        mask_iou(pred.float() * 0.5, gt)
