"""Noise tunnels: an option of every gradient and rule method, smoothgrad == saliency through
the smoothgrad tunnel, the squared and variance aggregates, batch == single images."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.networks import CountingNet, small_convnet

from convlens import explain
from convlens.attribution.methods import get_method, list_methods
from convlens.attribution.tunnel import NOISE_TUNNELS, TUNNEL_DEFAULTS, noise_draws
from convlens.cli.options import parse_method_options
from convlens.errors import MethodError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_gradient_and_rule_method_takes_the_tunnel_unless_it_samples_itself():
    for info in list_methods(include_head_methods=True):
        has_tunnel = "noise_tunnel" in info.options
        sampling = info.name in ("smoothgrad", "gradient_shap")
        if info.family in ("gradient", "rule") and not sampling:
            assert has_tunnel, info.name
            assert set(TUNNEL_DEFAULTS) <= set(info.options), info.name
        elif info.family in ("cam", "perturbation"):
            assert not has_tunnel, info.name
    assert "noise_tunnel" not in get_method("smoothgrad").options


def test_smoothgrad_equals_saliency_through_the_smoothgrad_tunnel(unchanged):
    model = small_convnet()
    x = torch.randn(3, 3, 8, 8)
    options = {"n_samples": 6, "noise": 0.2, "seed": 4}
    with unchanged(model, x):
        tunnelled = explain(model, x, "saliency", noise_tunnel="smoothgrad", **options)
    named = explain(model, x, "smoothgrad", **options)
    assert torch.equal(tunnelled.maps, named.maps)
    assert torch.equal(tunnelled.scores, named.scores)
    other_seed = explain(model, x, "saliency", noise_tunnel="smoothgrad", n_samples=6, seed=5)
    assert not torch.equal(other_seed.maps, named.maps)


def noisy_maps(model, x, method: str, n_samples: int, noise: float, seed: int) -> torch.Tensor:
    """``Tensor[n, N, H, W]``: the method's map of each noisy copy, one copy at a time, the
    class pinned on the clean input."""
    classes = model(x).argmax(1)
    unit, sigma = noise_draws(x, n_samples, noise, seed)
    return torch.stack(
        [
            explain(model, x + sigma[:, None, None, None] * unit[k], method, classes).maps
            for k in range(n_samples)
        ]
    )


@pytest.mark.parametrize("method", ["saliency", "guided_backprop", "deeplift"])
def test_squared_and_variance_tunnels_aggregate_the_noisy_maps(method):
    model = small_convnet().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    maps = noisy_maps(model, x, method, 5, 0.3, 2)
    for kind, expected in [
        ("smoothgrad", maps.mean(0)),
        ("smoothgrad_sq", maps.square().mean(0)),
        ("vargrad", maps.var(0, unbiased=False)),
    ]:
        result = explain(model, x, method, noise_tunnel=kind, n_samples=5, noise=0.3, seed=2)
        torch.testing.assert_close(result.maps, expected, rtol=1e-9, atol=1e-12)
    assert float(maps.var(0).max()) > 0  # the copies differ: the variance is not trivial


@pytest.mark.parametrize("kind", NOISE_TUNNELS)
def test_a_tunnelled_batch_equals_single_images(kind, unchanged):
    model = small_convnet()
    x = torch.randn(3, 3, 8, 8)
    options = {"noise_tunnel": kind, "n_samples": 3, "seed": 1}
    with unchanged(model, x):
        batch = explain(model, x, "input_x_gradient", **options).maps
    single = torch.cat(
        [explain(model, x[i : i + 1], "input_x_gradient", **options).maps for i in range(3)]
    )
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-7)


def test_tunnel_averages_per_row_extras_and_keeps_the_clean_output():
    model = small_convnet().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    plain = explain(model, x, "deeplift")
    result = explain(model, x, "deeplift", noise_tunnel="smoothgrad", n_samples=3)
    assert result.extras["completeness_error"].shape == (2,)
    assert float(result.extras["completeness_error"].max()) < 1e-8
    assert torch.equal(result.output, plain.output)
    assert torch.equal(result.class_ids, plain.class_ids)


def test_bad_tunnel_options_name_the_choices():
    model = small_convnet()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(MethodError, match="smoothgrad_sq"):
        explain(model, x, "saliency", noise_tunnel="jitter")
    with pytest.raises(MethodError, match="n_samples"):
        explain(model, x, "saliency", noise_tunnel="vargrad", n_samples=0)
    with pytest.raises(MethodError, match="noise"):
        explain(model, x, "saliency", noise_tunnel="vargrad", noise=-1.0)
    with pytest.raises(MethodError, match="does not take noise_tunnel"):
        explain(model, x, "occlusion", noise_tunnel="vargrad")


def test_cli_options_reach_the_tunnel():
    chosen = parse_method_options(
        ["noise_tunnel=vargrad", "n_samples=4"], ["saliency", "gradcam", "smoothgrad"]
    )
    assert chosen == {
        "saliency": {"noise_tunnel": "vargrad", "n_samples": 4},
        "smoothgrad": {"n_samples": 4},
    }


def test_a_methods_own_batch_size_reaches_it_through_the_tunnel():
    """Integrated Gradients' batch_size bounds its own passes (rows per forward) also when
    tunnelled; the tunnel does not take the option for its noisy copies."""
    model = CountingNet()
    x = torch.randn(1, 3, 8, 8)
    options = {"n_steps": 4, "noise_tunnel": "smoothgrad", "n_samples": 2}
    explain(model, x, "integrated_gradients", batch_size=1, **options)
    gradient_passes = [rows for rows, grad in model.calls if grad]
    assert gradient_passes and max(gradient_passes) == 1
