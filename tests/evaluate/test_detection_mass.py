"""The shipped synthetic-scenes detector: its detections are right on held-out scenes, and
Grad-CAM of one detection puts most of its mass in that detection's box, far above the
box's area share; the box mass helper on hand-made maps."""

from __future__ import annotations

import pytest
import torch

from convlens.evaluate.detection import box_pixels, detection_mass, mass_in_boxes
from convlens.models.detector import load_detector_model


def test_mass_in_boxes_by_hand():
    maps = torch.zeros(2, 8, 8)
    maps[0, 1:3, 1:3] = 1.0  # all inside the box
    maps[1] = -1.0  # no positive mass
    maps[1, 0, 0] = 3.0
    boxes = torch.tensor([[1.0, 1.0, 4.0, 4.0], [1.0, 1.0, 4.0, 4.0]])
    assert mass_in_boxes(maps, boxes).tolist() == [1.0, 0.0]
    assert box_pixels(boxes[:1], 8, 8).sum() == 9
    assert mass_in_boxes(torch.zeros(1, 8, 8), boxes[:1]).item() == 0


@pytest.mark.slow
def test_shipped_detector_gradcam_mass_beats_the_area_floor():
    torch.manual_seed(0)
    found = detection_mass(load_detector_model(), count=4, start=100)
    assert found["correct_share"] == 1.0  # the explained detections are right ones
    assert bool((found["mass"] > found["area"] + 0.3).all())
    assert found["mean_mass"] > 2 * found["mean_center"]
