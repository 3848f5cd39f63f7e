"""Black-box perturbation methods (issue 21, item 3): RISE against TorchRay and its formula,
extremal perturbations on a planted region, KernelSHAP / LIME / superpixel ablation exact on
models linear in the superpixels; TorchScript, batches, chunks and the model's state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.helpers.networks import small_convnet
from torch import nn

from convlens import explain
from convlens.attribution.black_box import (
    blur_perturbation,
    blur_pyramid,
    rise,
    rise_masks,
    smooth_mask,
)
from convlens.attribution.superpixels import superpixels
from convlens.errors import MethodError

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {
    "rise": {"n_masks": 12, "cells": 4},
    "extremal_perturbation": {"steps": 3, "stride": 4},
    "superpixel_ablation": {"n_segments": 9, "compactness": 100.0},
    "kernel_shap": {"n_samples": 12, "n_segments": 9, "compactness": 100.0},
    "lime": {"n_samples": 12, "n_segments": 9, "compactness": 100.0},
}
NEW_METHODS = list(SMALL)


def _images(count: int, size: int = 16) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(count))


def _blocks(count: int, side: int = 4, cell: int = 8) -> torch.Tensor:
    """Images of ``side x side`` flat colour blocks of ``cell`` pixels (SLIC finds them)."""
    coarse = torch.rand(count, 3, side, side, generator=torch.Generator().manual_seed(7))
    return F.interpolate(coarse, scale_factor=cell, mode="nearest")


def _linear_model(size: int = 32, classes: int = 2) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, classes)).eval()


def test_rise_masks_are_seeded_shifted_upsampled_grids():
    masks = rise_masks(64, (20, 20), cells=4, keep=0.3, seed=1)
    assert masks.shape == (64, 20, 20)
    assert torch.equal(masks, rise_masks(64, (20, 20), cells=4, keep=0.3, seed=1))
    assert not torch.equal(masks, rise_masks(64, (20, 20), cells=4, keep=0.3, seed=2))
    assert float(masks.min()) >= 0 and float(masks.max()) <= 1
    assert abs(float(masks.mean()) - 0.3) < 0.08  # cells are kept with probability 0.3
    assert len({tuple(m[0, :5].tolist()) for m in masks}) > 1  # not all alike (shifts)


class _Logit(nn.Module):
    """``log(p / (1 - p))`` of a model's outputs in (0, 1): TorchRay takes the sigmoid of
    what it is given, so it sees the probabilities of the model convlens explains."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logit(self.net(x).double()).float()


def test_rise_equals_torchrays_rise_given_the_same_masks():
    """TorchRay's RISE scores ``sigmoid(model(x * m))`` and divides by N (not N p); on a
    model whose outputs are probabilities, ours equals TorchRay's divided by ``keep``."""
    torchray_rise = pytest.importorskip("torchray.attribution.rise").rise
    net = nn.Sequential(small_convnet(), nn.Sigmoid()).eval()
    images = _images(2)
    masks = rise_masks(40, (16, 16), cells=4, keep=0.4, seed=5)
    ours = rise(net, images, [0, 2], n_masks=40, cells=4, keep=0.4, seed=5)
    reference = torchray_rise(
        _Logit(net), images, num_masks=40, filter_masks=masks[:, None], batch_size=16
    )
    expected = reference[torch.arange(2), torch.tensor([0, 2])] / 0.4
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


def test_rise_is_the_score_weighted_mean_of_its_masks():
    net, images = small_convnet().eval(), _images(1)
    masks = rise_masks(10, (16, 16), cells=3, keep=0.5, seed=0)
    with torch.no_grad():
        scores = net(images * masks[:, None])[:, 1]
    expected = (scores[:, None, None] * masks).sum(0) / (10 * 0.5)
    ours = rise(net, images, 1, n_masks=10, cells=3, keep=0.5, seed=0)
    torch.testing.assert_close(ours[0], expected, atol=1e-5, rtol=1e-5)


def test_superpixels_find_flat_blocks():
    segments = superpixels(_blocks(2), n_segments=16, compactness=0.1)
    assert segments.shape == (2, 32, 32) and segments.dtype == torch.int64
    for image in segments:
        assert int(image.max()) + 1 <= 16  # (blocks of close colours may merge)
        blocks = image.view(4, 8, 4, 8)
        assert bool((blocks == blocks[:, :1, :, :1]).all())  # each block is one superpixel


def _superpixel_contributions(net: nn.Module, images: torch.Tensor, segments, target: int):
    """``c[n, s] = sum_{u in s} w_target(u) x_n(u)``: what a linear model's score owes to
    each superpixel (with fill 0, removing it removes exactly that)."""
    weight = net[1].weight[target].view(3, *images.shape[2:])
    per_pixel = (weight * images).sum(1).detach()
    counts = int(segments.max()) + 1
    return torch.stack(
        [
            torch.zeros(counts).index_add_(0, s.flatten(), p.flatten())
            for s, p in zip(segments, per_pixel, strict=True)
        ]
    ), per_pixel


OPTIONS_BLOCKS = {"n_segments": 16, "compactness": 0.1}


@pytest.mark.parametrize(
    "method, options",
    [
        ("superpixel_ablation", {}),
        ("kernel_shap", {"n_samples": 60}),
        ("lime", {"n_samples": 60}),
    ],
)
def test_superpixel_methods_recover_a_linear_models_contributions(method, options):
    """On a model linear in its input with fill 0, the score is additive over superpixels:
    ablation drops, Shapley values and LIME slopes all equal each superpixel's share."""
    net, images = _linear_model(), _blocks(2)
    segments = superpixels(images, **OPTIONS_BLOCKS)
    contributions, _ = _superpixel_contributions(net, images, segments, target=1)
    expected = contributions.gather(1, segments.flatten(1)).view(segments.shape)
    maps = explain(net, images, method, target=1, **OPTIONS_BLOCKS, **options).maps
    torch.testing.assert_close(maps, expected, atol=1e-4, rtol=1e-4)


def test_kernel_shap_values_sum_to_the_score_difference():
    """Efficiency holds by construction, even for a nonlinear model and few draws."""
    net, images = small_convnet().eval(), _blocks(1)
    segments = superpixels(images, **OPTIONS_BLOCKS)
    maps = explain(net, images, "kernel_shap", target=2, n_samples=8, **OPTIONS_BLOCKS).maps
    first = torch.stack([maps[0][segments[0] == s][0] for s in range(16)])
    with torch.no_grad():
        difference = net(images)[0, 2] - net(torch.zeros_like(images))[0, 2]
    torch.testing.assert_close(first.sum(), difference, atol=1e-5, rtol=1e-4)


class _Planted(nn.Module):
    """Score: the mean of a sharp-edge detector inside a planted 8 x 8 box at (16, 8); its
    evidence survives only where the mask keeps the image sharp."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = x.mean(1, keepdim=True)
        edges = (gray[..., 1:, :] - gray[..., :-1, :]).abs()[..., :, :-1] + (
            gray[..., :, 1:] - gray[..., :, :-1]
        ).abs()[..., :-1, :]
        inside = edges[..., 16:24, 8:16].mean(dim=(1, 2, 3))
        return torch.stack([inside, -inside], dim=1) * 10


def test_extremal_perturbation_finds_the_planted_region():
    """A 2-pixel checkerboard whose edges count only inside the box: the mask of the box's
    area (1/16) keeps the box sharp and blurs the rest. (``blur_sigma`` is small because a
    checkerboard blurred much further has no edges left to give the mask a gradient.)"""
    checker = (torch.arange(32)[:, None] // 2 + torch.arange(32)[None] // 2) % 2
    images = checker.float().expand(1, 3, 32, 32).clone()
    maps = explain(
        _Planted(),
        images,
        "extremal_perturbation",
        target=0,
        areas=0.0625,
        steps=30,
        stride=4,
        smoothing=0.5,
        blur_sigma=1.0,
        learning_rate=0.1,
    ).maps[0]
    box = torch.zeros(32, 32, dtype=torch.bool)
    box[16:24, 8:16] = True
    assert float(maps[box].mean()) > 0.5
    assert float(maps[~box].mean()) < 0.1
    top = maps.flatten().topk(64).indices
    assert float(box.flatten()[top].float().mean()) >= 0.75  # the mask's area lies in the box


def test_extremal_perturbation_map_is_the_sum_of_each_areas_mask():
    net, images = small_convnet().eval(), _images(2)
    options = {"steps": 3, "stride": 4}
    both = explain(net, images, "extremal_perturbation", areas="0.05,0.2", **options).maps
    alone = [
        explain(net, images, "extremal_perturbation", areas=a, **options).maps for a in (0.05, 0.2)
    ]
    torch.testing.assert_close(both, alone[0] + alone[1], atol=1e-5, rtol=1e-5)
    assert float(both.min()) >= 0 and float(both.max()) <= 2


def test_extremal_perturbation_survives_masks_rounded_above_one():
    """Regression (full-size GridPG crashed with "index -1 is out of bounds"): a Gaussian
    kernel's weights sum to 1 + 1e-7 in float32, so parameters at 1 smooth to a mask just
    above 1, whose blur level must be 0 (the image itself), not -1. One Adam step of size 1
    puts every parameter at 0 or 1; the second step reads such a mask."""
    ones = smooth_mask(torch.ones(1, 1, 8, 8), (16, 16), 1.0)
    assert float(ones.max()) > 1.0  # the rounding this test is about still happens
    images = _images(1)
    pyramid = blur_pyramid(images, 2.0, 4)
    torch.testing.assert_close(blur_perturbation(pyramid, ones), images, atol=1e-5, rtol=0)
    maps = explain(
        small_convnet().eval(),
        images,
        "extremal_perturbation",
        steps=2,
        stride=2,
        area_weight=0.0,
        learning_rate=1.0,
    ).maps
    assert maps.shape == (1, 16, 16) and bool(torch.isfinite(maps).all())
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1 + 1e-6


@pytest.mark.parametrize("method", NEW_METHODS)
def test_torchscript_model_gives_the_eager_maps(method):
    net, images = small_convnet().eval(), _images(2)
    scripted = torch.jit.script(net)
    eager = explain(net, images, method, target=[0, 1], **SMALL[method]).maps
    script = explain(scripted, images, method, target=[0, 1], **SMALL[method]).maps
    torch.testing.assert_close(script, eager, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", NEW_METHODS)
def test_batch_equals_per_image_and_chunks_never_change_results(method, unchanged):
    net, images = small_convnet(), _images(3)
    if method == "extremal_perturbation":
        # Adam's first steps are about lr * sign(gradient): where a mask gradient is near
        # zero, float32 rounding (which differs between batch shapes) flips its sign and
        # the step. In float64 the rows must agree exactly; in float32 they agree to ~2%.
        net, images = net.double(), images.double()
    with unchanged(net, images):
        batch = explain(net, images, method, target=[0, 2, 1], **SMALL[method]).maps
        odd = explain(net, images, method, target=[0, 2, 1], batch_size=5, **SMALL[method]).maps
    single = torch.cat(
        [
            explain(net, images[i : i + 1], method, target=t, **SMALL[method]).maps
            for i, t in enumerate([0, 2, 1])
        ]
    )
    scale = float(batch.abs().amax())
    torch.testing.assert_close(single, batch, atol=1e-5 * scale, rtol=1e-4)
    torch.testing.assert_close(odd, batch, atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("rise", {"keep": 1.5}, "keep must be a number strictly between 0 and 1"),
        ("rise", {"cells": 40}, "cells .40. must be at most the image side"),
        ("rise", {"n_masks": 0}, "n_masks must be a positive integer"),
        ("extremal_perturbation", {"areas": []}, "areas must name at least one area"),
        ("extremal_perturbation", {"areas": (0.1, 2)}, "each area must be"),
        ("extremal_perturbation", {"areas": "0.1,big"}, "separated by commas"),
        ("lime", {"kernel_width": 0}, "kernel_width must be > 0"),
        ("kernel_shap", {"fill": "grey"}, "fill must be a finite number or 'mean'"),
        ("occlusion", {"fill": float("nan"), "patch": 4, "stride": 4}, "finite number"),
        ("finercam", {"alpha": "abc"}, "alpha must be a finite number"),
        ("gradcam", {"eigen_smooth": "no"}, "eigen_smooth must be true or false"),
        ("rise", {"seed": 1.5}, "seed must be a whole number"),
        ("smoothgrad", {"seed": "abc"}, "seed must be a whole number"),
    ],
)
def test_bad_options_name_the_fix(method, options, message):
    with pytest.raises(MethodError, match=message):
        explain(small_convnet(), _images(1), method, **options)
