"""Deconvnet and guided backprop: the rules against a hand-written chain rule, reached through
modules and functional calls alike, and a model left exactly as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlens.attribution.rules import deconvnet, guided_backprop, rule_gradient
from convlens.errors import LayerError, MethodError, TargetError
from convlens.layers import borrowed_model
from convlens.layers.rules import backward_rule


class ReusedReluNet(nn.Module):
    """Four linear layers; one inplace nn.ReLU used twice, then a functional F.relu."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(6, 5), nn.Linear(5, 5)
        self.l3, self.l4 = nn.Linear(5, 4), nn.Linear(4, 3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.l1(x.flatten(1)))
        h = self.act(self.l2(h))
        return self.l4(F.relu(self.l3(h)))


def manual_gradient(net: ReusedReluNet, x: torch.Tensor, target: int, rule: str) -> torch.Tensor:
    """The chain rule written out by hand for one input ``[3, 1, 2]``."""
    layers = [net.l1, net.l2, net.l3]
    pre, h = [], x.flatten()
    with torch.no_grad():
        for layer in layers:
            z = layer.weight @ h + layer.bias
            pre.append(z)
            h = z.clamp(min=0)
        g = net.l4.weight[target].clone()
        for layer, z in zip(reversed(layers), reversed(pre), strict=True):
            if rule == "plain":
                g = g * (z > 0)
            elif rule == "guided":
                g = g * (z > 0) * (g > 0)
            else:
                g = g * (g > 0)
            g = layer.weight.T @ g
    return g.view(x.shape)


@pytest.fixture
def net() -> ReusedReluNet:
    torch.manual_seed(3)
    return ReusedReluNet()


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_rule_matches_hand_written_chain_rule(net, unchanged, rule):
    images = torch.randn(4, 3, 1, 2)
    targets = [0, 2, 1, 2]
    with unchanged(net, images):
        got = rule_gradient(net, images, targets, rule)
    for n, t in enumerate(targets):
        want = manual_gradient(net, images[n], t, rule)
        torch.testing.assert_close(got[n], want, atol=1e-6, rtol=1e-5)
        # The rule must matter here, or this test could not catch it being skipped.
        assert not torch.allclose(want, manual_gradient(net, images[n], t, "plain"))


def test_rules_count_reused_module_and_functional_calls(net):
    images = torch.randn(2, 3, 1, 2, requires_grad=True)
    with backward_rule(net, "guided") as session:
        net(images).sum()
    assert session.calls == 3  # the shared nn.ReLU twice, F.relu once


def test_every_relu_call_of_torchvision_resnet_gets_the_rule():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None).eval()
    images = torch.randn(1, 3, 32, 32, requires_grad=True)
    with backward_rule(model, "deconvnet") as session:
        model(images)
    assert session.calls == 1 + 8 * 2  # stem + two calls of each block's one inplace ReLU


@pytest.mark.parametrize(
    "activation",
    [
        lambda t: torch.relu(t),
        lambda t: t.relu(),
        lambda t: torch.relu_(t * 1),
        lambda t: F.relu(t * 1, inplace=True),
        lambda t: F.relu6(t),
        lambda t: nn.ReLU6(inplace=True)(t * 1),
        lambda t: F.hardtanh(t, 0.0, 6.0),
        lambda t: nn.Hardtanh(0.0, 6.0)(t),
    ],
)
@pytest.mark.parametrize("reused", [False, True])
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_each_rectifier_form_follows_the_rule(activation, rule, reused):
    """Also through one graph three times (``reused``: the guided masks kept from the first
    pass), each time with another upstream gradient."""
    x = torch.tensor([-1.0, 2.0, 7.0, 3.0, -2.0, 6.0, 0.0], requires_grad=True)
    upstreams = torch.tensor(
        [[1.0, -1.0, 1.0, 2.0, -3.0, 1.0, 1.0], [-1.0, 1.0, -2.0, 0.0, 3.0, -1.0, 2.0]]
    )
    with backward_rule(nn.Identity(), rule, reused=reused) as session:
        y = activation(x)
    plain_out = activation(x.detach())
    torch.testing.assert_close(y.detach(), plain_out)
    upper = 6.0 if bool(plain_out.max() == 6) else float("inf")  # x holds 7: clipped or not
    active = (x.detach() > 0) & (x.detach() < upper)
    for upstream in (upstreams[0], upstreams[1], upstreams[0]):
        (grad,) = torch.autograd.grad(y, x, upstream, retain_graph=True)
        keep = upstream > 0 if rule == "deconvnet" else (upstream > 0) & active
        torch.testing.assert_close(grad, torch.where(keep, upstream, 0.0))
    assert session.calls == 1


def test_reused_guided_masks_stay_on_the_input_device():
    """The kept masks are made on the device of the rectifier's output (here the meta
    device, which stands in for a GPU: mixing devices fails the same way)."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6(), nn.Conv2d(4, 2, 3)).to("meta")
    x = torch.empty(1, 3, 8, 8, device="meta", requires_grad=True)
    with backward_rule(net, "guided", reused=True):
        y = net(x)
    for _ in range(2):
        (grad,) = torch.autograd.grad(y[0, 0, 1, 1], x, retain_graph=True)
        assert grad.device.type == "meta" and grad.shape == x.shape


def test_other_clamps_and_tensors_without_grad_are_left_alone():
    x = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    with backward_rule(nn.Identity(), "deconvnet") as session:
        y = x.clamp(min=-0.5, max=1.0) + torch.relu(torch.ones(3))
        (grad,) = torch.autograd.grad(y, x, torch.tensor([-1.0, -1.0, -1.0]))
    assert session.calls == 0
    torch.testing.assert_close(grad, torch.tensor([0.0, -1.0, 0.0]))


class NoRectifierNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.tanh(self.conv(x))).flatten(1))


def test_rules_without_rectifiers_are_refused(unchanged):
    model = NoRectifierNet()
    images = torch.randn(3, 3, 8, 8)
    with unchanged(model, images):
        # The rules would change nothing: each would silently be the saliency map.
        with pytest.raises(MethodError, match="deconvnet rule matched no rectifier"):
            deconvnet(model, images, [1, 4, 0])
        with pytest.raises(MethodError, match="'saliency'"):
            guided_backprop(model, images, [1, 4, 0])


class ClampGuard(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0, 1)


class ClampGuardNet(NoRectifierNet):
    """`NoRectifierNet` behind an input guard ``x.clamp(0, 1)`` (and a ``clamp_min(0)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.clamp_min(x.clamp(0, 1), 0))


@pytest.mark.parametrize(
    "clamp",
    [
        lambda t: t.clamp(0, 1),
        lambda t: t.clamp(min=0),
        lambda t: torch.clamp(t, 0.0),
        lambda t: t.clip(0, 6),
        lambda t: torch.clamp_min(t, 0),
        lambda t: (t * 1).clamp_(min=0),
    ],
)
def test_clamps_are_not_rectifiers(clamp):
    x = torch.tensor([-1.0, 0.5, 2.0, 0.2], requires_grad=True)
    upstream = torch.tensor([-1.0, -1.0, 1.0, 2.0])
    with backward_rule(nn.Identity(), "guided") as session:
        (grad,) = torch.autograd.grad(clamp(x), x, upstream)
    (plain,) = torch.autograd.grad(clamp(x), x, upstream)
    assert session.calls == 0
    torch.testing.assert_close(grad, plain)


def test_input_guard_clamp_does_not_make_a_rule_method(unchanged):
    # A ReLU-free model with x.clamp(0, 1) on its input: the guard used to count as a
    # rectifier, so guided backprop silently became the positive part of the gradient.
    model, images = ClampGuardNet(), torch.rand(2, 3, 8, 8) * 1.5 - 0.25
    with unchanged(model, images), pytest.raises(MethodError, match="clamp/clip do not count"):
        guided_backprop(model, images, [1, 3])
    # Behind ReLUs the guard keeps its plain gradient and only the ReLUs get the rule.
    relu_model = nn.Sequential(ClampGuard(), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())
    with backward_rule(relu_model, "guided") as session:
        relu_model(images.requires_grad_(True))
    assert session.calls == 1


def test_maps_are_max_abs_over_channels_and_batch_equals_single_calls(net):
    images = torch.randn(3, 3, 1, 2)
    targets = [2, 0, 1]
    for method, rule in [(guided_backprop, "guided"), (deconvnet, "deconvnet")]:
        batch = method(net, images, targets)
        torch.testing.assert_close(batch, rule_gradient(net, images, targets, rule).abs().amax(1))
        for n, t in enumerate(targets):
            torch.testing.assert_close(
                batch[n : n + 1], method(net, images[n : n + 1], t), atol=1e-5, rtol=0
            )


def test_rule_removed_and_model_restored_after_exception(net, unchanged):
    net.train()
    images = torch.randn(2, 3, 1, 2, requires_grad=True)

    def bad_target(output: torch.Tensor) -> torch.Tensor:
        return output  # wrong shape: one score per image is required

    with unchanged(net, images), pytest.raises(TargetError):
        guided_backprop(net, images, bad_target)
    assert net.training
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    (grad,) = torch.autograd.grad(torch.relu(x), x, torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(grad, torch.tensor([0.0, -1.0]))  # plain ReLU gradient again


def test_train_mode_model_is_explained_in_eval_mode(unchanged):
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )
    images = torch.randn(2, 3, 8, 8)
    model.eval()
    reference = guided_backprop(model, images, 1)
    model.train()
    with unchanged(model, images):
        first = guided_backprop(model, images, 1)
        second = guided_backprop(model, images, 1)
    assert model.training and model[2].training
    torch.testing.assert_close(first, reference)
    torch.testing.assert_close(second, reference)


def test_frozen_parameters_work(net, unchanged):
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    images = torch.randn(2, 3, 1, 2)
    with unchanged(net, images):
        got = rule_gradient(net, images, [0, 1], "guided")
    torch.testing.assert_close(got[0], manual_gradient(net, images[0], 0, "guided"))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_unknown_rule_and_torchscript_raise_clear_errors(net):
    with pytest.raises(MethodError, match="guided"), backward_rule(net, "lrp"):
        pass
    scripted = torch.jit.script(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    with pytest.raises(LayerError, match="eager"), backward_rule(scripted, "guided"):
        pass


def test_default_model_rectifiers_all_get_the_rule(default_model, unchanged):
    module = default_model.module
    images = torch.randn(1, 3, 224, 224)
    rectifiers = sum(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in module.modules())
    with unchanged(module, images):
        with borrowed_model(module), backward_rule(default_model, "guided") as session:
            module(images.clone().requires_grad_(True))
        maps = guided_backprop(default_model, images)
    assert rectifiers > 10 and session.calls == rectifiers
    assert maps.shape == (1, 224, 224) and bool(torch.isfinite(maps).all())
