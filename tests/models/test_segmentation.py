"""The DeepLabv3+-style model: atrous receptive fields and output strides against the layer
table, ASPP shapes, the three upsamplings, and its trained-file format."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ModelLoadError
from convlens.layers import layer_table
from convlens.models import load_model
from convlens.models.segmentation import (
    ASPP,
    UPSAMPLING,
    SegmentationNet,
    Upsample,
    save_segmentation_model,
)
from convlens.models.shapes import shapes_preprocess

pytestmark = pytest.mark.usefixtures("one_thread")


def _walked_field(modules: list[nn.Module]) -> tuple[int, int]:
    """(size, jump) of a chain of convolutions and poolings, by the textbook recursion
    size += dilation * (kernel - 1) * jump; jump *= stride (independent of the tracer)."""
    size, jump = 1, 1
    for module in modules:
        if isinstance(module, nn.Conv2d):
            kernel, stride, dilation = module.kernel_size[0], module.stride[0], module.dilation[0]
        elif isinstance(module, nn.MaxPool2d):
            kernel, stride, dilation = module.kernel_size, module.stride, 1
        else:
            continue
        size += dilation * (kernel - 1) * jump
        jump *= stride
    return size, jump


@pytest.mark.parametrize("stride", [8, 16])
def test_atrous_backbone_field_and_output_stride_match_the_layer_table(stride):
    model = SegmentationNet(num_classes=3, width=4, output_stride=stride)
    rows = {row.name: row for row in layer_table(model, torch.randn(1, 3, 64, 64))}
    high = rows["backbone.stage4"]
    assert high.output_shape == (1, 16, 64 // stride, 64 // stride)
    assert high.field.jump == (stride, stride)
    walked = _walked_field(list(model.backbone.modules()))
    assert high.field.size == (walked[0], walked[0]) and walked[1] == stride
    # stride 8 trades stage4's stride for dilation 2: same span (86 px), denser grid
    assert high.field.size == (86, 86)
    low = rows["backbone.pool2"]
    assert low.field.jump == (4, 4) and low.output_shape[-1] == 16
    # each ASPP rate r widens the field by r * 2 * jump: 118, 150, 182 px at both strides
    for branch, size in zip((1, 2, 3), (118, 150, 182), strict=True):
        assert rows[f"aspp.branches.{branch}"].field.size == (size, size)
    assert rows["aspp.image_pool"].field.is_global


@pytest.mark.parametrize("stride", [8, 16])
@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_aspp_output_shape_for_every_stride(stride, size):
    model = SegmentationNet(num_classes=5, width=4, output_stride=stride).eval()
    rows = {row.name: row for row in layer_table(model, torch.randn(2, 3, *size))}
    expected = (2, 12, size[0] // stride, size[1] // stride)
    assert rows["aspp"].output_shape == expected
    assert rows["upsample_logits"].output_shape == (2, 5, *size)
    standalone = ASPP(7, 6, (1, 2, 3))(torch.randn(2, 7, 5, 3))
    assert standalone.shape == (2, 6, 5, 3)


@pytest.mark.parametrize("upsample", UPSAMPLING)
def test_every_upsampling_gives_logits_at_input_size(upsample):
    model = SegmentationNet(num_classes=4, width=4, upsample=upsample).eval()
    for size in ((64, 64), (37, 50)):
        assert model(torch.randn(1, 3, *size)).shape == (1, 4, *size)


def test_transposed_upsampling_starts_as_bilinear_interpolation():
    features = torch.randn(1, 3, 6, 6)
    transposed = Upsample(3, 4, "transposed")(features, (24, 24))
    bilinear = F.interpolate(features, size=(24, 24), mode="bilinear", align_corners=False)
    # equal away from the border, where the transposed convolution sees zero padding
    assert torch.allclose(transposed[..., 4:-4, 4:-4], bilinear[..., 4:-4, 4:-4], atol=1e-5)
    assert Upsample(3, 4, "transposed").transposed.weight.requires_grad


def test_bad_settings_raise_model_load_errors():
    with pytest.raises(ModelLoadError, match="output_stride"):
        SegmentationNet(output_stride=32)
    with pytest.raises(ModelLoadError, match="upsampling"):
        SegmentationNet(upsample="bicubic")


def test_a_saved_model_loads_by_path_with_its_labels_and_preprocess(tmp_path):
    model = SegmentationNet(num_classes=3, width=4, output_stride=8, upsample="nearest").eval()
    path = save_segmentation_model(
        model, tmp_path / "seg.pt", ("background", "a", "b"), shapes_preprocess(48)
    )
    loaded = load_model(str(path))
    assert loaded.labels == ("background", "a", "b")
    assert loaded.preprocess.height_width == (48, 48)
    images = torch.randn(1, 3, 48, 48)
    assert torch.equal(loaded.module(images), model(images))
    assert loaded.module.config == model.config
