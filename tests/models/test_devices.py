"""Device names, the model's device and dtype, inputs that follow the model, load_model(device=).

CUDA and MPS are simulated by patching torch's availability checks, so these run on any
machine; moving a model to a real GPU is tested in tests/test_cuda.py (marked ``cuda``)."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import assert_same_state, model_state
from tests.helpers.networks import small_convnet
from torch import nn

from convlens import DeviceError, load_model, resolve_device
from convlens.models.devices import model_device, model_dtype, model_input, placed_on, to_cpu


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize("spec", ["cpu", " CPU ", "cpu:0", torch.device("cpu"), "auto"])
def test_cpu_names_and_auto_without_gpu_resolve_to_the_cpu(spec):
    assert resolve_device(spec) == torch.device("cpu")


@pytest.mark.usefixtures("two_gpus")
def test_cuda_names_resolve_to_an_indexed_device_that_exists():
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == resolve_device(torch.device("cuda", 1))
    with pytest.raises(DeviceError, match=r"no CUDA device 2: this machine has 2 \(cuda:0..cuda:1"):
        resolve_device("cuda:2")


def test_auto_prefers_mps_to_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cuda", "CUDA is not available on this machine"),
        ("cuda:1", "CUDA is not available on this machine"),
        ("mps", "MPS (the Apple GPU) is not available"),
        ("gpu", "unknown device 'gpu'; use cpu, cuda, cuda:N, mps or auto"),
        ("meta", "'meta' is not supported; use cpu, cuda, cuda:N, mps or auto"),
    ],
)
def test_unavailable_or_unknown_devices_raise_one_clear_error(spec, message):
    with pytest.raises(DeviceError) as error:
        resolve_device(spec)
    text = str(error.value)
    assert message in text and "\n" not in text
    if spec in ("cuda", "cuda:1", "mps"):
        assert "--device cpu" in text


def test_model_device_and_dtype_come_from_the_first_parameter():
    model = small_convnet()
    assert model_device(model) == torch.device("cpu") and model_dtype(model) == torch.float32
    assert model_dtype(model.to(torch.bfloat16)) == torch.bfloat16
    assert model_device(nn.ReLU()) == torch.device("cpu") and model_dtype(nn.ReLU()) is None


def test_inputs_follow_the_model_dtype_and_are_never_modified():
    model = small_convnet()
    images = torch.randn(2, 3, 8, 8)
    assert model_input(model, images) is images  # nothing to change: the same tensor
    half = model_input(model.to(torch.bfloat16), images)
    assert half.dtype == torch.bfloat16 and images.dtype == torch.float32
    assert torch.equal(half, images.to(torch.bfloat16))
    labels = torch.arange(4)
    assert model_input(model, labels).dtype == torch.int64  # integers keep their dtype
    assert model_input(nn.ReLU(), images.double()).dtype == torch.float64  # no parameters


def test_load_model_device_cpu_keeps_the_module_and_reports_its_device():
    module = small_convnet()
    loaded = load_model(module, device="cpu")
    assert loaded.module is module and loaded.device == torch.device("cpu")


@pytest.mark.usefixtures("no_gpu")
def test_load_model_refuses_a_missing_device_before_loading(monkeypatch):
    import convlens.models.loading as loading

    monkeypatch.setattr(loading, "_load_by_name", lambda *a: pytest.fail("model was loaded"))
    with pytest.raises(DeviceError, match="CUDA is not available"):
        load_model("efficientnet_lite0", device="cuda")


def test_placed_on_the_device_the_model_is_on_changes_nothing():
    model = small_convnet()
    before = model_state(model)
    weight = model[0].weight
    with placed_on(model, "cpu") as inside, placed_on(model, None) as where:
        assert inside == where == torch.device("cpu") and model[0].weight is weight
    assert_same_state(before, model_state(model))


@pytest.mark.usefixtures("no_gpu")
def test_placed_on_a_missing_device_raises_and_leaves_the_model():
    model = small_convnet()
    before = model_state(model)
    with pytest.raises(DeviceError), placed_on(model, "cuda"):
        pytest.fail("the block ran")
    assert_same_state(before, model_state(model))


def test_a_model_spread_over_devices_is_not_moved():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2, device="meta"))
    with pytest.raises(DeviceError, match=r"spread over several devices \(cpu, meta\)"):
        with placed_on(model, "cpu"):
            pass


def test_to_cpu_widens_half_precision_for_numpy():
    value = to_cpu(torch.ones(2, requires_grad=True).to(torch.bfloat16))
    assert value.dtype == torch.float32 and not value.requires_grad
    assert to_cpu(torch.ones(2, dtype=torch.float64)).dtype == torch.float64
    assert to_cpu("text") == "text"


# ---- device= on the calls that borrow a model ------------------------------------------


def test_explain_on_the_cpu_equals_explain_where_the_model_is(unchanged):
    from convlens import explain
    from convlens.attribution.explain import explain_methods

    model, images = small_convnet(), torch.randn(2, 3, 12, 12)
    with unchanged(model, images):
        plain = explain(model, images, "gradcam", target=[0, 2])
        placed = explain(model, images, "gradcam", target=[0, 2], device="cpu")
        (both,), _ = explain_methods(model, images, ["gradcam"], [0, 2], device="cpu")
    assert torch.equal(plain.maps, placed.maps) and torch.equal(plain.maps, both.maps)
    assert placed.maps.device.type == "cpu"


@pytest.mark.usefixtures("no_gpu")
def test_every_device_argument_refuses_a_missing_device_and_leaves_the_model(unchanged):
    from convlens import explain
    from convlens.evaluate.benchmark import evaluate_on_source
    from convlens.features import objectives, optimize
    from convlens.features.activations import feature_maps, layer_mean_maps

    model, images = small_convnet(), torch.randn(1, 3, 12, 12)
    calls = [
        lambda: explain(model, images, "saliency", target=0, device="cuda"),
        lambda: feature_maps(model, images[0], "0", device="cuda"),
        lambda: layer_mean_maps(model, images[0], device="cuda"),
        lambda: optimize.visualize(
            model, objectives.class_logit(0), steps=1, size=16, device="cuda"
        ),
        lambda: evaluate_on_source("synthetic-shapes", ["gradcam"], 2, device="cuda"),
    ]
    with unchanged(model, images):
        for call in calls:
            with pytest.raises(DeviceError, match="CUDA is not available"):
                call()


def test_feature_views_run_with_device_cpu_and_return_cpu_tensors():
    from convlens.features import objectives, optimize
    from convlens.features.activations import feature_maps, layer_mean_maps

    model, image = small_convnet(), torch.randn(3, 12, 12)
    maps = feature_maps(model, image, "3", top=2, device="cpu")
    assert torch.equal(maps.maps, feature_maps(model, image, "3", top=2).maps)
    means = layer_mean_maps(model, image, device="cpu")
    assert all(mean.device.type == "cpu" for _, mean in means)
    result = optimize.visualize(model, objectives.class_logit(1), steps=2, size=16, device="cpu")
    assert result.images.device.type == "cpu" and result.images.shape == (1, 3, 16, 16)


def test_bare_cuda_under_torchrun_is_this_workers_gpu(monkeypatch):
    """The one `placed_on` (scans included) resolves ``"cuda"`` to ``cuda:LOCAL_RANK`` when
    torchrun started several workers; a device named with its index stays as written."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resolve_device("cuda") == torch.device("cuda", 0)
