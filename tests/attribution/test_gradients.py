"""Gradient methods: exact values on linear models, invariants on a small smooth network
(batch == single calls, chunking never changes results), IG completeness, model hygiene."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convlens.attribution.gradients import (
    input_x_gradient,
    integrated_gradients,
    saliency,
    smoothgrad,
)
from convlens.errors import MethodError, TargetError


class Linear(nn.Module):
    """logits[k] = sum(W[k] * x) + b[k] on ``[B, 3, 4, 4]`` inputs."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 3, 4, 4))
        self.bias = nn.Parameter(torch.randn(3) if bias else torch.zeros(3), requires_grad=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,kchw->bk", x, self.weight) + self.bias


class SmoothNet(nn.Module):
    """Conv -> softplus -> dropout -> average pool -> linear: smooth, with a train-only part."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.Softplus()
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(6 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.act(self.conv(x)))
        return self.head(nn.functional.adaptive_avg_pool2d(h, 2).flatten(1))


def test_saliency_and_input_x_gradient_exact_on_linear_model(unchanged):
    model = Linear(bias=False)
    images = torch.randn(2, 3, 4, 4)
    with unchanged(model, images):
        max_abs = saliency(model, images, [2, 0])
        square = saliency(model, images, [2, 0], reduce="square")
        ixg = input_x_gradient(model, images, [2, 0])
    for n, t in enumerate([2, 0]):
        torch.testing.assert_close(max_abs[n], model.weight[t].abs().amax(0).detach())
        torch.testing.assert_close(square[n], model.weight[t].square().sum(0).detach())
        torch.testing.assert_close(ixg[n], (images[n] * model.weight[t]).sum(0).detach())
        # Without bias, input x gradient sums to the logit itself.
        torch.testing.assert_close(ixg[n].sum(), model(images)[n, t].detach())


def test_smoothgrad_of_linear_model_is_its_saliency():
    model = Linear()
    images = torch.randn(2, 3, 4, 4)
    expected = saliency(model, images, 1)
    torch.testing.assert_close(smoothgrad(model, images, 1, n_samples=5, noise=0.3), expected)


def test_smoothgrad_seeded_chunking_and_batch_invariant():
    model = SmoothNet()
    images = torch.randn(3, 3, 4, 4)
    targets = [1, 3, 0]
    reference = smoothgrad(model, images, targets, n_samples=7, batch_size=64)
    for batch_size in (1, 5):
        got = smoothgrad(model, images, targets, n_samples=7, batch_size=batch_size)
        torch.testing.assert_close(got, reference, atol=1e-6, rtol=1e-5)
    for n, t in enumerate(targets):
        single = smoothgrad(model, images[n : n + 1], t, n_samples=7)
        torch.testing.assert_close(single, reference[n : n + 1], atol=1e-5, rtol=0)
    other_seed = smoothgrad(model, images, targets, n_samples=7, seed=1)
    assert not torch.allclose(other_seed, reference)
    no_noise = smoothgrad(model, images, targets, n_samples=3, noise=0.0)
    torch.testing.assert_close(no_noise, saliency(model, images, targets))


class FirstPixel(nn.Module):
    """Class 0 scores the first pixel, class 1 is constant zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0, 0, 0], x[:, 0, 0, 0] * 0], dim=1)


def test_smoothgrad_keeps_the_clean_top_class_for_noisy_copies():
    images = torch.linspace(-1, 1, 48).view(1, 3, 4, 4).clone()
    images[0, 0, 0, 0] = 0.01  # top class 0, but noise flips it for about half the copies
    maps = smoothgrad(FirstPixel(), images, "top1", n_samples=20, noise=0.5)
    expected = torch.zeros(1, 4, 4)
    expected[0, 0, 0] = 1.0
    torch.testing.assert_close(maps, expected)


def test_integrated_gradients_exact_on_linear_model():
    model = Linear()
    images = torch.randn(2, 3, 4, 4)
    baseline = torch.randn(3, 4, 4)
    maps, extras = integrated_gradients(model, images, [0, 2], baseline=baseline, n_steps=3)
    for n, t in enumerate([0, 2]):
        expected = ((images[n] - baseline) * model.weight[t]).sum(0).detach()
        torch.testing.assert_close(maps[n], expected)
    assert bool((extras["completeness_error"] < 1e-5).all())


def test_integrated_gradients_completeness_within_one_percent_at_200_steps(unchanged):
    model = SmoothNet()
    with torch.no_grad():
        model.head.weight.mul_(10)  # a score change far from zero, so 1% is a real bound
    images = 2 * torch.randn(2, 3, 4, 4)
    with unchanged(model, images):
        maps, extras = integrated_gradients(model, images, [0, 3], n_steps=200)
    logits = model.eval()(images) - model(torch.zeros_like(images))
    delta = logits[[0, 1], [0, 3]].detach()
    assert bool((delta.abs() > 0.2).all())
    torch.testing.assert_close(maps.flatten(1).sum(1), delta, rtol=0.01, atol=0)
    assert bool((extras["completeness_error"] < 0.01).all())
    coarse = integrated_gradients(model, images, [0, 3], n_steps=2)[1]["completeness_error"]
    assert bool((coarse > extras["completeness_error"]).all())  # the error is a real measure


def test_integrated_gradients_chunking_and_batch_invariant():
    model = SmoothNet()
    with torch.no_grad():
        model.head.weight.mul_(10)  # keeps S(x) - S(x') away from 0, the error's denominator
    images = torch.randn(3, 3, 4, 4)
    baseline = torch.randn(3, 3, 4, 4)
    reference, extras = integrated_gradients(model, images, [1, 2, 3], baseline=baseline, n_steps=9)
    for batch_size in (1, 4, 100):
        got, got_extras = integrated_gradients(
            model, images, [1, 2, 3], baseline=baseline, n_steps=9, batch_size=batch_size
        )
        torch.testing.assert_close(got, reference, atol=1e-6, rtol=1e-5)
        # float32 scores differ in the last bits between batch layouts; the error is relative.
        torch.testing.assert_close(
            got_extras["completeness_error"], extras["completeness_error"], atol=1e-3, rtol=0
        )
    for n, t in enumerate([1, 2, 3]):
        single, _ = integrated_gradients(
            model, images[n : n + 1], t, baseline=baseline[n], n_steps=9
        )
        torch.testing.assert_close(single, reference[n : n + 1], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, x: saliency(m, x, reduce="mean"), "max_abs"),
        (lambda m, x: smoothgrad(m, x, n_samples=0), "n_samples"),
        (lambda m, x: integrated_gradients(m, x, n_steps=1), "n_steps"),
        (lambda m, x: integrated_gradients(m, x, baseline=torch.zeros(3, 5, 5)), "baseline"),
        (lambda m, x: integrated_gradients(m, x, baseline="black"), "baseline"),
    ],
)
def test_bad_options_raise_method_errors(call, message):
    with pytest.raises(MethodError, match=message):
        call(SmoothNet(), torch.randn(2, 3, 4, 4))


@pytest.mark.parametrize("method", [saliency, input_x_gradient, smoothgrad, integrated_gradients])
def test_hygiene_train_mode_frozen_and_after_exception(method, unchanged):
    model = SmoothNet()
    images = torch.randn(2, 3, 4, 4, requires_grad=True)
    model.eval()
    reference = method(model, images, 1)
    model.train()
    for parameter in model.conv.parameters():
        parameter.requires_grad_(False)
    with unchanged(model, images):
        first, second = method(model, images, 1), method(model, images, 1)
        with pytest.raises(TargetError):
            method(model, images, lambda output: output)  # wrong score shape
    for got in (first, second):
        got = got[0] if isinstance(got, tuple) else got
        torch.testing.assert_close(got, reference[0] if isinstance(reference, tuple) else reference)
    assert model.training and model.drop.training


class NormNet(nn.Module):
    """Every path of the input-gradient-only backward that explain's gradient methods take
    (`convlens.layers.input_gradient`): eval batch norms with negative scales, a 1x1
    convolution on a map at or above `PRODUCT_PIXELS` (a matrix product) and one below it
    (the transposed convolution), a strided padded 3x3 convolution, constant padding, a
    residual sum."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.wide = nn.Conv2d(8, 8, 1)  # 30 x 30 map: the matrix product
        self.bn2 = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.narrow = nn.Conv2d(6, 6, 1, bias=False)  # 15 x 15: the transposed convolution
        self.bn3 = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 4)
        for norm in (self.bn1, self.bn2, self.bn3):
            count = norm.num_features
            norm.running_mean.copy_(torch.randn(count, generator=generator))
            norm.running_var.copy_(torch.rand(count, generator=generator) + 0.5)
            norm.weight.data.copy_(torch.randn(count, generator=generator))  # some negative
            norm.bias.data.copy_(torch.randn(count, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.stem(nn.functional.pad(x, (1, 1, 1, 1), value=0.5))))
        h = torch.relu(self.bn2(self.wide(h)) + h)
        h = torch.relu(self.down(h))
        h = torch.relu(self.bn3(self.narrow(h)))
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("rows", ["distinct", "shared"])
def test_input_gradient_equals_native_autograd_on_batch_norm_networks(rows, unchanged):
    # explain's gradient methods run the forward pass inside `input_gradients_only`; the
    # gradient must be the native one, for distinct rows and for rows sharing a forward pass
    model = NormNet().eval()
    torch.manual_seed(6)
    images = torch.randn(3, 3, 28, 28)
    if rows == "shared":  # one image explained for four classes: one forward pass
        images = images[[0, 0, 0, 0]]
    targets = [1, 3, 0, 2][: len(images)]
    leaf = images.clone().requires_grad_(True)
    scores = model(leaf)[torch.arange(len(images)), targets]
    (native,) = torch.autograd.grad(scores.sum(), leaf)
    with unchanged(model, images):
        ixg = input_x_gradient(model, images, targets)
    torch.testing.assert_close(ixg, (images * native).sum(1), rtol=1e-5, atol=1e-6)
    assert ixg.abs().amax() > 0
