"""Backward rules on real architectures, against an independent reference.

The reference is a deep copy of the model in which every ``nn.ReLU``/``nn.ReLU6`` module is
made out-of-place and given a module backward hook that applies the rule (guided: keep the
positive part of the rectifier's own input gradient; deconvnet: pass the positive part of
the upstream gradient). It shares no code with `convlens.attribution.rules`. Covered:
timm's ``BatchNormAct2d`` holding an inplace ReLU6 module (the default EfficientNet-Lite0),
torchvision's ResNet (one inplace ReLU reused within each block), and the use
``convlens.features`` makes of `backward_rule`: projecting one unit of a captured layer
back to pixels.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from convlens.attribution.rules import deconvnet, guided_backprop, rule_gradient
from convlens.layers import borrowed_model, capture, receptive_field
from convlens.layers.rules import backward_rule


def rule_hook(rule: str):
    def hook(_module, grad_input, grad_output):
        if rule == "guided":  # grad_input = upstream * 1[0 < z < t] already
            return (grad_input[0].clamp(min=0),)
        return (grad_output[0].clamp(min=0),)

    return hook


def hooked_copy(model: nn.Module, rule: str) -> tuple[nn.Module, list[int]]:
    """The reference: an eval-mode copy whose rectifier modules apply ``rule`` through
    backward hooks; also returns a counter of rectifier module calls."""
    reference = copy.deepcopy(model).eval()
    calls = [0]

    def count(*_args) -> None:
        calls[0] += 1

    for module in reference.modules():
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            module.inplace = False  # module backward hooks refuse in-place outputs
            module.register_forward_hook(count)
            module.register_full_backward_hook(rule_hook(rule))
    return reference, calls


def reference_gradient(
    model: nn.Module, images: torch.Tensor, targets: list[int], rule: str
) -> tuple[torch.Tensor, int]:
    reference, calls = hooked_copy(model, rule)
    inputs = images.clone().requires_grad_(True)
    output = reference(inputs)
    score = output[torch.arange(len(images)), torch.tensor(targets)].sum()
    (gradient,) = torch.autograd.grad(score, inputs)
    return gradient, calls[0]


def plain_gradient(model: nn.Module, images: torch.Tensor, targets: list[int]) -> torch.Tensor:
    inputs = images.clone().requires_grad_(True)
    with borrowed_model(model):
        output = model(inputs)
        score = output[torch.arange(len(images)), torch.tensor(targets)].sum()
        (gradient,) = torch.autograd.grad(score, inputs)
    return gradient


def assert_close_scaled(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal up to float32 rounding, relative to the largest magnitude."""
    scale = want.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(got, want, atol=1e-5 * scale, rtol=1e-4)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10)


@pytest.fixture(params=["default_model", "resnet18"])
def case(request) -> tuple[nn.Module, torch.Tensor, list[int]]:
    if request.param == "default_model":
        module = request.getfixturevalue("default_model").module
        return module, torch.randn(2, 3, 64, 64), [281, 7]
    return request.getfixturevalue("resnet18"), torch.randn(2, 3, 32, 32), [3, 8]


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_rules_match_module_hook_reference_on_real_architectures(case, rule, unchanged):
    model, images, targets = case
    was_training = model.training
    model.train()  # explained in eval mode, handed back in train mode
    try:
        want, module_calls = reference_gradient(model, images, targets, rule)
        with unchanged(model, images):
            got = rule_gradient(model, images, targets, rule)
            with backward_rule(model, rule) as session, borrowed_model(model):
                model(images.clone().requires_grad_(True))
            maps = (guided_backprop if rule == "guided" else deconvnet)(model, images, targets)
        assert model.training
    finally:
        model.train(was_training)
    assert session.calls == module_calls > 0  # every call of every rectifier module
    assert_close_scaled(got, want)
    assert_close_scaled(maps, want.abs().amax(dim=1))
    # The rule changes the result here, so skipping a rectifier could not pass unnoticed.
    plain = plain_gradient(model, images, targets)
    assert (got - plain).abs().max() > 1e-2 * plain.abs().max()


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_backward_rule_projects_one_captured_unit_to_pixels(default_model, rule, unchanged):
    """The features/ use: the gradient of one unit of a captured layer w.r.t. the input,
    under the rule, equals the hooked reference and stays inside the unit's receptive field."""
    efficientnet, layer = default_model.module, "blocks.1"
    images = torch.randn(1, 3, 64, 64)
    with unchanged(efficientnet, images):
        inputs = images.clone().requires_grad_(True)
        with (
            borrowed_model(efficientnet),
            capture(efficientnet, layer, gradients=True) as cap,
            backward_rule(efficientnet, rule),
        ):
            efficientnet(inputs)
            activation = cap.activation(layer)
            channel, flat = divmod(int(activation[0].flatten().argmax()), activation[0, 0].numel())
            row, col = divmod(flat, activation.shape[-1])
            (projection,) = torch.autograd.grad(activation[0, channel, row, col], inputs)

    reference, _ = hooked_copy(efficientnet, rule)
    outputs = []
    handle = reference.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: outputs.append(out)
    )
    ref_inputs = images.clone().requires_grad_(True)
    reference(ref_inputs)
    handle.remove()
    (want,) = torch.autograd.grad(outputs[0][0, channel, row, col], ref_inputs)
    assert_close_scaled(projection, want)
    top, left, bottom, right = receptive_field(efficientnet, layer, images).box(row, col, 64, 64)
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[top : bottom + 1, left : right + 1] = True
    assert bool((projection[0].abs().amax(0)[~inside] == 0).all())
    assert projection[0].abs().amax(0)[inside].max() > 0


def test_rule_is_bound_when_the_forward_pass_runs():
    """features/ may take gradients after the block: what counts is where the forward ran."""
    x = torch.tensor([-1.0, 2.0, 3.0], requires_grad=True)
    upstream = torch.tensor([1.0, -1.0, 1.0])
    with backward_rule(nn.Identity(), "guided"):
        inside = torch.relu(x * 1)
    outside = torch.relu(x * 1)
    (after_block,) = torch.autograd.grad(inside, x, upstream)
    with backward_rule(nn.Identity(), "guided"):
        (plain,) = torch.autograd.grad(outside, x, upstream)
    torch.testing.assert_close(after_block, torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(plain, torch.tensor([0.0, -1.0, 1.0]))
