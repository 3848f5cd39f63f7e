"""Activation maximisation: objectives rise, the model is borrowed, Fourier round-trips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convlens import load_model
from convlens.errors import MethodError
from convlens.features.optimize import (
    FourierImage,
    PixelImage,
    Seen,
    Transforms,
    channel,
    class_logit,
    deepdream,
    gaussian_blur,
    neuron,
    render,
    total_variation,
)
from convlens.models.preprocess import Preprocess


def tiny_classifier() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


@pytest.mark.parametrize("param", ["fourier", "pixels"])
def test_fourier_and_pixels_round_trip(param):
    images = torch.rand(2, 3, 12, 10) * 0.98 + 0.01
    image_param = {"fourier": FourierImage, "pixels": PixelImage}[param](2, 12, 10)
    image_param.set_image(images)
    assert torch.allclose(image_param.image(), images, atol=1e-5)


def test_objective_rises_tenfold_and_model_is_unchanged(unchanged):
    net = tiny_classifier()
    with torch.no_grad():  # grey (0 after normalisation) gives exactly 0.01 on channel 2
        net[0].bias.zero_()
        net[3].bias.fill_(0.01)
    net.train()
    grey_is_zero = Preprocess(size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    loaded = load_model(net, preprocess=grey_is_zero)
    with unchanged(net):
        result = render(loaded, channel("3", 2), steps=30, lr=0.1, seed=3)
    start, end = float(result.history[0, 0]), float(result.history[-1, 0])
    assert start == pytest.approx(0.01) and end >= 10 * start
    assert net.training and not any(p.grad is not None for p in net.parameters())
    assert result.images.shape == (1, 3, 32, 32)
    assert 0 <= float(result.images.min()) and float(result.images.max()) <= 1


def test_batch_of_objectives_equals_each_alone_and_is_reproducible():
    net = tiny_classifier()
    objectives = [class_logit(1), neuron("1", 0) - 0.1 * total_variation(), deepdream("3")]
    settings = dict(steps=5, size=16, param="pixels", transforms=Transforms(2, (1.0,), 0.0))
    together = render(net, objectives, **settings, seed=7)
    again = render(net, objectives, **settings, seed=7)
    assert torch.equal(together.images, again.images)
    alone = render(net, objectives[1], **settings, seed=7)
    # Same seed -> same transforms; images do not interact through the summed score.
    assert torch.allclose(alone.images[0], together.images[1], atol=1e-5)
    assert together.objectives[1].startswith("1:0")


def test_composition_arithmetic():
    seen = Seen(torch.full((2, 3, 4, 4), 0.5), {}, torch.tensor([[1.0, 2.0], [3.0, 5.0]]))
    combined = 2 * class_logit(1) - class_logit(0) + (-class_logit(1))
    assert torch.equal(combined(seen), torch.tensor([1.0, 2.0]))  # c1 - c0
    assert torch.equal(total_variation()(seen), torch.zeros(2))


def test_blur_keeps_constant_images_and_start_from_image():
    flat = torch.full((1, 3, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(flat, 1.0), flat)
    net = tiny_classifier()
    start = torch.rand(3, 16, 16) * 0.8 + 0.1
    result = render(net, class_logit(0), steps=1, size=16, start=start, lr=1e-8, transforms=None)
    assert torch.allclose(result.images[0], start, atol=1e-4)


def test_bad_options_raise():
    net = tiny_classifier()
    with pytest.raises(MethodError):
        render(net, class_logit(0), param="wavelet", steps=1, size=8)
    with pytest.raises(MethodError):
        render(net, "class 0", steps=1, size=8)
