"""channels_last and half precision give the maps of float32 within the tolerances stated in
docs/methods.md ("Devices and precision"), for every registered method on a small network."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from tests.helpers.methods import FEW_SAMPLES
from tests.helpers.networks import small_convnet

from convlens import explain, load_model
from convlens.attribution.methods import list_methods

METHODS = [info.name for info in list_methods()]
# Maps made of differences of close scores: on this small net they are below bfloat16's
# resolution (8 mantissa bits), as occlusion's are; float16 still correlates.
SCORE_DIFFERENCES = {"superpixel_ablation", "kernel_shap", "lime"}
TARGET = [0, 1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net_and_images():
    model = small_convnet().eval()
    images = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    return model, images, {}


def _reference(net_and_images, method):
    """float32 maps of ``method``, computed once per module."""
    model, images, cache = net_and_images
    if method not in cache:
        cache[method] = _maps(model, images, method)
    return cache[method]


def _maps(model, images, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rule methods' notes, if any
        return explain(model, images, method, target=TARGET, **FEW_SAMPLES.get(method, {})).maps


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)


@pytest.mark.parametrize("method", METHODS)
def test_channels_last_gives_the_float32_maps(net_and_images, method):
    model, images, _ = net_and_images
    reference = _reference(net_and_images, method)
    last = images.contiguous(memory_format=torch.channels_last)
    model_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    for candidate in (_maps(model, last, method), _maps(model_last, last, method)):
        assert candidate.dtype == torch.float32
        scale = reference.abs().amax(dim=(1, 2), keepdim=True)
        assert bool(((candidate - reference).abs() <= 1e-4 * scale).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", [m for m in METHODS if m != "occlusion"])
def test_half_precision_maps_correlate_with_float32(net_and_images, method, dtype):
    if dtype == torch.bfloat16 and method in SCORE_DIFFERENCES:
        pytest.skip("score differences below bfloat16's resolution on this net")
    model, images, _ = net_and_images
    reference = _reference(net_and_images, method)
    half = copy.deepcopy(model).to(dtype)
    maps = _maps(half, images, method)  # float32 images follow the model's dtype
    assert maps.dtype == torch.float32 and maps.device.type == "cpu"
    assert bool((_pearson(maps, reference) > 0.98).all())


def test_occlusion_drops_are_float32_under_bfloat16():
    """Occlusion subtracts close scores: in bfloat16 (8 mantissa bits) the difference would
    be rounded again; it is taken in float32, so a drop is exact for bfloat16 scores."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    images = torch.randn(1, 3, 8, 8)
    half = copy.deepcopy(model).to(torch.bfloat16)
    maps = _maps_one(half, images)
    x = images.to(torch.bfloat16)
    clean = half(x)[0, 0].float()
    for top, left in ((0, 0), (4, 4)):
        occluded = x.clone()
        occluded[..., top : top + 4, left : left + 4] = 0
        drop = clean - half(occluded)[0, 0].float()
        assert torch.equal(maps[0, top + 1, left + 1], drop)  # pixel under one patch only


def _maps_one(model, images):
    return explain(model, images, "occlusion", target=0, patch=4, stride=4).maps


def test_explanation_of_a_bfloat16_model_saves_float32_arrays(tmp_path):
    loaded = load_model(small_convnet().to(torch.bfloat16))
    images = torch.rand(1, 3, 16, 16)
    result = explain(loaded, images, "gradcam", target=0)
    assert result.maps.dtype == result.scores.dtype == torch.float32
    assert result.display is not None and result.display.dtype == np.uint8
    folder = result.save(tmp_path / "out")
    assert np.load(folder / "maps.npy").dtype == np.float32
