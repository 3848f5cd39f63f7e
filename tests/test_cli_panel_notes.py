"""The deconvnet tile says when its picture is the network's own pattern rather than the
image's (issue 20, item 5): on a network without max-pooling, deconvnet's backward pass
never looks at the image, so its map of any image equals its map of noise."""

from __future__ import annotations

import torch
from tests.helpers.networks import small_convnet
from torch import nn

from convlens.attribution.explain import explain_methods
from convlens.cli.explain_tiles import image_independence, method_tiles, pattern_note
from convlens.models import load_model


def _pooled_convnet() -> nn.Module:
    """Max-pooling switches carry the image into deconvnet's backward pass."""
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def _deconvnet(module):
    loaded = load_model(module)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    (item,), _ = explain_methods(loaded, image, ["deconvnet"], 1)
    return loaded, image, item


def test_deconvnet_without_pooling_is_flagged_as_image_independent():
    loaded, image, item = _deconvnet(small_convnet())
    correlation = image_independence(loaded, image, item)
    assert correlation > 0.99
    tiles, _ = method_tiles([item], {"deconvnet": pattern_note(correlation)})
    assert "image-independent pattern: r=1.00" in tiles[0].note
    assert tiles[0].note.startswith("input gradient, grey = 0")


def test_deconvnet_through_max_pooling_is_not_flagged():
    loaded, image, item = _deconvnet(_pooled_convnet())
    correlation = image_independence(loaded, image, item)
    assert correlation < 0.95
    assert pattern_note(correlation) == ""


def test_methods_without_a_gradient_picture_are_not_compared():
    loaded = load_model(small_convnet())
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    (item,), _ = explain_methods(loaded, image, ["gradcam"], 1)
    assert image_independence(loaded, image, item) is None
