"""default_cam_layer: the last convolution stage (trailing pooling skipped), a bounded cache."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from convlens.layers import find
from convlens.layers.find import DEFAULT_LAYERS_KEPT, default_cam_layer


def _on_meta(build, *shape):
    """A torchvision model and a zero input on the meta device: shapes without arithmetic."""
    with torch.device("meta"):
        return build(weights=None), torch.zeros(1, 3, *shape)


def test_vgg16_default_is_its_last_conv_stage_not_a_pooling():
    # At 200x320 features.29 (ReLU after conv5_3) is 12x20, max pool features.30 6x10, and
    # avgpool an adaptive pool resampling 6x10 to 7x7: neither pool is the CAM layer.
    vgg, images = _on_meta(torchvision.models.vgg16, 200, 320)
    assert default_cam_layer(vgg, images) == "features.29"
    assert default_cam_layer(vgg, images[..., :224, :224]) == "features.29"  # any size


def test_defaults_of_networks_ending_in_global_pooling_are_unchanged():
    # (EfficientNet-Lite0's bn2: test_capture.py::test_default_cam_layer_of_default_model)
    resnet, images = _on_meta(torchvision.models.resnet18, 200, 320)
    assert default_cam_layer(resnet, images) == "layer4"
    squeezenet, images = _on_meta(torchvision.models.squeezenet1_0, 224, 224)
    assert default_cam_layer(squeezenet, images) == "classifier.2"  # before its 1x1 pool


def test_pooling_blocks_at_the_end_are_skipped_and_inner_pooling_is_not():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.MaxPool2d(2),  # inner: the conv after it is the last stage
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.AvgPool2d(2), nn.AdaptiveMaxPool2d(3)),  # a block ending in pools
        nn.Flatten(),
        nn.Linear(36, 2),
    )
    assert default_cam_layer(net, torch.zeros(1, 3, 16, 16)) == "2"


def test_the_cache_keeps_the_last_few_input_shapes_per_model():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    calls = []
    net.register_forward_pre_hook(lambda _m, args: calls.append(tuple(args[0].shape)))
    widths = range(8, 12 + DEFAULT_LAYERS_KEPT)
    for width in widths:
        assert default_cam_layer(net, torch.zeros(1, 3, 8, width)) == "1"
    assert len(calls) == len(widths)
    assert len(find._DEFAULT_LAYERS[net].by_input) == DEFAULT_LAYERS_KEPT
    default_cam_layer(net, torch.zeros(1, 3, 8, widths[-1]))  # recent: remembered
    assert len(calls) == len(widths)
    default_cam_layer(net, torch.zeros(1, 3, 8, widths[0]))  # oldest: forgotten, found again
    assert len(calls) == len(widths) + 1
    assert len(find._DEFAULT_LAYERS[net].by_input) == DEFAULT_LAYERS_KEPT
