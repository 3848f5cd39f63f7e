"""Filters, feature maps, masks, Gram matrix, unit projections on tiny hand-built nets."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convlens.errors import LayerError, MethodError
from convlens.features.filters import filter_tiles
from convlens.features.gram import gram_matrix
from convlens.features.maps import feature_maps, layer_activation, layer_mean_maps
from convlens.features.masks import activation_mask
from convlens.features.projection import project_unit


def tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 2, 3, padding=1, groups=2),
        nn.ReLU(),
    )


def test_rgb_filter_tiles_match_weights_per_filter_and_shared():
    net = torchvision.models.alexnet(weights=None)
    tiles = filter_tiles(net)
    weights = net.features[0].weight.detach()
    assert tiles.tiles.shape == (64, 3, 11, 11) and len(tiles.labels) == 64
    peak = weights[5].abs().max()
    assert torch.allclose(tiles.tiles[5], 0.5 + weights[5] / (2 * peak))
    shared = filter_tiles(net, scaling="shared").tiles
    assert torch.allclose(shared[5], 0.5 + weights[5] / (2 * weights.abs().max()))
    assert float(tiles.tiles.min()) >= 0 and float(tiles.tiles.max()) <= 1


def test_grouped_filters_slices_and_mean():
    net = tiny_net()
    weights = net[3].weight.detach()  # [2, 2, 3, 3] (groups=2)
    slices = filter_tiles(net, "3", reduce="slices")
    assert slices.tiles.shape == (4, 1, 3, 3) and slices.labels[3] == "f1/c1"
    w = weights[1, 1]
    assert torch.allclose(slices.tiles[3, 0], 0.5 + w / (2 * w.abs().max()))
    mean = filter_tiles(net, "3").tiles
    m = weights[0].mean(0)
    assert mean.shape == (2, 1, 3, 3) and torch.allclose(mean[0, 0], 0.5 + m / (2 * m.abs().max()))


def test_filters_of_resnet_and_errors():
    assert filter_tiles(torchvision.models.resnet18(weights=None)).tiles.shape == (64, 3, 7, 7)
    with pytest.raises(LayerError):
        filter_tiles(tiny_net(), "1")
    with pytest.raises(MethodError):
        filter_tiles(tiny_net(), "3", reduce="rgb")


def test_feature_maps_equal_captured_activation(unchanged):
    net, image = tiny_net(), torch.randn(3, 8, 8)
    with unchanged(net, image):
        maps = feature_maps(net, image, "1", top=3)
    expected = torch.relu(net[0](image[None]))[0]
    means = expected.mean((1, 2))
    order = torch.argsort(means, descending=True)[:3]
    assert torch.equal(maps.channels, order)
    assert torch.allclose(maps.maps, expected[order])
    in_order = feature_maps(net, image, "1", order="index")
    assert torch.allclose(in_order.maps, expected)


def test_layer_mean_maps_every_spatial_layer():
    net, image = tiny_net(), torch.randn(3, 8, 8)
    maps = dict(layer_mean_maps(net, image))
    assert list(maps) == ["0", "1", "2", "3", "4"]
    assert torch.allclose(maps["2"], layer_activation(net, image[None], "2")[0].mean(0))
    assert maps["4"].shape == (4, 4)


def test_mask_area_is_thresholded_fraction():
    net, image = tiny_net(), torch.randn(3, 16, 16)
    result = activation_mask(net, image, "1", 2, quantile=0.75)
    assert result.mask.shape == (16, 16)
    assert result.area == pytest.approx(0.25, abs=1 / 256)
    fixed = activation_mask(net, image, "1", 2, threshold=0.1, quantile=None)
    channel = torch.relu(net[0](image[None]))[0, 2]  # already 16x16: no upsampling
    assert fixed.area == pytest.approx(float((channel > 0.1).float().mean()))
    with pytest.raises(MethodError):
        activation_mask(net, image, "1", 9)


def test_gram_matrix_hand_computed():
    net = nn.Sequential(nn.Identity())
    x = torch.randn(2, 3, 4, 5)
    gram = gram_matrix(net, x, "0")
    flat = x[1].reshape(3, 20)
    assert torch.allclose(gram[1], flat @ flat.T / 20)
    assert torch.allclose(gram, gram.transpose(1, 2))


def projection_net() -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(3, 2, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 1, 1, bias=False),
        nn.ReLU(),
    )
    with torch.no_grad():
        net[3].weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
    return net


def test_deconvnet_projection_is_filter_at_switch():
    net, image = projection_net(), torch.randn(3, 8, 8)
    with torch.no_grad():
        net[0].weight[0].abs_()
        image = image.abs()  # channel 0 of the first conv is positive everywhere
    result = project_unit(net, image, "4", 0, (1, 2), rule="deconvnet")
    conv = net[0](image[None])[0, 0]
    window = conv[2:4, 4:6]
    r, c = divmod(int(window.argmax()), 2)
    r, c = 2 + r, 4 + c  # the max-pool switch in the conv output
    expected = torch.zeros(3, 10, 10)
    expected[:, r : r + 3, c : c + 3] = net[0].weight[0].detach()  # padded coordinates
    assert torch.allclose(result.projection, expected[:, 1:9, 1:9])
    # conv 3x3 (pad 1) then 2x2 pool: field 4x4 from (-1 + 2 * 1, -1 + 2 * 2)
    assert result.box == (1, 3, 4, 6)
    assert result.activation == pytest.approx(float(net(image[None]).detach()[0, 0, 1, 2]))


def test_projection_zero_outside_receptive_field_and_uncut_inside(unchanged):
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.ReLU()
    )
    image = torch.randn(3, 20, 20)
    with unchanged(net, image):
        result = project_unit(net, image, "3", 1, (2, 3), rule="guided")
    top, left, bottom, right = result.box
    assert (bottom - top + 1, right - left + 1) == (8, 8)
    outside = result.projection.clone()
    outside[:, top : bottom + 1, left : right + 1] = 0
    assert float(outside.abs().max()) == 0.0
    assert float(result.projection.abs().sum()) > 0
