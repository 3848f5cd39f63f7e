"""DeepLIFT, DeepLIFT-SHAP and GradientSHAP: summation-to-delta for each nonlinearity, a
module used twice, equality with Captum's implementations, batch == single images, the
baselines, and model hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from convlens import explain, load_model
from convlens.attribution.baselines import baseline_distribution, blurred
from convlens.attribution.methods import get_method
from convlens.attribution.reference import deeplift, deeplift_shap, gradient_shap
from convlens.data.preprocess import Preprocess
from convlens.errors import MethodError

pytestmark = pytest.mark.usefixtures("one_thread")

ACTIVATIONS = {
    "relu": nn.ReLU,
    "relu_inplace": lambda: nn.ReLU(inplace=True),
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "hardswish": nn.Hardswish,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


def conv_net(activation, seed: int = 0) -> nn.Module:
    """conv -> act -> conv -> act -> average pool -> linear (3 classes), float64."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        activation(),
        nn.Conv2d(4, 5, 3, padding=1),
        activation(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    ).double()


def score_delta(model, x, reference, classes) -> torch.Tensor:
    with torch.no_grad():
        picked = classes[:, None]
        return (model(x).gather(1, picked) - model(reference).gather(1, picked))[:, 0]


def plain_attributions(model, x, reference, classes) -> torch.Tensor:
    """(x - x') times the plain gradient: what DeepLIFT becomes without its rule."""
    leaf = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(leaf).gather(1, classes[:, None]).sum(), leaf)
    return ((x - reference) * gradient).sum(1)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_deeplift_sums_to_the_score_difference_for_each_nonlinearity(name, unchanged):
    model = conv_net(ACTIVATIONS[name])
    x = 2 * torch.randn(3, 3, 6, 6, dtype=torch.float64)
    reference = torch.randn(3, 6, 6, dtype=torch.float64)
    classes = torch.tensor([0, 2, 1])
    with unchanged(model, x, reference):
        maps, extras = deeplift(model, x, classes, baseline=reference)
    delta = score_delta(model, x, reference.expand_as(x), classes)
    torch.testing.assert_close(maps.sum((1, 2)), delta, rtol=1e-10, atol=1e-12)
    assert float(extras["completeness_error"].max()) < 1e-10
    # Without the rescale rule the sum misses the difference: the rule did the work.
    plain = plain_attributions(model, x, reference.expand_as(x), classes)
    assert float((plain.sum((1, 2)) - delta).abs().max()) > 1e-4


class FunctionalNet(nn.Module):
    """Element-wise activations called as functions and Tensor methods, not modules."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = F.silu(h) + torch.tanh(h) + h.sigmoid() + F.relu6(h) + h.relu() + F.hardswish(h)
        return self.head(F.gelu(h).mean((2, 3)))


def test_deeplift_rule_covers_functional_calls():
    torch.manual_seed(0)
    model = FunctionalNet().double()
    x = 2 * torch.randn(2, 3, 5, 5, dtype=torch.float64)
    maps, extras = deeplift(model, x, torch.tensor([1, 0]), baseline="blur")
    assert float(extras["completeness_error"].max()) < 1e-10


class Reused(nn.Module):
    """One conv and one ReLU module, each called twice (Captum's DeepLIFT cannot)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(self.act(self.conv(x))))
        return self.head(h.mean((2, 3)))


class Unrolled(nn.Module):
    """`Reused` with a separate ReLU module for each call (the same function)."""

    def __init__(self, reused: Reused) -> None:
        super().__init__()
        self.conv, self.head = reused.conv, reused.head
        self.first, self.second = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.second(self.conv(self.first(self.conv(x))))
        return self.head(h.mean((2, 3)))


def test_deeplift_handles_a_module_used_twice(unchanged):
    torch.manual_seed(0)
    model = Reused().double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    reference = 0.5 * torch.randn(2, 3, 6, 6, dtype=torch.float64)
    classes = torch.tensor([0, 1])
    with unchanged(model, x):
        maps, extras = deeplift(model, x, classes, baseline=reference)
    torch.testing.assert_close(
        maps.sum((1, 2)), score_delta(model, x, reference, classes), rtol=1e-10, atol=1e-12
    )
    unrolled, _ = deeplift(Unrolled(model), x, classes, baseline=reference)
    torch.testing.assert_close(maps, unrolled, rtol=0, atol=1e-14)


class Branching(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(x)
        if float(x.mean()) > 0:
            h = torch.relu(h - 1)
        return h.flatten(1)[:, :3]


def test_deeplift_refuses_a_forward_pass_that_branches_on_the_input():
    x = torch.ones(1, 3, 4, 4)
    with pytest.raises(MethodError, match="call order"):
        deeplift(Branching(), x, 0)


def captum_net() -> nn.Module:
    """A model Captum's DeepLIFT supports: each ReLU module used once, no max pooling."""
    return conv_net(nn.ReLU, seed=3).eval()


def test_deeplift_and_deeplift_shap_equal_captum():
    """Same rule (rescale), same multiplier at every ReLU; float64, so the only differences
    are rounding in a different order (tolerance 1e-12 of maps of size ~1e-2)."""
    captum = pytest.importorskip("captum.attr")
    model = captum_net()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    reference = 0.5 * torch.randn(3, 3, 8, 8, dtype=torch.float64)
    classes = model(x).argmax(1)
    expected = captum.DeepLift(model).attribute(x, baselines=reference, target=classes)
    ours, _ = deeplift(model, x, classes, baseline=reference)
    torch.testing.assert_close(ours, expected.sum(1), rtol=0, atol=1e-12)
    # A baseline equal to the input outside one corner: most units have z == z', where
    # both fall back to the derivative.
    partial = x.clone()
    partial[..., :3, :3] = 0
    expected = captum.DeepLift(model).attribute(x, baselines=partial, target=classes)
    ours, _ = deeplift(model, x, classes, baseline=partial)
    torch.testing.assert_close(ours, expected.sum(1), rtol=0, atol=1e-12)
    distribution = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    expected = captum.DeepLiftShap(model).attribute(x, baselines=distribution, target=classes)
    ours, _ = deeplift_shap(model, x, classes, baseline=distribution, batch_size=5)
    torch.testing.assert_close(ours, expected.sum(1), rtol=0, atol=1e-12)


def test_gradient_shap_equals_captum_in_distribution():
    """Both are Monte-Carlo estimates of the same expectation over (baseline, a): with
    1000 samples each, they agree within 5 standard errors of the difference."""
    captum = pytest.importorskip("captum.attr")
    model = conv_net(nn.Tanh, seed=4).eval()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    distribution = torch.randn(3, 3, 5, 5, dtype=torch.float64)
    n = 1000
    ours = gradient_shap(model, x, 1, baseline=distribution, n_samples=n, batch_size=n)
    np.random.seed(0)
    method = captum.GradientShap(model)
    theirs = method.attribute(x, baselines=distribution, target=1, n_samples=n).sum(1)
    # The spread of a 100-sample mean, estimated from our own estimates in 10 groups.
    groups = torch.stack(
        [
            gradient_shap(model, x, 1, baseline=distribution, n_samples=100, seed=s, batch_size=100)
            for s in range(1, 11)
        ]
    )
    standard_error = groups.std(0) * (100 / n) ** 0.5 * 2**0.5
    assert bool(((ours - theirs).abs() <= 5 * standard_error + 1e-9).all())
    assert not torch.allclose(ours, torch.zeros_like(ours))


def test_gradient_shap_is_its_formula_on_its_draws():
    from convlens.attribution.reference import gradient_shap_draws

    model = conv_net(nn.SiLU, seed=5)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    distribution = torch.randn(3, 3, 5, 5, dtype=torch.float64)
    classes = torch.tensor([2, 0])
    maps = gradient_shap(
        model, x, classes, baseline=distribution, n_samples=6, noise=0.1, seed=7, batch_size=5
    )
    which, alphas, unit, sigma = gradient_shap_draws(x, 3, 6, 0.1, 7)
    expected = torch.zeros_like(x)
    for k in range(6):
        noisy = x + sigma[:, None, None, None] * unit[k]
        base = distribution[which[k]].expand_as(x)
        point = (base + alphas[k] * (noisy - base)).requires_grad_(True)
        score = model(point).gather(1, classes[:, None]).sum()
        (gradient,) = torch.autograd.grad(score, point)
        expected += (noisy - base) * gradient / 6
    torch.testing.assert_close(maps, expected.sum(1), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["deeplift", "deeplift_shap", "gradient_shap"])
def test_a_batch_equals_single_images_and_the_model_is_unchanged(method, unchanged):
    model = conv_net(nn.Hardswish, seed=6).float()
    x = torch.randn(3, 3, 6, 6)
    options = {"n_samples": 4} if method == "gradient_shap" else {}
    with unchanged(model, x):
        batch = explain(model, x, method, **options).maps
    single = torch.cat([explain(model, x[i : i + 1], method, **options).maps for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-6)


def test_methods_are_registered_with_their_families():
    assert get_method("deeplift").family == "rule"
    assert get_method("deeplift_shap").family == "rule"
    assert get_method("gradient_shap").family == "gradient"
    assert "baseline" in get_method("deeplift").options
    assert "noise_tunnel" in get_method("deeplift").options
    assert "noise_tunnel" not in get_method("gradient_shap").options  # it has n_samples


def loaded(model: nn.Module, size: int = 6):
    return load_model(model, preprocess=Preprocess(size=size, mode="stretch"))


def test_named_baselines_follow_the_preprocessing(tmp_path):
    model = loaded(conv_net(nn.ReLU).float())
    x = torch.randn(2, 3, 6, 6)
    black, mean, blur = baseline_distribution(model, x, "black, mean, blur")
    expected = (0 - torch.tensor(Preprocess().mean)) / torch.tensor(Preprocess().std)
    torch.testing.assert_close(black, expected[None, :, None, None].expand_as(x))
    assert torch.equal(mean, torch.zeros_like(x))
    torch.testing.assert_close(blur, blurred(x))
    assert blur.std() < x.std()
    pixels = np.full((6, 6, 3), 255, dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "white.png")
    (white,) = baseline_distribution(model, x, str(tmp_path / "white.png"))
    expected = (1 - torch.tensor(Preprocess().mean)) / torch.tensor(Preprocess().std)
    torch.testing.assert_close(white, expected[None, :, None, None].expand_as(x))


def test_deeplift_with_a_named_baseline_sums_to_the_difference_from_it():
    model = loaded(conv_net(nn.ReLU))
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    result = explain(model, x, "deeplift", baseline="black")
    (black,) = baseline_distribution(model, x, "black")
    delta = score_delta(model.module, x, black, result.class_ids)
    torch.testing.assert_close(result.maps.sum((1, 2)), delta, rtol=1e-10, atol=1e-12)


def test_bad_baselines_name_the_fix():
    model = conv_net(nn.ReLU)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    with pytest.raises(MethodError, match="preprocessing"):
        deeplift(model, x, 0, baseline="black")
    with pytest.raises(MethodError, match="neither a name"):
        deeplift(model, x, 0, baseline="purple")
    with pytest.raises(MethodError, match="deeplift_shap"):
        deeplift(model, x, 0, baseline="zero,blur")
    with pytest.raises(MethodError, match="does not fit"):
        deeplift(model, x, 0, baseline=torch.zeros(3, 5, 5))


@pytest.mark.parametrize("method", ["deeplift", "integrated_gradients"])
def test_baselines_must_be_one_or_one_per_image(method):
    from convlens.attribution.gradients import integrated_gradients

    run = deeplift if method == "deeplift" else integrated_gradients
    model = conv_net(nn.ReLU)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for count in (3, 4):  # more baselines than images: never silently cut to the first two
        with pytest.raises(MethodError, match=f"got {count} baselines for 2 images"):
            run(model, x, 0, baseline=torch.zeros(count, 3, 8, 8))
    with pytest.raises(MethodError, match="got 1 baselines for 2 images|one per image"):
        run(model, x, "top2", baseline=torch.zeros(3, 3, 8, 8))  # rows != images
    one = run(model, x, 0, baseline=torch.zeros(1, 3, 8, 8))[0]
    each = run(model, x, 0, baseline=torch.zeros(2, 3, 8, 8))[0]
    assert torch.equal(one, each)
