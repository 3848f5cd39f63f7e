"""Every method on a CUDA device gives the CPU's maps; ``device=`` hands the model back.

Marked ``cuda``: skipped where no CUDA device is present (tests/conftest.py), so CI, which
has no GPU, never runs these. Run them on a GPU machine with ``pytest -m cuda``.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from tests.conftest import assert_same_state, model_state
from tests.helpers.methods import FEW_SAMPLES
from tests.helpers.networks import small_convnet

from convlens import TargetError, explain, load_model
from convlens.attribution.methods import list_methods

pytestmark = pytest.mark.cuda

def _maps(model, images, method, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        options = FEW_SAMPLES.get(method, {})
        result = explain(model, images, method, target=[0, 2], **options, **kwargs)
    return result


@pytest.fixture(autouse=True)
def _exact_cuda_math():
    """cuDNN picks its fastest (possibly TF32) kernels otherwise; the comparison is about
    devices, not about TF32 rounding."""
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@pytest.mark.parametrize("method", [info.name for info in list_methods()])
def test_every_method_on_cuda_gives_the_cpu_maps(method):
    model, images = small_convnet().eval(), torch.randn(2, 3, 24, 24)
    on_cpu = _maps(model, images, method)
    gpu_model = copy.deepcopy(model).cuda()
    on_gpu = _maps(gpu_model, images, method)  # CPU images follow the model
    assert on_gpu.maps.device.type == "cpu" and on_gpu.scores.device.type == "cpu"
    scale = on_cpu.maps.abs().amax(dim=(1, 2), keepdim=True)
    assert bool(((on_gpu.maps - on_cpu.maps).abs() <= 1e-4 * scale + 1e-7).all())
    assert torch.allclose(on_gpu.scores, on_cpu.scores, rtol=1e-4, atol=1e-6)
    assert next(gpu_model.parameters()).device.type == "cuda"  # left where it was


def test_explain_device_cuda_moves_the_model_back_unchanged():
    model, images = small_convnet(), torch.randn(2, 3, 16, 16)
    before = model_state(model)
    result = explain(model, images, "gradcam", target=[0, 1], device="cuda")
    assert result.maps.device.type == "cpu"
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert_same_state(before, model_state(model))
    with pytest.raises(TargetError):
        explain(model, images, "gradcam", target=[0, 99], device="cuda")  # class out of range
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert_same_state(before, model_state(model))


def test_load_model_device_cuda_moves_for_good_and_inputs_follow():
    loaded = load_model(small_convnet(), device="cuda")
    assert loaded.device.type == "cuda"
    result = explain(loaded, torch.randn(1, 3, 16, 16), "saliency", target=0)
    assert result.maps.device.type == "cpu" and loaded.device.type == "cuda"


def test_feature_views_and_visualisation_on_cuda():
    from convlens.features import objectives, optimize
    from convlens.features.activations import feature_maps, layer_mean_maps

    model, image = small_convnet(), torch.randn(3, 16, 16)
    cpu = feature_maps(model, image, "3")
    gpu = feature_maps(model, image, "3", device="cuda")
    assert gpu.maps.device.type == "cpu" and torch.allclose(gpu.maps, cpu.maps, atol=1e-5)
    assert all(m.device.type == "cpu" for _, m in layer_mean_maps(model, image, device="cuda"))
    result = optimize.visualize(model, objectives.class_logit(1), steps=4, size=32, device="cuda")
    assert result.images.device.type == "cpu"
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_cli_explain_on_cuda(tmp_path):
    from convlens.cli import main

    out = tmp_path / "out"
    assert main(["explain", "cat", "--device", "cuda", "--method", "all", "-o", str(out)]) == 0
    assert (out / "cat.png").is_file()
