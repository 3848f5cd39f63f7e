"""explain(): targets (top-k, contrast, callable), the Explanation record, save()."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from convlens.attribution import cam as cams
from convlens.attribution import gradients
from convlens.attribution.explain import (
    Explanation,
    explain,
    explain_methods,
    method_names,
    top_predictions,
)
from convlens.attribution.methods import get_method
from convlens.attribution.registry import METHODS, MethodResult, register_method
from convlens.errors import ConvlensError, LayerError, MethodError
from convlens.maps import resize_maps
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
    results, failures = explain_methods(default_model, batch, ["gradcam", "saliency"])
    assert failures == []
    assert [r.method for r in results] == ["gradcam", "saliency"]
    assert results[0].layer == "bn2" and results[1].layer is None
    assert results[0].sources == ["cat"] and results[0].display.shape == (1, 224, 224, 3)
    predictions = top_predictions(default_model, batch.tensor, k=3)[0]
    assert predictions[0]["class_id"] == int(results[0].class_ids[0])
    assert 281 <= predictions[0]["class_id"] <= 285  # a domestic cat class
    assert results[0].overlay(0).shape == (224, 224, 3)


def test_options_are_checked_against_the_registry(net, images):
    with pytest.raises(MethodError, match=r"does not take steps \(did you mean n_steps\?\)"):
        explain(net, images, "integrated_gradients", steps=8)
    with pytest.raises(MethodError, match="saliency does not take patch; it accepts: reduce"):
        explain(net, images, "saliency", patch=3)
    refusal = "gradcam does not take progress; it accepts: eigen_smooth"
    with pytest.raises(MethodError, match=refusal):
        explain(net, images, "gradcam", progress=True)
    # a layer only for the methods that use one; the message names them
    with pytest.raises(MethodError, match="saliency does not use a layer.*gradcam"):
        explain(net, images, "saliency", layer="1")
    with pytest.raises(MethodError, match="does not use a layer"):
        explain_methods(net, images, ["saliency", "occlusion"], layer="1")
    # accepted options reach the method
    few = explain(net, images, "integrated_gradients", n_steps=3)
    reference = gradients.integrated_gradients(net, images, n_steps=3)[0]
    assert torch.equal(few.maps, reference)


def test_registry_records_options_layer_and_progress():
    saliency, ig, scorecam = (
        get_method(n) for n in ("saliency", "integrated_gradients", "scorecam")
    )
    tunnel = ("noise_tunnel", "n_samples", "noise", "seed")
    assert saliency.options == ("reduce", *tunnel) and not saliency.takes_progress
    assert {"n_steps", "baseline", "batch_size", "progress"} <= set(ig.options)
    assert ig.takes_progress and ig.slow and not ig.uses_layer
    assert scorecam.uses_layer and "layer" not in scorecam.options and scorecam.takes_progress


@pytest.mark.parametrize(
    "define, message",
    [
        (lambda: register_method("x_bad", "gradient", uses_layer=True), "uses_layer=True"),
        (lambda: register_method("x_bad", "gradient", slow=True), "must take a keyword 'progress'"),
    ],
)
def test_registration_refuses_inconsistent_methods(define, message):
    def plain(model, images, target=None, *, reduce="max_abs"):
        return images

    with pytest.raises(ValueError, match=message):
        define()(plain)

    def open_ended(model, images, target=None, **options):
        return images

    with pytest.raises(ValueError, match="keyword-only"):
        register_method("x_bad", "gradient")(open_ended)
    assert "x_bad" not in METHODS


@pytest.fixture
def spy_methods():
    """Two temporary methods recording the options they get (removed afterwards)."""
    calls = {}

    def slow_spy(model, images, target=None, *, progress=False):
        calls["slow_spy"] = {"progress": progress}
        return MethodResult(images[:, 0], model(images).detach())

    def quick_spy(model, images, target=None):
        calls["quick_spy"] = {}
        return MethodResult(images[:, 0], model(images).detach())

    register_method("slow_spy", "gradient", slow=True)(slow_spy)
    register_method("quick_spy", "gradient")(quick_spy)
    yield calls
    del METHODS["slow_spy"], METHODS["quick_spy"]


def test_explain_methods_passes_progress_only_to_methods_with_a_bar(net, images, spy_methods):
    explain_methods(net, images, ["slow_spy", "quick_spy"], progress=True)
    assert spy_methods == {"slow_spy": {"progress": True}, "quick_spy": {}}
    explain_methods(net, images, ["slow_spy"])
    assert spy_methods["slow_spy"] == {"progress": False}


def test_explain_adds_no_forward_pass_to_the_method(net, images):
    """Scores, classes and probabilities come from the method's own forward pass."""
    sizes = []
    handle = net.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    try:
        explained = explain_methods(net, images, ["saliency", "input_x_gradient"])[0]
        shared = list(sizes)
        sizes.clear()
        top2 = explain(net, images, "saliency", target="top2")
    finally:
        handle.remove()
    assert shared == [2, 2]  # one forward per method, nothing else
    assert sizes == [2]  # the method's own pass: the 4 top-2 rows share their 2 images
    logits = net(images).detach()
    assert torch.allclose(top2.output, logits.repeat_interleave(2, dim=0))
    assert torch.allclose(top2.scores, logits.topk(2, dim=1).values.flatten())
    probabilities = logits.softmax(1).topk(2, dim=1).values.flatten()
    assert torch.allclose(top2.probabilities, probabilities)
    for item in explained:
        assert torch.allclose(item.output, logits)
        assert torch.allclose(item.scores, logits.max(1).values)


def test_keep_going_returns_failures_and_runs_the_rest(images):
    torch.manual_seed(3)
    no_gap = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)
    )
    results, failures = explain_methods(no_gap, images, ["cam", "gradcam"], keep_going=True)
    assert [r.method for r in results] == ["gradcam"]
    assert [f.method for f in failures] == ["cam"] and isinstance(failures[0].error, LayerError)
    with pytest.raises(LayerError, match="use gradcam"):
        explain_methods(no_gap, images, ["cam", "gradcam"])


def _blob_net() -> nn.Module:
    """sum of channels -> ReLU -> 2x2 average pool -> GAP -> class 0: +mean, class 1: -mean."""
    sum_channels = nn.Conv2d(3, 1, 1, bias=False)
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        sum_channels.weight.fill_(1.0)
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    return nn.Sequential(
        sum_channels, nn.ReLU(), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head
    ).eval()


@pytest.mark.parametrize("method", ["saliency", "occlusion", "gradcam"])
def test_non_square_input_gives_maps_at_input_resolution(method):
    """A 6 x 10 image, zero but for a 2 x 2 blob of ones at rows 2-3, columns 6-7."""
    image = torch.zeros(1, 3, 6, 10)
    image[:, :, 2:4, 6:8] = 1.0
    options = {"patch": 2, "stride": 2} if method == "occlusion" else {}
    if method == "gradcam":  # the pooled 3 x 5 grid (the default layer is the 6 x 10 ReLU)
        options = {"layer": "2"}
    result = explain(_blob_net(), image, method, target=0, **options)
    assert result.maps.shape == (1, 6, 10)
    blob = torch.zeros(6, 10, dtype=torch.bool)
    blob[2:4, 6:8] = True
    if method == "saliency":  # d mean(ReLU(sum_c x_c)) / dx = 1/60 where the ReLU is on
        assert torch.allclose(result.maps[0], blob / 60.0)
    elif method == "occlusion":  # occluding the blob drops the score by 4 * 3 / 60
        assert torch.allclose(result.maps[0], blob * 0.2)
    else:  # one hot cell (1, 3) of the 3 x 5 pooled map, upsampled: peak on the blob
        coarse = torch.zeros(1, 3, 5)
        coarse[0, 1, 3] = 0.2  # ReLU(mean gradient 1/15 * activation 3)
        assert torch.allclose(result.maps, resize_maps(coarse, (6, 10)))
        assert torch.equal(result.maps[0] == result.maps[0].max(), blob)


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
def test_batch_with_per_image_targets_equals_single_calls(net, images, method):
    targets = [4, 1]
    batch = explain(net, images, method, target=targets)
    for i, target in enumerate(targets):
        single = explain(net, images[i : i + 1], method, target=target)
        assert torch.allclose(batch.maps[i], single.maps[0], atol=1e-5)
        assert torch.allclose(batch.scores[i], single.scores[0])
    assert batch.class_ids.tolist() == targets


def test_overlay_draws_a_map_exactly_as_the_cli_panel_does():
    from convlens.render.panel import PanelTile, tile_limits, tile_pixels

    base = _explanation(np.random.default_rng(1).integers(0, 256, (2, 4, 4, 3), np.uint8))
    signed = torch.linspace(-1, 3, 16).view(4, 4)
    result = Explanation(**{**base.__dict__, "maps": torch.stack([signed, signed.abs()])})
    for row in (0, 1):
        tile = PanelTile(result.maps[row], "t")
        (limits,) = tile_limits([tile], "per-map")  # the panel's default scale
        assert np.array_equal(
            tile_pixels(result.display[row], tile.values, limits), result.overlay(row)
        )
    assert not np.array_equal(result.overlay(0), result.overlay(1))  # the sign is drawn


def test_row_records_name_the_class_each_contrast_row_is_explained_against(net, images):
    logits = net(images).detach()
    result = explain(net, images, "gradcam", target=contrast("top1", "top2"), layer="1")
    runner_up = logits.topk(2, dim=1).indices[:, 1]
    assert result.rather_than_ids.tolist() == runner_up.tolist()
    records = result.row_records()
    assert [r["class_id"] for r in records] == logits.argmax(1).tolist()
    assert [r["contrast"]["rather_than_id"] for r in records] == runner_up.tolist()
    assert [r["contrast"]["rather_than"] for r in records] == [f"class {int(c)}" for c in runner_up]
    expected = logits.softmax(1).gather(1, runner_up[:, None])[:, 0]
    assert torch.allclose(result.rather_than_probabilities, expected, atol=1e-6)
    chances = [r["contrast"]["rather_than_probability"] for r in records]
    assert chances == pytest.approx(expected.tolist(), abs=1e-6)
    assert records[0]["method"] == "gradcam" and records[0]["layer"] == "1"
    assert torch.allclose(torch.tensor([r["score"] for r in records]), result.scores)
    plain = explain(net, images, "gradcam", target=2, layer="1").row_records()
    assert all("contrast" not in r for r in plain)


def test_rule_methods_keep_the_input_gradient_their_map_reduces(net, images):
    from convlens.attribution.rules import rule_gradient

    for method, rule in (("guided_backprop", "guided"), ("deconvnet", "deconvnet")):
        result = explain(net, images, method, target=[1, 4])
        expected = rule_gradient(net, images, [1, 4], rule)
        torch.testing.assert_close(result.gradient, expected)
        torch.testing.assert_close(result.maps, result.gradient.abs().amax(1))
    assert explain(net, images, "saliency").gradient is None
