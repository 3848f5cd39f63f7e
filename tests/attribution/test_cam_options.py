"""CAM methods of issue 21: Ablation-CAM, FullGrad, FinerCAM, Eigen-Grad-CAM, and the options
every CAM method has (several layers fused, eigen_smooth, aug_smooth). Exact values on
hand-built nets, properties, batching, hygiene, errors."""

from __future__ import annotations

import math

import pytest
import torch
from tests.helpers.networks import hand_net, small_convnet
from torch import nn

from convlens.attribution import cam as cams
from convlens.attribution import explain
from convlens.attribution.cam_variants import FinerScore, ablationcam, finercam
from convlens.attribution.common import layer_gradient, prepare
from convlens.attribution.fullgrad import fullgrad
from convlens.errors import LayerError, MethodError, TargetError
from convlens.maps import normalize_maps
from convlens.targets import contrast, resolve_targets

HAND_X = torch.tensor([[1.0, 2.0], [3.0, -4.0]]).view(1, 1, 2, 2)
EVERY_CAM = [
    "cam",
    "gradcam",
    "gradcam_pp",
    "xgradcam",
    "layercam",
    "hirescam",
    "eigencam",
    "eigengradcam",
    "scorecam",
    "ablationcam",
    "finercam",
    "guided_gradcam",
]


# ---- exact values -----------------------------------------------------------------------


def test_ablationcam_exact_on_hand_net():
    # class 0 (y = 4): without A_0 the GAP is (0, 1), y = 1, w_0 = 3/4; without A_1
    # y = 3, w_1 = 1/4. Class 1 (y = 1.5): w_0 = (1.5 - 3) / 1.5 = -1, w_1 = (1.5 + 1.5) / 1.5.
    maps = ablationcam(hand_net(), HAND_X.repeat(2, 1, 1, 1), [0, 1], layer="1")
    assert torch.allclose(maps[0], torch.tensor([[0.75, 1.5], [2.25, 1.0]]), atol=1e-6)
    assert torch.allclose(maps[1], torch.tensor([[0.0, 0.0], [0.0, 8.0]]), atol=1e-6)


def test_fullgrad_exact_on_hand_net():
    """x -> conv 1x1 (w 1, b 0.5) -> ReLU -> GAP -> linear 2: dy/dz = 0.5 where z > 0."""
    net = nn.Sequential(
        nn.Conv2d(1, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 1)
    )
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.fill_(0.5)
        net[4].weight.fill_(2.0)
        net[4].bias.fill_(0.0)
    # |x dy/dx| = [[.5, 1], [1.5, 0]] -> [[1/3, 2/3], [1, 0]]; |b dy/dz| = [[.25, .25], [.25,
    # 0]] -> [[1, 1], [1, 0]] (each min-max scaled); their sum:
    expected = torch.tensor([[4 / 3, 5 / 3], [2.0, 0.0]])
    assert torch.allclose(fullgrad(net, HAND_X, 0)[0], expected, atol=1e-6)


def test_fullgrad_uses_the_batchnorm_offset_as_bias():
    net = nn.Sequential(nn.BatchNorm2d(1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        net[0].running_mean.fill_(3.0)
        net[0].running_var.fill_(4.0 - net[0].eps)
        net[0].weight.fill_(2.0)
        net[0].bias.fill_(3.0)
    # z = 2 (x - 3) / 2 + 3 = x: the offset 3 - 3 * 2 / 2 is 0, so only |x dy/dx| =
    # [[.25, .5], [.75, 0]] is left (beta = 3 as the bias would add [[1, 1], [1, 0]]).
    expected = torch.tensor([[1 / 3, 2 / 3], [1.0, 0.0]])
    assert torch.allclose(fullgrad(net, HAND_X, 0)[0], expected, atol=1e-6)


def test_finer_score_exact():
    logits = torch.tensor([[5.0, 4.5, 1.0, 4.9, 0.0]])
    targets = resolve_targets(0, 1)
    p = [math.exp(v) for v in logits[0].tolist()]
    # the three classes closest to y_0 = 5: 3 (0.1), 1 (0.5), 2 (4); class 4 (5) is left out
    weighted = p[3] * (5 - 4.9) + p[1] * (5 - 4.5) + p[2] * (5 - 1.0)
    expected = weighted / (p[3] + p[1] + p[2])
    assert float(FinerScore(targets, 1.0, 3).score(logits)[0]) == pytest.approx(expected, 1e-6)
    assert float(FinerScore(targets, 1.0, 1).score(logits)[0]) == pytest.approx(0.1, 1e-5)
    assert float(FinerScore(targets, 0.5, 1).score(logits)[0]) == pytest.approx(2.55, 1e-6)


def test_finercam_with_one_similar_class_is_contrastive_gradcam():
    net, x = small_convnet(), torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = net(x)
    top = logits.argmax(1)
    distance = (logits - logits.gather(1, top[:, None])).abs().scatter(1, top[:, None], 1e9)
    nearest = distance.argmin(1)
    finer = finercam(net, x, top.tolist(), layer="3", n_similar=1)
    contrastive = cams.gradcam(net, x, contrast(top.tolist(), nearest.tolist()), layer="3")
    assert torch.allclose(finer, contrastive, rtol=1e-5, atol=1e-7)


def test_finercam_with_alpha_zero_is_gradcam():
    net, x = small_convnet(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    finer = finercam(net, x, layer="3", alpha=0.0)
    assert torch.allclose(finer, cams.gradcam(net, x, layer="3"), rtol=1e-5, atol=1e-7)


def test_eigen_smooth_of_one_channel_is_its_centred_weighted_map():
    """With one channel the first principal component is the channel itself, centred."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 1, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    net.append(nn.Linear(1, 2))
    x = torch.randn(2, 3, 6, 6)
    prepared = prepare(net, x, 1)
    activation, gradient, _ = layer_gradient(net, prepared.images, prepared.targets, "1")
    weighted = gradient.mean(dim=(2, 3), keepdim=True) * activation
    expected = (weighted - weighted.mean(dim=(2, 3), keepdim=True))[:, 0].clamp_min(0)
    got = cams.gradcam(net, x, 1, layer="1", eigen_smooth=True)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, cams.gradcam(net, x, 1, layer="1"))


# ---- several layers, aug_smooth ---------------------------------------------------------


def test_one_layer_listed_twice_is_that_layer():
    net, x = small_convnet(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    for method in ("gradcam", "ablationcam", "eigencam"):
        once = explain(net, x, method, layer="3").maps
        assert torch.equal(explain(net, x, method, layer="3,3").maps, once)


def test_several_layers_average_their_normalised_maps():
    net, x = small_convnet(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    first, second = cams.gradcam(net, x, layer="0"), cams.gradcam(net, x, layer="3")
    expected = (normalize_maps(first) + normalize_maps(second)) / 2
    assert torch.allclose(cams.gradcam(net, x, layer="0, 3"), expected, atol=1e-6)
    assert torch.allclose(cams.gradcam(net, x, layer=["0", 3]), expected, atol=1e-6)
    explanation = explain(net, x, "hirescam", layer="0,3")
    assert explanation.layer == "0,3"


def flip_symmetric_net() -> nn.Sequential:
    """Bias-free conv with left-right symmetric kernels -> ReLU -> GAP -> linear: a model
    whose maps flip with the input and scale with it (so aug_smooth changes nothing)."""
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3, bias=False),
    )
    with torch.no_grad():
        weight = net[0].weight
        weight.copy_((weight + weight.flip(-1)) / 2)
    return net


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam", "eigencam"])
def test_aug_smooth_of_a_flip_invariant_model_is_the_normalised_map(method):
    net = flip_symmetric_net()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    plain = explain(net, x, method, layer="1").maps
    smoothed = explain(net, x, method, layer="1", aug_smooth=True).maps
    assert not torch.allclose(plain, plain.flip(-1), atol=1e-3)  # the map is not symmetric
    assert torch.allclose(smoothed, normalize_maps(plain), atol=1e-5)


def test_aug_smooth_explains_the_class_of_the_unaugmented_image():
    net, x = small_convnet(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        top = net(x).argmax(1).tolist()
    ranked = cams.gradcam(net, x, "top1", layer="3", aug_smooth=True)
    assert torch.equal(ranked, cams.gradcam(net, x, top, layer="3", aug_smooth=True))


# ---- every CAM method: options, batching, hygiene ---------------------------------------

SMALL = {"scorecam": {"batch_size": 4}, "ablationcam": {"batch_size": 4}}


@pytest.mark.parametrize("method", EVERY_CAM)
def test_every_cam_method_takes_the_options_batched_as_per_image(method, unchanged):
    net, x = small_convnet(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    options = SMALL.get(method, {}) | {"eigen_smooth": True, "aug_smooth": True}
    layer = "4" if method == "cam" else "3"  # cam needs the layer the GAP averages
    with unchanged(net, x):
        batched = explain(net, x, method, layer=layer, **options).maps
    assert batched.shape == (2, 8, 8) and bool((batched >= 0).all())
    single = explain(net, x[1:2], method, layer=layer, **options).maps
    assert torch.allclose(batched[1], single[0], atol=1e-5)


@pytest.mark.parametrize("method", ["ablationcam", "finercam", "eigengradcam", "fullgrad"])
def test_new_methods_batched_equal_per_image_and_leave_the_model(method, unchanged):
    net, x = small_convnet(), torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    with unchanged(net, x):
        batched = explain(net, x, method).maps
    for row in range(3):
        single = explain(net, x[row : row + 1], method).maps
        assert torch.allclose(batched[row], single[0], atol=1e-5)
    assert float(batched.amax()) > 0


def test_fullgrad_eigen_smooth_differs_and_takes_no_layer():
    net, x = small_convnet(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    plain, eigen = fullgrad(net, x), fullgrad(net, x, eigen_smooth=True)
    assert plain.shape == eigen.shape == (2, 8, 8) and not torch.allclose(plain, eigen)
    with pytest.raises(Exception, match="does not use a layer"):
        explain(net, x, "fullgrad", layer="3")


# ---- errors -----------------------------------------------------------------------------


def test_aug_smooth_refuses_a_segmentation_model():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.randn(1, 3, 8, 8)
    assert cams.gradcam(net, x, 1, layer="1").shape == (1, 8, 8)
    with pytest.raises(MethodError, match="aug_smooth flips the image"):
        cams.gradcam(net, x, 1, layer="1", aug_smooth=True)


def test_finercam_refuses_a_contrast_or_callable_target():
    net, x = small_convnet(), torch.randn(1, 3, 8, 8)
    with pytest.raises(TargetError, match="finercam needs class targets"):
        finercam(net, x, contrast(0, 1))
    with pytest.raises(TargetError, match="finercam needs class targets"):
        finercam(net, x, lambda output: output[:, 0])


def test_an_unknown_layer_in_a_list_names_it():
    net, x = small_convnet(), torch.randn(1, 3, 8, 8)
    with pytest.raises(LayerError, match="no layer named 'nope'"):
        cams.gradcam(net, x, layer="3,nope")
    with pytest.raises(LayerError, match="no spatial"):
        ablationcam(net, x, layer="6")


def test_ablationcam_runs_on_a_model_that_differentiates_through_the_layer_in_its_forward(
    unchanged,
):
    # a test-time adaptation step takes a gradient through the layer's output: the ablated
    # copies must keep that graph (a stored constant copy of the activation broke it)
    from tests.test_lrp import _SelfAdapting

    net, images = _SelfAdapting().eval(), torch.randn(2, 3, 8, 8)
    with unchanged(net, images):
        maps = ablationcam(net, images, 0, layer="conv")
    assert maps.shape == (2, 8, 8)
    assert bool(torch.isfinite(maps).all()) and float(maps.amax()) > 0
