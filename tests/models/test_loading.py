"""load_model: the embedded default, files, modules, library names, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convlens import load_model
from convlens.errors import ModelLoadError
from convlens.models import LoadedModel, Preprocess, as_module, imagenet_labels


def test_default_model_classifies_sample_photos(default_model):
    images = default_model.preprocess(["cat", "coffee"])
    with torch.no_grad():
        top = default_model.module(images).argmax(1).tolist()
    assert 281 <= top[0] <= 285  # the ImageNet cat classes
    assert top[1] == 967  # espresso
    assert default_model.preprocess.mean == (0.5, 0.5, 0.5)
    assert default_model.label(967) == "espresso"


def test_labels_ship_with_the_package():
    labels = imagenet_labels()
    assert len(labels) == 1000 and labels[281] == "tabby" and labels[0] == "tench"


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )


def test_labels_of_another_count_than_the_models_are_refused():
    # a header line (or a missing class) would shift every name by one
    loaded = load_model(small_net(), labels=["no", "yes"])
    with pytest.raises(ModelLoadError, match="3 class names .* 2 classes"):
        load_model(loaded, labels=["name", "no", "yes"])
    assert load_model(loaded, labels=["off", "on"]).label(1) == "on"


def test_module_is_wrapped_not_copied_and_mode_kept():
    net = small_net().train()
    loaded = load_model(net, labels=["no", "yes"])
    assert loaded.module is net and net.training
    assert loaded.label(1) == "yes" and loaded.label(5) == "class 5"
    assert load_model(loaded) is loaded
    assert as_module(loaded) is net


def test_torchscript_and_trusted_pickle_files(tmp_path):
    net = small_net().eval()
    x = torch.randn(1, 3, 8, 8)
    scripted = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(net), scripted)
    pickled = tmp_path / "net.pt"
    torch.save(net, pickled)
    for path, trust in ((scripted, False), (pickled, True)):
        loaded = load_model(path, preprocess=Preprocess(size=8), trust_pickle=trust)
        assert torch.allclose(loaded.module(x), net(x))
        assert loaded.preprocess.size == 8


def test_a_pickle_is_refused_without_trust_and_names_the_option(tmp_path):
    pickled = tmp_path / "net.pt"
    torch.save(small_net(), pickled)
    with pytest.raises(ModelLoadError, match="trust_pickle=True") as caught:
        load_model(pickled)
    assert "--trust-pickle" in str(caught.value) and "torch.nn" in str(caught.value)
    assert "\n" not in str(caught.value)


class Planted:
    """Unpickling this creates ``marker``, as an attacker's code would run."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_never_runs_without_trust(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    torch.save({"format": "convlens-head", "state_dict": Planted(marker)}, path)
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_model(path)
    assert not marker.exists()


def test_state_dict_file_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(small_net().state_dict(), path)
    with pytest.raises(ModelLoadError, match="state_dict.*--arch NAME --weights FILE"):
        load_model(path)


def test_missing_path_and_bad_type():
    with pytest.raises(ModelLoadError, match="convlens models"):
        load_model("no_such_model.pt")
    with pytest.raises(ModelLoadError, match="pass a name"):
        load_model(3.5)


def test_library_models_without_weights():
    resnet = load_model("torchvision:resnet18", pretrained=False)
    assert isinstance(resnet, LoadedModel) and resnet.name == "torchvision:resnet18"
    assert not resnet.module.training
    mobile = load_model("timm:mobilenetv3_small_050", pretrained=False)
    assert mobile.labels is not None and len(mobile.labels) == 1000


def test_unknown_library_names():
    with pytest.raises(ModelLoadError, match="torchvision has no model"):
        load_model("torchvision:resnet_nope")
    with pytest.raises(ModelLoadError, match="timm has no model"):
        load_model("timm:resnet_nope", pretrained=False)


@pytest.fixture
def hub_folder(tmp_path):
    """An empty torch.hub folder for the test (torch's own setting, restored after)."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def test_torchvision_offline_error_says_what_to_do(no_network, hub_folder):
    with pytest.raises(ModelLoadError, match="pretrained=False") as raised:
        load_model("torchvision:resnet18")
    assert "network access" in str(raised.value) and "torchvision:resnet18" in str(raised.value)
    assert no_network == []  # refused before any connection was tried


def test_timm_offline_error_says_what_to_do(no_network, monkeypatch, tmp_path):
    pytest.importorskip("timm")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(ModelLoadError, match="pretrained=False"):
        load_model("timm:mobilenetv3_small_050")
    assert no_network == []


def test_torchvision_pretrained_brings_its_preprocessing_and_labels(no_network, hub_folder):
    """With weights (a random network's, put in torch.hub's cache folder where torchvision
    looks first) the LoadedModel carries the weights' own transform: resize 256, crop 224,
    ImageNet stats."""
    import torchvision

    weights = torchvision.models.SqueezeNet1_1_Weights.DEFAULT
    state = torchvision.models.squeezenet1_1().state_dict()
    (hub_folder / "checkpoints").mkdir(parents=True)
    torch.save(state, hub_folder / "checkpoints" / Path(weights.url).name)
    loaded = load_model("torchvision:squeezenet1_1")
    assert torch.equal(loaded.module.features[0].weight, state["features.0.weight"])
    assert loaded.preprocess.size == 224 and loaded.preprocess.crop_pct == 224 / 256
    assert loaded.preprocess.mean == (0.485, 0.456, 0.406)
    assert loaded.preprocess.interpolation == "bilinear"
    assert loaded.labels == tuple(weights.meta["categories"]) and loaded.label(281) == "tabby"
    assert no_network == []


def test_file_that_is_not_a_model(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(ModelLoadError, match="notes.pt is not a model file"):
        load_model(path)
    # an image is no pickle: no advice to trust it and run its code
    picture = tmp_path / "cat.png"
    Image.new("RGB", (4, 4)).save(picture)
    with pytest.raises(ModelLoadError, match="is not a model file") as caught:
        load_model(picture)
    assert "trust" not in str(caught.value)
    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor_file)
    with pytest.raises(ModelLoadError, match="not an nn.Module"):
        load_model(tensor_file)


def test_preprocess_and_labels_override():
    custom = Preprocess(size=(32, 48), mode="stretch", mean=(0.5,) * 3, std=(0.25,) * 3)
    loaded = load_model(small_net(), preprocess=custom, labels=("a", "b"))
    assert loaded.preprocess is custom and loaded.labels == ("a", "b")
    batch = loaded.preprocess([np.full((10, 10, 3), 255, np.uint8)])
    assert batch.shape == (1, 3, 32, 48) and torch.allclose(batch, torch.full_like(batch, 2.0))
    default = load_model("efficientnet_lite0", pretrained=False, preprocess=custom)
    assert default.preprocess is custom and default.labels == imagenet_labels()


def test_torchscript_model_is_explained(tmp_path):
    """TorchScript modules take no hooks: borrowing one must still work."""
    from convlens.attribution.gradients import saliency

    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(32, 3))
    scripted = torch.jit.script(net.eval())
    images = torch.rand(2, 3, 6, 6)
    expected = saliency(net, images, [0, 2])
    assert torch.allclose(saliency(scripted, images, [0, 2]), expected, atol=1e-6)
