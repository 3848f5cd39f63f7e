"""Training analysis (convlens.analysis): transforms, invariance curves, layer ablation, CAM
crops and feature evolution, as properties on tiny hand-built networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.conftest import assert_same_state, model_state
from tests.helpers.networks import small_convnet, tiny_gap_classifier
from torch import nn

from convlens.analysis import (
    FineTune,
    ablate_layers,
    ablated,
    cam_crops,
    crop_to_box,
    epoch_files,
    feature_evolution,
    invariance_curves,
    transform,
)
from convlens.analysis.ablation import matching_layers
from convlens.data.preprocess import Preprocess
from convlens.errors import DataError, LayerError
from convlens.models.loading import LoadedModel
from convlens.render.analysis import evolution_figure

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(count: int = 4, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(count, 3, size, size, generator=generator), torch.tensor([0, 1, 2, 1])[
        :count
    ]


def _with_dropout() -> nn.Sequential:
    """small_convnet with an (eval-mode identity) Dropout after its second ReLU, at "5"."""
    net = small_convnet()
    layers = list(net)
    return nn.Sequential(*layers[:5], nn.Dropout(0.5), *layers[5:])


# --- transforms and invariance ---------------------------------------------------------


@pytest.mark.parametrize(("kind", "amount"), [("translate", 0), ("scale", 1.0), ("rotate", 0)])
def test_the_neutral_amount_leaves_the_images(kind, amount):
    images, _ = _images()
    moved = transform(images, kind, amount)
    assert moved is not images
    assert torch.allclose(moved, images, atol=1e-5)


def test_rotation_by_360_is_rotation_by_0_and_90_is_a_quarter_turn_anticlockwise():
    images, _ = _images()
    assert torch.allclose(
        transform(images, "rotate", 360), transform(images, "rotate", 0), atol=1e-5
    )
    assert torch.allclose(
        transform(images, "rotate", 90), torch.rot90(images, 1, (-2, -1)), atol=1e-5
    )


@pytest.mark.parametrize("shift", [1, 3, -2, 15])
def test_translation_shifts_rows_down_and_fills_with_zero(shift):
    images, _ = _images()
    moved = transform(images, "translate", shift)
    height = images.shape[-2]
    if shift > 0:
        assert torch.equal(moved[..., shift:, :], images[..., : height - shift, :])
        assert not moved[..., :shift, :].any()
    else:
        assert torch.equal(moved[..., :shift, :], images[..., -shift:, :])
        assert not moved[..., shift:, :].any()


def test_invariance_at_zero_shift_is_distance_0_and_the_original_probability(unchanged):
    net = small_convnet()
    images, labels = _images()
    with unchanged(net, images, labels):
        curves = invariance_curves(net, images, labels, ["1", "4"], "translate", [0, 2, 0])
    for name in ("1", "4"):
        assert curves.distances[name].shape == (3, 4)
        assert torch.equal(curves.distances[name][0], torch.zeros(4))
        assert torch.equal(curves.distances[name][2], torch.zeros(4))
        assert (curves.distances[name][1] > 0).all()
    with torch.no_grad():
        expected = net.eval()(images).softmax(1)[torch.arange(4), labels]
    assert torch.allclose(curves.original, expected, atol=1e-6)
    assert torch.equal(curves.probabilities[0], curves.original)


def test_invariance_after_a_full_turn_is_back_to_the_start():
    net = small_convnet().eval()
    images, labels = _images()
    curves = invariance_curves(net, images, labels, ["4"], "rotate", [0, 180, 360])
    assert curves.distances["4"][2].max() < 1e-4
    assert torch.allclose(curves.probabilities[2], curves.original, atol=1e-5)
    with pytest.raises(DataError, match="unknown transform"):
        invariance_curves(net, images, labels, ["4"], "shear")


@pytest.mark.parametrize(
    "run",
    [
        lambda net, x, y: invariance_curves(net, x, y, ["4"], "rotate", [0]),
        lambda net, x, y: ablate_layers(net, x, y, ["4"]),
        lambda net, x, y: cam_crops(net, x, y, method="gradcam"),
    ],
    ids=["invariance", "ablation", "camcrop"],
)
def test_analyses_take_integer_labels_one_per_image(run):
    net = small_convnet().eval()
    images, labels = _images()
    with pytest.raises(DataError, match=r"integer class ids, got torch.float32; pass labels.long"):
        run(net, images, labels.float())
    with pytest.raises(DataError, match="4 images but labels of shape"):
        run(net, images, labels[:3])


# --- ablation --------------------------------------------------------------------------


@pytest.mark.parametrize("skipped", [2, 4])  # the in-place ReLU, the second ReLU
def test_ablated_identity_is_the_network_without_that_layer(skipped):
    net = _with_dropout().eval()
    images, _ = _images()
    with torch.no_grad(), ablated(net, str(skipped), "identity") as used:
        got = net(images)
        expected = nn.Sequential(*list(net)[:skipped], *list(net)[skipped + 1 :])(images)
    assert used == ["identity"]
    assert torch.equal(got, expected)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_skipping_an_identity_layer_changes_nothing_and_zeroing_leaves_the_bias(unchanged):
    net = _with_dropout()
    images, labels = _images()
    with unchanged(net, images, labels):
        result = ablate_layers(net, images, labels, ["5", "3"], mode="auto")
    dropout, conv = result.rows
    assert (dropout.mode, conv.mode) == ("identity", "identity")  # conv 4->4 keeps the shape
    assert dropout.accuracy == result.accuracy and dropout.probability == result.probability
    zeroed = ablate_layers(net, images, labels, ["4"], mode="zero").rows[0]
    bias = net[-1].bias.detach().softmax(0)  # features 0 -> logits = the last bias
    assert zeroed.mode == "zero"
    assert zeroed.probability == pytest.approx(float(bias[labels].mean()), abs=1e-6)


class _WithUnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net, self.unused = small_convnet(), nn.ReLU()  # `unused` never runs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def test_ablation_patterns_default_stages_and_an_unused_layer():
    net = _WithUnusedLayer()
    images, labels = _images()
    result = ablate_layers(net, images, labels, ["unused", "net.?"])
    rows = result.rows
    assert [row.layer for row in rows] == ["unused"] + [f"net.{i}" for i in range(8)]
    assert matching_layers(net, ["*"]) == ["net", "unused"]  # a star stops at dots
    assert (rows[0].accuracy, rows[0].probability) == (result.accuracy, result.probability)
    assert rows[0].mode == "not run"
    assert len(ablate_layers(net, images, labels).rows) >= 1  # the stages
    with pytest.raises(LayerError, match="no layer name matches"):
        ablate_layers(net, images, labels, ["nothing.*"])


def test_identity_on_a_shape_changing_layer_fails_and_leaves_no_hook(unchanged):
    net = small_convnet()
    images, labels = _images()
    with unchanged(net, images, labels), pytest.raises(LayerError, match="use mode 'zero'"):
        ablate_layers(net, images, labels, ["0"], mode="identity")  # conv 3 -> 4 channels


def test_fine_tuning_trains_a_copy_and_gives_the_model_back(unchanged):
    net = small_convnet().train()
    images, labels = _images()
    before = model_state(net)
    tune = FineTune(images, labels, epochs=3, learning_rate=1e-2, batch_size=2)
    result = ablate_layers(net, images, labels, ["3"], mode="zero", fine_tune=tune)
    assert_same_state(before, model_state(net))
    assert net.training
    row = result.rows[0]
    assert row.tuned_accuracy is not None and 0 <= row.tuned_probability <= 1
    assert row.tuned_probability != row.probability  # the copy was trained
    assert result.tuned_probability != result.probability  # and so was the intact control


# --- CAM crops ---------------------------------------------------------------------------


def test_crop_to_the_whole_image_is_the_image_and_a_box_is_resized():
    images, _ = _images(2)
    whole = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 2)
    assert torch.allclose(crop_to_box(images, whole), images, atol=1e-6)
    rows = images[..., :1].expand(-1, -1, -1, 16)  # constant along x: any x-crop is the same
    assert torch.allclose(crop_to_box(rows, torch.tensor([[2.0, 0.0, 9.5, 16.0]] * 2)), rows)
    with pytest.raises(DataError, match="empty"):
        crop_to_box(images, torch.tensor([[5.0, 5.0, 5.0, 9.0]] * 2))


def test_a_constant_cam_boxes_the_whole_image_and_keeps_the_probability(unchanged):
    net = tiny_gap_classifier()  # no padding: a flat image gives a flat CAM
    images = torch.full((2, 3, 40, 40), 0.3)
    labels = torch.tensor([1, 4])
    with unchanged(net, images, labels):
        crops = cam_crops(net, images, labels, method="cam")
    assert torch.equal(crops.boxes, torch.tensor([[0.0, 0.0, 40.0, 40.0]] * 2))
    assert torch.allclose(crops.after, crops.before, atol=1e-6)
    assert crops.record()["accuracy_after"] == crops.record()["accuracy_before"]


# --- feature evolution -----------------------------------------------------------------


def _loaded(net: nn.Module) -> LoadedModel:
    return LoadedModel(
        net.eval(), "net", Preprocess(16, mode="stretch", mean=(0.5,) * 3, std=(0.5,) * 3)
    )


def test_evolution_follows_the_strongest_unit_per_epoch():
    first = _loaded(small_convnet())
    second = _loaded(small_convnet())
    with torch.no_grad():
        second.module[3].weight.mul_(2.0)  # "epoch 2": the same net, a later layer doubled
    evolution = feature_evolution(
        [first, second], "shapes-test:5", ["4"], count=2, columns=["epoch 1", "epoch 2"]
    )
    assert evolution.columns == ["epoch 1", "epoch 2"] and len(evolution.rows) == 2
    images = torch.stack([first.preprocess.normalize(d) for d in _shapes_display(5)])
    for r, (layer, channel) in enumerate(evolution.rows):
        peaks = [_peak(loaded.module, images, int(layer), channel) for loaded in (first, second)]
        assert torch.allclose(evolution.values[:, r], torch.tensor(peaks), atol=1e-5)
        assert evolution.projections[0][r].shape[0] == 3
    figure = evolution_figure(evolution)
    titles = [axes.get_title() for axes in figure.axes]
    assert len(figure.axes) == 2 * 2 and titles[:2] == ["epoch 1", "epoch 2"]  # one per epoch


def _shapes_display(count: int):
    from convlens.analysis.data import analysis_dataset

    dataset = analysis_dataset(f"shapes-test:{count}", Preprocess(16, mode="stretch"))
    return [dataset.display(i) for i in range(count)]


def _peak(net: nn.Sequential, images: torch.Tensor, layer: int, channel: int) -> float:
    with torch.no_grad():
        return float(net[: layer + 1](images)[:, channel].max())


def test_epoch_files_are_in_epoch_order_and_missing_ones_are_named(tmp_path):
    for epoch in (10, 2, 0):
        (tmp_path / "epochs").mkdir(exist_ok=True)
        (tmp_path / "epochs" / f"epoch-{epoch:03d}.pt").write_bytes(b"")
    assert [p.name for p in epoch_files(tmp_path)] == [
        "epoch-000.pt",
        "epoch-002.pt",
        "epoch-010.pt",
    ]
    with pytest.raises(DataError, match="--keep-epochs"):
        epoch_files(tmp_path / "epochs" / "nothing")


# --- data ---------------------------------------------------------------------------------


def test_photos_carry_their_known_class_and_shapes_are_the_held_out_stream():
    from convlens.analysis import labelled_images
    from convlens.data.datasets import ShapesDataset
    from convlens.data.photos import package_photos
    from convlens.data.synthetic import SyntheticShapes

    small = Preprocess(16, mode="stretch")
    known = [photo for photo in package_photos() if photo.class_id is not None][:1]
    if known:
        photos = labelled_images("photos", small, limit=1)
        assert photos.labels.tolist() == [photo.class_id for photo in known]
        assert photos.inputs.shape == (len(known), 3, 16, 16)
    shapes = labelled_images("shapes-test:4", small)
    held_out = ShapesDataset(SyntheticShapes(4, seed=1), small, "shapes-test")
    assert shapes.sources == [f"shapes-test:{i}" for i in range(4)]
    assert np.array_equal(shapes.display, np.stack([held_out.display(i) for i in range(4)]))
    assert torch.equal(shapes.labels, SyntheticShapes(4, seed=1).batch().labels)
    with pytest.raises(DataError, match="shapes:N"):
        labelled_images("shapes:x", small)
