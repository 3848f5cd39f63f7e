"""Filters, feature maps, masks, Gram matrix, unit projections on tiny hand-built nets."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convlens.attribution.rules import guided_backprop
from convlens.errors import LayerError, MethodError
from convlens.features.activations import (
    feature_maps,
    layer_activation,
    layer_mean_maps,
    stage_layers,
)
from convlens.features.filters import filter_tiles
from convlens.features.gram import gram_matrix
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
    weights = net[3].weight.detach()  # [2, 2, 3, 3] (groups=2: filter 1 reads inputs 2, 3)
    slices = filter_tiles(net, "3", reduce="slices")
    assert slices.tiles.shape == (4, 1, 3, 3)
    assert slices.labels == ["f0/c0", "f0/c1", "f1/c2", "f1/c3"]
    w = weights[1, 1]
    assert torch.allclose(slices.tiles[3, 0], 0.5 + w / (2 * w.abs().max()))
    mean = filter_tiles(net, "3").tiles
    m = weights[0].mean(0)
    assert mean.shape == (2, 1, 3, 3) and torch.allclose(mean[0, 0], 0.5 + m / (2 * m.abs().max()))


def test_depthwise_filters_and_norm_reduction():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, groups=4))
    weights = net[1].weight.detach()  # [4, 1, 3, 3]
    tiles = filter_tiles(net, "1")
    assert tiles.reduce == "mean" and tiles.labels == ["f0", "f1", "f2", "f3"]
    peak = weights[2, 0].abs().max()
    assert torch.allclose(tiles.tiles[2, 0], 0.5 + weights[2, 0] / (2 * peak))
    assert filter_tiles(net, "1", reduce="slices").labels[2] == "f2/c2"
    norm = filter_tiles(net[0:1], "0", reduce="norm", scaling="shared")  # [4, 3, 1, 1]
    magnitude = net[0].weight.detach().norm(dim=1)  # [4, 1, 1]
    expected = 0.5 + magnitude / (2 * magnitude.max())
    assert torch.allclose(norm.tiles[:, 0], expected)
    assert float(norm.tiles.min()) >= 0.5 and float(norm.tiles.max()) == pytest.approx(1.0)


def test_only_the_layer_that_sees_the_image_is_drawn_in_colour():
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, groups=2),
        nn.Conv2d(4, 3, 1),
        nn.Conv2d(3, 5, 3),
    )
    assert filter_tiles(net).reduce == "rgb"
    for deep in ("2", "4"):  # 3 inputs per group, and 3 input channels deep in the net
        tiles = filter_tiles(net, deep)
        assert tiles.reduce == "mean" and tiles.tiles.shape[1] == 1
        with pytest.raises(MethodError, match="sees the image"):
            filter_tiles(net, deep, reduce="rgb")


def test_filters_of_resnet_and_errors():
    resnet = torchvision.models.resnet18(weights=None)
    tiles = filter_tiles(resnet)
    weights = resnet.conv1.weight.detach()  # [64, 3, 7, 7]
    assert tiles.tiles.shape == (64, 3, 7, 7) and tiles.layer == "conv1"
    for k in (0, 33, 63):
        assert torch.allclose(tiles.tiles[k], 0.5 + weights[k] / (2 * weights[k].abs().max()))
    with pytest.raises(LayerError):
        filter_tiles(tiny_net(), "1")
    with pytest.raises(MethodError):
        filter_tiles(tiny_net(), "3", reduce="rgb")
    with pytest.raises(MethodError, match="per_filter, shared"):
        filter_tiles(tiny_net(), scaling="global")


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


def test_layer_mean_maps_one_per_stage():
    net, image = tiny_net(), torch.randn(3, 8, 8)
    maps = dict(layer_mean_maps(net, image))
    # conv "0" and its ReLU "1" have one shape: one stage, drawn at its last layer.
    assert list(maps) == ["1", "2", "4"]
    assert torch.allclose(maps["2"], layer_activation(net, image[None], "2")[0].mean(0))
    assert maps["4"].shape == (4, 4)
    chosen = dict(layer_mean_maps(net, image, ["0", "3"]))
    assert torch.allclose(chosen["0"], net[0](image[None])[0].mean(0).detach())


class StagedNet(nn.Module):
    """stem + norm (same shape), a Sequential of stages (of blocks), a 1x1-pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.stages = nn.Sequential(
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1)),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stages(self.norm(self.stem(x)))).flatten(1))


def test_stage_layers_are_the_blocks_of_the_feature_extractor():
    net, image = StagedNet(), torch.randn(3, 8, 8)
    # norm, stages.0 and stem share 4x8x8: one stage; stages.1/.2 share 8x4x4; pool is 1x1.
    assert stage_layers(net, image) == ["stages.0", "stages.2"]
    wrapped = nn.Sequential(StagedNet())  # a lone wrapper is looked through
    assert stage_layers(wrapped, image) == ["0.stages.0", "0.stages.2"]
    with pytest.raises(LayerError, match="no stage"):
        stage_layers(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)), image)


class ReusedPoolNet(nn.Module):
    """conv1 (4x8x8), pool (first call 4x4x4), conv2 (4x4x4), pool again (4x2x2), head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.conv2(self.pool(self.conv1(x)))).amax((2, 3)))


def test_stage_means_take_one_forward_pass_and_a_reused_module_counts_once():
    net, image = ReusedPoolNet(), torch.randn(3, 8, 8)
    forwards = []
    handle = net.register_forward_pre_hook(lambda _module, _inputs: forwards.append(1))
    try:
        maps = layer_mean_maps(net, image)
    finally:
        handle.remove()
    assert len(forwards) == 1
    # pool counts with its first call (4x4x4, at its first position), which conv2 shares:
    # one stage, drawn at conv2. (Its last call's 4x2x2 would have made it a stage.)
    assert [name for name, _ in maps] == stage_layers(net, image) == ["conv1", "conv2"]
    with torch.no_grad():
        conv1 = net.conv1(image[None])
        conv2 = net.conv2(net.pool(conv1))
    assert torch.allclose(maps[0][1], conv1[0].mean(0))
    assert torch.allclose(maps[1][1], conv2[0].mean(0))
    assert not net._forward_hooks and not net.pool._forward_hooks


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda n, x: activation_mask(n, x, "3", 2), MethodError, "has 2 channels"),
        (lambda n, x: project_unit(n, x, "3", 2), MethodError, "has 2 channels"),
        (lambda n, x: activation_mask(n, x, "1", 1.0), MethodError, "integer in 0..3"),
        (lambda n, x: project_unit(n, x, "1", True), MethodError, "integer in 0..3"),
        (lambda n, x: activation_mask(n, x, "5", 0), LayerError, r"not \[B, C, h, w\]"),
        (lambda n, x: project_unit(n, x, "5", 0), LayerError, r"not \[B, C, h, w\]"),
    ],
)
def test_masks_and_projections_check_layer_and_channel_alike(unchanged, call, error, message):
    net = nn.Sequential(*tiny_net(), nn.Flatten())  # "5": a [B, 32] output
    image = torch.randn(3, 8, 8)
    with unchanged(net, image), pytest.raises(error, match=message) as raised:
        call(net, image)
    if "range" in str(raised.value):
        assert str(raised.value) == "channel 2 out of range: layer '3' has 2 channels (0..1)"


def test_mask_area_is_thresholded_fraction():
    net, image = tiny_net(), torch.randn(3, 16, 16)
    result = activation_mask(net, image, "1", 2, quantile=0.75)
    assert result.mask.shape == (16, 16)
    assert result.area == pytest.approx(0.25, abs=1 / 256)
    channel = torch.relu(net[0](image[None]))[0, 2].detach()  # already 16x16: no upsampling
    fixed = activation_mask(net, image, "1", 2, threshold=0.1)
    assert fixed.threshold == 0.1 and torch.equal(fixed.mask, channel > 0.1)
    default = activation_mask(net, image, "1", 2)  # neither given: the 0.9 quantile
    assert default.threshold == pytest.approx(float(torch.quantile(channel.double(), 0.9)))
    with pytest.raises(MethodError, match="not both"):
        activation_mask(net, image, "1", 2, threshold=0.1, quantile=0.5)
    with pytest.raises(MethodError, match=r"0\.\.3"):
        activation_mask(net, image, "1", 9)


def test_gram_matrix_hand_computed():
    net = nn.Sequential(nn.Identity())
    x = torch.randn(2, 3, 4, 5)
    gram = gram_matrix(net, x, "0")
    flat = x[1].reshape(3, 20)
    assert torch.allclose(gram[1], flat @ flat.T / 20)
    assert torch.allclose(gram, gram.transpose(1, 2))


def projection_net() -> nn.Sequential:
    """conv 3x3 -> ReLU -> max-pool 2 -> 1x1 conv to 3 channels (weights 1, -1, 1) -> ReLU
    -> 1x1 conv to 1 channel (weights 2, 1, -0.5) -> ReLU. With a positive first conv,
    channel 1 after the pool is negative (-m), so the rules part ways at the middle ReLU."""
    net = nn.Sequential(
        nn.Conv2d(3, 1, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(1, 3, 1, bias=False),
        nn.ReLU(),
        nn.Conv2d(3, 1, 1, bias=False),
        nn.ReLU(),
    )
    with torch.no_grad():
        net[0].weight.abs_()
        net[3].weight.copy_(torch.tensor([1.0, -1.0, 1.0]).view(3, 1, 1, 1))
        net[5].weight.copy_(torch.tensor([2.0, 1.0, -0.5]).view(1, 3, 1, 1))
    return net


def test_deconvnet_and_guided_projections_hand_computed():
    net, image = projection_net(), torch.randn(3, 8, 8).abs()  # conv output > 0 everywhere
    # Unit (1, 2) of the last layer = relu(2 m + 0 - 0.5 m) = 1.5 m, m = pooled max.
    # Backward: the last ReLU passes 1; the 1x1 conv gives (2, 1, -0.5) to the middle ReLU,
    # whose forward inputs are (m, -m, m):
    #   deconvnet keeps the positive signals (2, 1, 0) -> 1x1 conv back: 2 - 1 + 0 = 1
    #   guided keeps positive signals at active units (2, 0, 0) -> 2
    #   (the plain gradient would pass (2, 0, -0.5) -> 1.5)
    # then the pool switch routes it to the argmax, the first ReLU passes it (> 0) and the
    # first conv spreads it as its own filter: projection = scale * W placed at the switch.
    conv = net[0](image[None])[0, 0].detach()
    window = conv[2:4, 4:6]
    r, c = divmod(int(window.argmax()), 2)
    r, c = 2 + r, 4 + c  # the max-pool switch in the conv output
    filter_at_switch = torch.zeros(3, 10, 10)
    filter_at_switch[:, r : r + 3, c : c + 3] = net[0].weight[0].detach()  # padded coords
    filter_at_switch = filter_at_switch[:, 1:9, 1:9]
    for rule, scale in (("deconvnet", 1.0), ("guided", 2.0)):
        result = project_unit(net, image, "6", 0, (1, 2), rule=rule)
        assert torch.allclose(result.projection, scale * filter_at_switch), rule
        assert result.activation == pytest.approx(1.5 * float(window.max()), rel=1e-5)
    inputs = image[None].clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(net(inputs)[0, 0, 1, 2], inputs)
    assert torch.allclose(plain[0], 1.5 * filter_at_switch)
    # conv 3x3 (pad 1) then 2x2 pool: field 4x4 from (-1 + 2 * 1, -1 + 2 * 2)
    assert result.box == (1, 3, 4, 6)


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_uncropped_projection_is_already_zero_outside_the_receptive_field(unchanged, rule):
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, dilation=2), nn.ReLU()
    )
    image = torch.randn(3, 24, 24)
    with unchanged(net, image):
        raw = project_unit(net, image, "4", 1, rule=rule, crop=False)  # at its max: active
        cropped = project_unit(net, image, "4", 1, rule=rule)
    top, left, bottom, right = raw.box
    # 3x3 conv, pool 2, 3x3 conv dilated 2 (spans 5 pooled = 10 + 2 input pixels): 12x12,
    # jump 2: unit (i, j) starts at input pixel (2 i, 2 j).
    assert (bottom - top + 1, right - left + 1) == (12, 12)
    assert (top, left) == (2 * raw.position[0], 2 * raw.position[1])
    assert raw.activation > 0
    inside = raw.projection[:, top : bottom + 1, left : right + 1]
    outside = raw.projection.clone()
    outside[:, top : bottom + 1, left : right + 1] = 0
    assert float(outside.abs().max()) == 0.0  # a unit cannot see outside its field
    assert float(inside.abs().sum()) > 0
    assert torch.equal(cropped.projection, raw.projection)


def test_rules_without_rectifiers_are_refused_alike_in_projection_and_attribution():
    guard = nn.Hardtanh(-1.0, 1.0)  # not a rectifier (lower bound -1), nor is the clamp below
    silu_net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), guard, nn.MaxPool2d(2))
    image = torch.randn(3, 8, 8).clamp(0, 1)
    with pytest.raises(MethodError, match="matched no rectifier") as projected:
        project_unit(silu_net, image, "3", 0, rule="deconvnet")
    classifier = nn.Sequential(silu_net, nn.Flatten(), nn.Linear(4 * 3 * 3, 4))
    with pytest.raises(MethodError, match="matched no rectifier") as attributed:
        guided_backprop(classifier, image[None], 1)
    # One shared check: the same explanation after each caller's own prefix.
    assert str(projected.value).split(": ", 1)[1].replace("deconvnet", "RULE") == str(
        attributed.value
    ).split(": ", 1)[1].replace("guided", "RULE")
