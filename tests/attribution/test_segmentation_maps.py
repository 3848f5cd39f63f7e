"""Explaining segmentation outputs (Vinogradova et al. 2020): every method explains a class's
logits summed over a region, and its map stays inside that region's receptive field."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convlens import explain
from convlens.layers import receptive_field
from convlens.targets import region

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 16


def _field_zone(model: nn.Module, layer: str, rows: range, cols: range) -> torch.Tensor:
    """bool[SIZE, SIZE]: input pixels seen by any unit of ``layer`` at ``rows`` x ``cols``,
    read from the layer table's receptive field."""
    field = receptive_field(model, layer, torch.zeros(1, 3, SIZE, SIZE))
    zone = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    for row in rows:
        for col in cols:
            top, left, bottom, right = field.box(row, col, SIZE, SIZE)
            zone[top : bottom + 1, left : right + 1] = True
    return zone


def _local_segmenter() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1)
    ).eval()


@pytest.mark.parametrize(
    "method", ["saliency", "input_x_gradient", "integrated_gradients", "guided_backprop"]
)
def test_box_region_maps_are_zero_outside_the_boxs_receptive_field(method, unchanged):
    model, images = _local_segmenter(), torch.randn(2, 3, SIZE, SIZE)
    zone = _field_zone(model, "2", range(3, 7), range(8, 12))  # output box rows 3-6, cols 8-11
    with unchanged(model, images):
        maps = explain(model, images, method, target=region(1, box=(8, 3, 12, 7))).maps
    assert zone.sum() == 8 * 8  # a 4x4 box seen through two 3x3 convolutions
    assert bool((maps[:, ~zone] == 0).all())
    assert bool((maps[:, zone] != 0).any(1).all())


class _OneRegionClass(nn.Module):
    """Class 0's logits depend only on the input pixels in ``keep`` (masked before a bias-free
    conv stack, the CAM layer ``local``); classes 1 and 2 see the whole image."""

    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.register_buffer("keep", keep.float())
        self.local = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1, bias=False),
        )
        self.head = nn.Conv2d(4, 1, 1, bias=False)
        self.other = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        own = self.head(torch.relu(self.local(images * self.keep)))
        return torch.cat([own, self.other(images)], dim=1)


CAM_METHODS = ["gradcam", "gradcam_pp", "xgradcam", "layercam", "hirescam", "scorecam"]


@pytest.mark.parametrize("method", [*CAM_METHODS, "saliency", "integrated_gradients"])
def test_segmentation_gradcam_of_a_one_region_class_is_zero_outside_its_field(method, unchanged):
    keep = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    keep[4:9, 5:11] = True
    model = _OneRegionClass(keep).eval()
    images = torch.rand(2, 3, SIZE, SIZE) + 0.5
    layer = {"layer": "local"} if method in CAM_METHODS else {}
    whole = region(0, box=(0, 0, SIZE, SIZE))
    with unchanged(model, images):
        maps = explain(model, images, method, target=whole, **layer).maps
    rows, cols = keep.any(1).nonzero()[:, 0].tolist(), keep.any(0).nonzero()[:, 0].tolist()
    inside = torch.zeros_like(keep)
    # units of `local` whose field meets the kept pixels: the kept box grown by 2 pixels
    field = receptive_field(model, "local", images)
    grow = (field.size[0] - 1) // 2
    inside[
        max(0, rows[0] - grow) : rows[-1] + grow + 1, max(0, cols[0] - grow) : cols[-1] + grow + 1
    ] = True
    if method in ("saliency", "integrated_gradients"):
        inside = keep  # the input mask stops every input gradient outside it
    assert bool((maps[:, ~inside] == 0).all())
    assert bool((maps[:, inside] != 0).any(1).all())


def test_a_class_that_sees_the_whole_image_is_not_confined():
    keep = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    keep[4:9, 5:11] = True
    model = _OneRegionClass(keep).eval()
    maps = explain(model, torch.rand(1, 3, SIZE, SIZE), "saliency", target=region(1)).maps
    assert bool((maps[:, ~keep] != 0).any())
