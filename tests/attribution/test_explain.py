"""explain(): targets (top-k, contrast, callable), the Explanation record, save()."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from convlens.attribution import cam as cams
from convlens.attribution.explain import (
    Explanation,
    explain,
    explain_methods,
    method_names,
    top_predictions,
)
from convlens.errors import ConvlensError, MethodError
from convlens.targets import contrast


@pytest.fixture
def net():
    torch.manual_seed(7)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    ).eval()


@pytest.fixture
def images():
    return torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(8))


def test_top_k_rows_classes_and_scores(net, images):
    result = explain(net, images, "gradcam", target="top2")
    logits = net(images).detach()
    top = logits.topk(2, dim=1)
    assert result.image_index.tolist() == [0, 0, 1, 1]
    assert result.class_ids.tolist() == top.indices.flatten().tolist()
    assert torch.allclose(result.scores, top.values.flatten())
    assert result.maps.shape == (4, 6, 6)
    # the second row of image 0 is its runner-up class, explained on its own
    alone = cams.gradcam(net, images[:1], int(top.indices[0, 1]), layer="1")
    assert torch.allclose(result.maps[1], alone[0], atol=1e-6)
    assert result.layer == "1"  # the default CAM layer: the last spatial output


def test_contrast_target_scores_difference(net, images):
    result = explain(net, images, "gradcam", target=contrast(3, 1), layer="1")
    logits = net(images).detach()
    assert torch.allclose(result.scores, logits[:, 3] - logits[:, 1])
    assert result.class_ids.tolist() == [3, 3]
    expected = cams.gradcam(net, images, contrast(3, 1), layer="1")
    assert torch.equal(result.maps, expected)


def test_callable_target(net, images):
    def second_minus_first(output):
        return output[:, 1] - output[:, 0]

    result = explain(net, images, "saliency", target=second_minus_first)
    logits = net(images).detach()
    assert result.class_ids is None and result.class_names is None
    assert torch.allclose(result.scores, logits[:, 1] - logits[:, 0])
    assert result.target == "second_minus_first"
    assert result.record()["rows"][0]["class_id"] is None


@pytest.mark.parametrize("method", ["gradcam", "cam", "saliency"])
def test_train_mode_model_explained_in_eval_mode_and_left_untouched(method, images, unchanged):
    """Default-layer search, the method and the scoring forward all run in eval mode:
    BatchNorm statistics and dropout are untouched, and the model is handed back training."""
    torch.manual_seed(9)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4, 3),
    ).train()
    with unchanged(model, images):
        result = explain(model, images, method)
    assert all(m.training for m in model.modules())
    reference = explain(model.eval(), images, method)
    assert torch.equal(result.maps, reference.maps)
    assert torch.equal(result.scores, reference.scores)


def test_unknown_method_names_close_match(net, images):
    with pytest.raises(MethodError, match="gradcam"):
        explain(net, images, "gradcamm")
    with pytest.raises(MethodError):
        method_names("gradcam,nonsense")
    assert set(method_names("all")) >= {"cam", "gradcam", "scorecam", "guided_gradcam"}
    assert method_names(" gradcam , cam ") == ["gradcam", "cam"]


def test_bare_module_refuses_file_names(net):
    with pytest.raises(ConvlensError, match="load_model"):
        explain(net, ["cat"], "gradcam")


def _explanation(display) -> Explanation:
    return Explanation(
        maps=torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 4, 4),
        method="gradcam",
        layer="1",
        image_index=torch.tensor([0, 1]),
        class_ids=torch.tensor([3, 4]),
        scores=torch.tensor([1.5, -2.0]),
        probabilities=torch.tensor([0.5, 0.25]),
        class_names=["a", "b"],
        sources=["x.png", "y.png"],
        display=display,
        seconds=0.01,
        target="top1",
    )


def test_save_writes_maps_overlays_and_manifest(tmp_path):
    folder = _explanation(np.zeros((2, 4, 4, 3), np.uint8)).save(tmp_path / "out")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["method"] == "gradcam"
    assert [row["class_id"] for row in manifest["rows"]] == [3, 4]
    assert np.array_equal(np.load(folder / manifest["maps"]), np.arange(32).reshape(2, 4, 4))
    assert all((folder / name).is_file() for name in manifest["overlays"])
    assert len(manifest["overlays"]) == 2


def test_save_removes_the_folder_when_writing_fails(tmp_path):
    broken = _explanation(np.zeros((2, 4, 4), np.uint8))  # no colour axis: overlay fails
    with pytest.raises(ConvlensError):
        broken.save(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_explain_methods_and_predictions_on_the_cat(default_model):
    from convlens import load_images

    batch = load_images(["cat"], preprocess=default_model.preprocess)
    results = explain_methods(default_model, batch, ["gradcam", "saliency"])
    assert [r.method for r in results] == ["gradcam", "saliency"]
    assert results[0].layer == "bn2" and results[1].layer is None
    assert results[0].sources == ["cat"] and results[0].display.shape == (1, 224, 224, 3)
    predictions = top_predictions(default_model, batch.tensor, k=3)[0]
    assert predictions[0]["class_id"] == int(results[0].class_ids[0])
    assert 281 <= predictions[0]["class_id"] <= 285  # a domestic cat class
    assert results[0].overlay(0).shape == (224, 224, 3)
