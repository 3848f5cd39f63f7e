"""Activation maximisation: objectives rise, the model is borrowed, Fourier round-trips,
objective values are hand-computed, bad input is refused before any update."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convlens import load_model
from convlens.data.preprocess import IMAGENET_PREPROCESS, Preprocess
from convlens.errors import LayerError, MethodError, TargetError
from convlens.features.objectives import (
    Seen,
    channel,
    class_logit,
    deepdream,
    l2_decay,
    neuron,
    total_variation,
)
from convlens.features.optimize import FourierImage, PixelImage, Transforms, visualize
from convlens.maps import gaussian_blur
from convlens.targets import contrast

NO_TRANSFORM = dict(transforms=None, param="pixels")


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


def normalised(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_PREPROCESS.mean).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_PREPROCESS.std).view(1, 3, 1, 1)
    return (images - mean) / std


@pytest.mark.parametrize("param", ["fourier", "pixels"])
def test_fourier_and_pixels_round_trip(param):
    images = torch.rand(2, 3, 12, 10) * 0.98 + 0.01
    image_param = {"fourier": FourierImage, "pixels": PixelImage}[param](2, 12, 10)
    image_param.set_image(images)
    assert torch.allclose(image_param.image(), images, atol=1e-5)


def test_objective_rises_tenfold_from_a_blank_start_and_model_is_unchanged(unchanged):
    net = tiny_classifier()
    net.train()
    with unchanged(net):
        # A normal visualization: grey start, default lr, Fourier, jitter/scale/rotation.
        result = visualize(net, channel("4", 5), steps=100, size=32, seed=3)
    grey = normalised(torch.full((1, 3, 32, 32), 0.5))
    with torch.no_grad():
        start = float(net[:5](grey)[0, 5].mean())
    assert start > 0
    # history[0] is the real starting value (a transformed grey image is still grey).
    assert float(result.history[0, 0]) == pytest.approx(start, rel=1e-5)
    assert float(result.final[0]) >= 10 * start
    assert net.training and not any(p.grad is not None for p in net.parameters())
    assert result.images.shape == (1, 3, 32, 32)
    assert 0 <= float(result.images.min()) and float(result.images.max()) <= 1


def test_final_score_is_the_objective_of_the_returned_image():
    net = tiny_classifier()
    result = visualize(net, channel("4", 2), steps=3, size=16, seed=0)
    with torch.no_grad():
        direct = net[:5](normalised(result.images))[0, 2].mean()
    assert float(result.final[0]) == pytest.approx(float(direct), rel=1e-5)
    assert result.history.shape == (3, 1)


def test_batch_of_objectives_equals_each_alone_and_is_reproducible():
    net = tiny_classifier()
    objectives = [class_logit(1), neuron("1", 0) - 0.1 * total_variation(), deepdream("3")]
    settings = dict(steps=5, size=16, param="pixels", transforms=Transforms(2, (1.0,), 0.0))
    together = visualize(net, objectives, **settings, seed=7)
    again = visualize(net, objectives, **settings, seed=7)
    assert torch.equal(together.images, again.images)
    alone = visualize(net, objectives[1], **settings, seed=7)
    # Same seed -> same transforms; images do not interact through the summed score.
    assert torch.allclose(alone.images[0], together.images[1], atol=1e-5)
    assert together.objectives[1].startswith("1:0")


def test_seeds_change_noise_start_and_transforms():
    net = tiny_classifier()
    settings = dict(steps=3, size=16, start="noise")
    first, same = (visualize(net, channel("3", 1), **settings, seed=1) for _ in range(2))
    other = visualize(net, channel("3", 1), **settings, seed=2)
    assert torch.equal(first.images, same.images)
    assert float((first.images - other.images).abs().max()) > 1e-3


def test_composition_arithmetic_and_bad_operands():
    seen = Seen(torch.full((2, 3, 4, 4), 0.5), {}, torch.tensor([[1.0, 2.0], [3.0, 5.0]]))
    combined = 2 * class_logit(1) - class_logit(0) + (-class_logit(1))
    assert torch.equal(combined(seen), torch.tensor([1.0, 2.0]))  # c1 - c0
    assert torch.equal(total_variation()(seen), torch.zeros(2))
    for bad in (
        lambda: class_logit(1) + 2.0,
        lambda: class_logit(1) - "x",
        lambda: class_logit(1) * torch.ones(3),
        lambda: True * class_logit(1),
    ):
        with pytest.raises(MethodError):
            bad()


def test_objective_values_hand_computed():
    images = torch.zeros(2, 3, 2, 2)
    images[0, 0, 0, 0] = 1.0  # image 0: one white red pixel on black
    acts = torch.arange(2 * 3 * 3 * 4, dtype=torch.float32).view(2, 3, 3, 4)
    seen = Seen(images, {"a": acts}, torch.zeros(2, 5))
    # l2 decay: -w mean (x - 0.5)^2 = -w * 0.25 (every pixel is 0.5 away from grey)
    assert torch.allclose(l2_decay(2.0)(seen), torch.tensor([-0.5, -0.5]))
    # neuron: default centre (3 // 2, 4 // 2) = (1, 2); explicit (2, 3)
    assert torch.equal(neuron("a", 1)(seen), acts[:, 1, 1, 2])
    assert torch.equal(neuron("a", 2, 2, 3)(seen), acts[:, 2, 2, 3])
    assert torch.equal(neuron("a", 2, 2, 3)(seen), torch.tensor([35.0, 71.0]))
    # deepdream: mean of squares over channels and positions
    expected = torch.tensor(
        [sum(v * v for v in range(36)) / 36, sum(v * v for v in range(36, 72)) / 36]
    )
    assert torch.allclose(deepdream("a")(seen), expected)
    assert torch.allclose(channel("a", 0)(seen), acts[:, 0].mean((1, 2)))
    # total variation: |row diff| mean + |col diff| mean; image 0 has one edge each way
    assert torch.allclose(total_variation()(seen), torch.tensor([-(1 / 6 + 1 / 6), 0.0]))


def test_periodic_blur_runs_inside_visualize():
    net = tiny_classifier()
    torch.manual_seed(0)
    start = torch.rand(3, 16, 16) * 0.8 + 0.1
    settings = dict(steps=2, start=start, lr=1e-9, **NO_TRANSFORM)
    plain = visualize(net, class_logit(0), **settings)
    blurred = visualize(net, class_logit(0), blur_every=1, blur_sigma=1.0, **settings)
    # Blur after step 0 only (never after the last step); the updates are ~0.
    assert torch.allclose(plain.images[0], start, atol=1e-4)
    once = gaussian_blur(start[None], kernel_size=5, sigma=1.0)[0]  # radius ceil(2 sigma)
    assert torch.allclose(blurred.images[0], once, atol=1e-4)
    assert float((blurred.images - plain.images).abs().max()) > 0.05


def test_blur_keeps_constant_images_and_start_from_image():
    flat = torch.full((1, 3, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(flat, kernel_size=5, sigma=1.0), flat)
    net = tiny_classifier()
    start = torch.rand(3, 16, 20) * 0.8 + 0.1
    result = visualize(net, class_logit(0), steps=1, start=start, lr=1e-8, transforms=None)
    assert result.images.shape == (1, 3, 16, 20)  # size defaults to the start image's
    assert torch.allclose(result.images[0], start, atol=1e-4)


def test_layers_resolve_once_whatever_their_spelling():
    net = tiny_classifier()
    settings = dict(steps=2, size=16, seed=0)
    by_name = visualize(net, channel("3", 1), **settings)
    for spelling in ("#-5", -5, "#3", 3, net[3]):  # 8 layers: index -5 is "3"
        other = visualize(net, channel(spelling, 1), **settings)
        assert torch.equal(other.images, by_name.images), spelling


@pytest.mark.parametrize(
    ("objective", "error", "message"),
    [
        (lambda: class_logit(50), TargetError, r"0\.\.4"),
        (lambda: class_logit("goldfish"), TargetError, "labels"),
        (lambda: channel("3", 99), MethodError, r"8 channels \(0\.\.7\)"),
        (lambda: neuron("3", 1, 40, 40), MethodError, r"8x8 map: row 0\.\.7"),
        (lambda: neuron("3", 1, -1, 0), MethodError, "outside"),
        (lambda: channel("7", 0), LayerError, r"not \[B, C, h, w\]"),
        (lambda: channel("nope", 0), LayerError, "no layer named"),
    ],
)
def test_out_of_range_objectives_raise_before_any_update(unchanged, objective, error, message):
    net = tiny_classifier()
    with unchanged(net), pytest.raises(error, match=message):
        visualize(net, objective(), steps=2, size=16)


def test_class_names_resolve_through_the_model_labels():
    net = tiny_classifier()
    labels = ("tench", "goldfish", "shark", "hen", "ostrich")
    loaded = load_model(net, preprocess=Preprocess(size=16), labels=labels)
    by_name = visualize(loaded, class_logit("Goldfish"), steps=2, seed=0)
    by_id = visualize(loaded, class_logit(1), steps=2, seed=0)
    assert torch.equal(by_name.images, by_id.images)
    with pytest.raises(TargetError, match="did you mean 'goldfish'"):
        visualize(loaded, class_logit("goldfsh"), steps=1)


def test_bad_options_raise():
    net = tiny_classifier()
    with pytest.raises(MethodError):
        visualize(net, class_logit(0), param="wavelet", steps=1, size=16)
    with pytest.raises(MethodError):
        visualize(net, "class 0", steps=1, size=16)
    with pytest.raises(MethodError, match="10x10 but size is 16x16"):
        visualize(net, class_logit(0), steps=1, size=16, start=torch.rand(3, 10, 10))
    with pytest.raises(MethodError, match=r"\[0, 1\]"):
        visualize(net, class_logit(0), steps=1, start=torch.randn(3, 16, 16))
    with pytest.raises(MethodError, match="too small for jitter 8"):
        visualize(net, class_logit(0), steps=1, size=8)
    with pytest.raises(MethodError, match="too small for blur radius"):
        visualize(net, class_logit(0), steps=2, size=2, transforms=None, blur_every=1, blur_sigma=1)
    with pytest.raises(TargetError, match="one fixed class"):
        class_logit("top1")
    with pytest.raises(TargetError):
        class_logit(-3)


@pytest.mark.parametrize(
    "target",
    [None, "top1", "top3", contrast("top1", 2), contrast(1, "top2"), lambda out: out[:, 0]],
)
def test_class_logit_refuses_ranked_and_callable_targets(target):
    # Each would chase whichever class is on top at each step instead of one class.
    with pytest.raises(TargetError, match="give a class id or name"):
        class_logit(target)


def test_class_logit_refuses_a_ranked_side_next_to_a_name_before_any_update(unchanged):
    net = tiny_classifier()
    labels = ("tench", "goldfish", "shark", "hen", "ostrich")
    loaded = load_model(net, preprocess=Preprocess(size=16), labels=labels)
    objective = class_logit(contrast("top1", "goldfish"))  # the name needs the labels
    with unchanged(net), pytest.raises(TargetError, match="give a class id or name"):
        visualize(loaded, objective, steps=2)


def test_class_logit_ids_names_and_contrasts_score_fixed_classes():
    output = torch.tensor([[1.0, 2.0, 7.0], [3.0, 5.0, -1.0]])
    seen = Seen(torch.full((2, 3, 4, 4), 0.5), {}, output, ["tench", "goldfish", "shark"])
    assert torch.equal(class_logit(1)(seen), output[:, 1])
    assert torch.equal(class_logit("Goldfish")(seen), output[:, 1])
    assert torch.equal(class_logit(contrast(1, 2))(seen), output[:, 1] - output[:, 2])
    assert torch.equal(class_logit(contrast("shark", 0))(seen), output[:, 2] - output[:, 0])


def test_class_logit_resolves_once_per_run_and_again_for_other_labels(monkeypatch):
    import convlens.features.objectives as objectives

    net = tiny_classifier()
    size = Preprocess(size=16)
    first = load_model(net, preprocess=size, labels=("a", "goldfish", "c", "d", "e"))
    other = load_model(net, preprocess=size, labels=("a", "b", "c", "goldfish", "e"))
    by_name, one, three = class_logit("goldfish"), class_logit(1), class_logit(3)
    resolve, calls = objectives.resolve_targets, []

    def counted(*args, **kwargs):
        calls.append(args)
        return resolve(*args, **kwargs)

    monkeypatch.setattr(objectives, "resolve_targets", counted)
    settings = dict(steps=4, seed=0, **NO_TRANSFORM)
    assert torch.equal(
        visualize(first, by_name, **settings).images, visualize(first, one, **settings).images
    )
    assert len(calls) == 2  # once per run, not once per step (4 steps + final score)
    # The same objective on a model whose labels differ is resolved again, to class 3.
    assert torch.equal(
        visualize(other, by_name, **settings).images, visualize(other, three, **settings).images
    )
    assert len(calls) == 4
