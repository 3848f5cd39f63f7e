"""The second pass of a scan: each distinct image runs forward once per group of channels,
each of its units runs one backward pass through that graph, and every projection equals
the unit's projection computed alone (`project_unit`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.helpers.networks import CountingNet
from torch import nn

from convlens.data.datasets import open_dataset
from convlens.data.preprocess import Preprocess
from convlens.features.projection import project_unit
from convlens.layers import borrowed_model, capture
from convlens.layers.rules import backward_rule
from convlens.layers.tokens import register_reshape
from convlens.models.loading import LoadedModel
from convlens.scan import patches
from convlens.scan.patches import padded_crop, unit_gradients
from convlens.scan.topk import top_activating

pytestmark = pytest.mark.usefixtures("one_thread")
PREPROCESS = Preprocess(size=12, mode="stretch", mean=(0.5,) * 3, std=(0.5,) * 3)


class Pictures(torch.utils.data.Dataset):
    def __init__(self, count: int) -> None:
        rng = np.random.default_rng(3)
        self.images = rng.integers(0, 256, (count, 12, 12, 3), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


def _alone(model, dataset, layer, channel, unit, rule):
    """The unit's projection computed by itself, cut like the scan cuts it."""
    image = dataset[unit.index][1]
    whole = project_unit(model, image, layer, channel, (unit.y, unit.x), rule=rule, crop=False)
    return padded_crop(whole.projection, unit.box, 0.0)


def test_one_forward_per_distinct_image_and_projections_equal_units_alone():
    net = CountingNet()
    model = LoadedModel(net, "counting", PREPROCESS)
    dataset = open_dataset(Pictures(5), PREPROCESS)
    result = top_activating(model, dataset, "net.4", k=4, projections=("guided",), batch_size=2)
    net.calls.clear()
    views = list(result.channel_views("net.4"))
    tops = result.layers["net.4"].channels
    distinct = {unit.index for units in tops for unit in units}
    # 16 units over at most 5 images: one group, one single-image forward pass per image
    assert sum(len(units) for units in tops) == 16
    assert net.calls == [(1, True)] * len(distinct)
    for view in views:
        for unit, got in zip(view.units, view.projections["guided"], strict=True):
            want = _alone(model, dataset, "net.4", view.channel, unit, "guided")
            assert torch.allclose(got, want, atol=1e-6)
            assert got.abs().sum() > 0


def test_small_groups_give_the_same_projections(monkeypatch):
    model = LoadedModel(CountingNet(), "counting", PREPROCESS)
    dataset = open_dataset(Pictures(5), PREPROCESS)
    result = top_activating(model, dataset, "net.4", k=3, projections=("deconvnet",))
    whole = [v.projections["deconvnet"] for v in result.channel_views("net.4")]
    monkeypatch.setattr(patches, "GROUP_BYTES", 1)  # one group per batch_size units
    result.views.batch_size = 1
    split = [v.projections["deconvnet"] for v in result.channel_views("net.4")]
    for a, b in zip(whole, split, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_shapes_model_max_pooling_projections_equal_units_alone():
    result = top_activating(
        "synthetic-shapes", "shapes:6", ["features.5"], k=3, projections=("deconvnet", "guided")
    )
    loaded = result.views.module
    dataset = result.views.dataset
    for view in result.channel_views("features.5", [1, 7]):
        for rule in ("deconvnet", "guided"):
            for unit, got in zip(view.units, view.projections[rule], strict=True):
                want = _alone(loaded, dataset, "features.5", view.channel, unit, rule)
                assert torch.allclose(got, want, atol=1e-5)


def _normed_net() -> nn.Sequential:
    """conv, batch norm (fitted statistics), ReLU6, strided conv, batch norm, ReLU, conv."""
    torch.manual_seed(5)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU6(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 5, 3, padding=1),
    )
    for norm in (net[1], net[4]):
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.normal_()
    return net.eval()


@pytest.mark.parametrize("reused", [False, True])
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_unit_gradients_of_one_graph_equal_each_unit_alone(rule, reused, unchanged):
    """The scan's path (channels-last input, input-gradient-only convolutions, padding and
    batch norms with folded scales, one forward and one backward per unit, guided masks
    kept when ``reused``) against `project_unit`'s plain one-unit pass."""
    net = _normed_net()
    image = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(2))
    units = [(0, 3, 4), (2, 0, 0), (4, 7, 7), (4, 2, 5), (0, 3, 4)]
    with unchanged(net, image), borrowed_model(net), backward_rule(net, rule, reused=reused):
        found = unit_gradients(net, "6", image, units)
    for (channel, y, x), got in zip(units, found, strict=True):
        want = project_unit(net, image, "6", channel, (y, x), rule=rule, crop=False).projection
        assert got.is_contiguous()
        assert got.abs().sum() > 0
        # float rounding of two evaluation orders (channels-last kernels, rsqrt * weight)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def _fitted_norms(net: nn.Module) -> nn.Module:
    """Seeded batch-norm statistics and scales far from the identity (so a wrong fold
    shows), in eval mode."""
    generator = torch.Generator().manual_seed(9)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.randn(size, generator=generator) * 0.3 + 1.0)
    return net.eval()


@pytest.mark.parametrize(
    ("arch", "layer"),
    [
        ("resnet18", "layer3"),
        ("mobilenet_v2", "features.10"),
        ("densenet121", "features.transition2"),
    ],
)
def test_torchvision_networks_projections_equal_units_alone(arch, layer, unchanged):
    """Residual sums with downsampling convolutions, depthwise convolutions with ReLU6 and
    batch norms after concatenations: the input-gradient-only backward, folded scales and
    kept guided masks give each unit's plain projection."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = _fitted_norms(getattr(torchvision.models, arch)(weights=None))
    image = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), borrowed_model(net), capture(net, layer) as captured:
        net(image[None])
    activation = captured.activation(layer)[0]
    strongest = np.unravel_index(activation.flatten().topk(2).indices.numpy(), activation.shape)
    units = [tuple(int(i) for i in unit) for unit in zip(*strongest, strict=True)]
    units.append(units[0])  # the same unit again through the same graph
    with unchanged(net, image), borrowed_model(net), backward_rule(net, "guided", reused=True):
        found = unit_gradients(net, layer, image, units)
    for (channel, y, x), got in zip(units, found, strict=True):
        want = project_unit(net, image, layer, channel, (y, x), rule="guided", crop=False)
        want = want.projection
        assert got.abs().sum() > 0
        # float rounding of two evaluation orders, relative to the map's scale
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()


class _Reshaped(nn.Module):
    """A small CNN whose last layer gets a registered reshape (channels reversed), so a
    unit's channel index refers to the recorded grid, not the raw output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(31)
        self.c = nn.Conv2d(3, 6, 3, padding=1)
        self.l = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l(torch.relu(self.c(x)))


def test_projections_at_a_layer_with_a_registered_reshape(unchanged):
    # the unit is an element of the reshaped grid, and its gradient reaches the input
    # (capture's own grid is a leaf: right for gradients w.r.t. the grid, not for these)
    net = _Reshaped().eval()
    image = torch.randn(3, 12, 12, generator=torch.Generator().manual_seed(32))
    units = [(1, 5, 5), (3, 2, 9)]
    register_reshape(net.l, lambda o: o.flip(1))
    try:
        with unchanged(net, image), borrowed_model(net):
            with backward_rule(net, "guided", reused=True):
                found = unit_gradients(net, "l", image, units)
            alone = project_unit(net, image, "l", 3, (2, 9), rule="guided", crop=False)
        for (channel, y, x), got in zip(units, found, strict=True):
            leaf = image[None].clone().requires_grad_(True)
            with backward_rule(net, "guided"):
                grid = net(leaf).flip(1)
                (want,) = torch.autograd.grad(grid[0, channel, y, x], leaf)
            torch.testing.assert_close(got, want[0], rtol=1e-5, atol=1e-7)
            assert want.abs().amax() > 0
        torch.testing.assert_close(alone.projection, found[1], rtol=1e-5, atol=1e-7)
    finally:
        register_reshape(net.l, None)
