"""The benchmark CNN, the training loop, and the shipped synthetic-shapes weights."""

from __future__ import annotations

import pytest
import torch

from convlens.data.scenes import SCENE_CLASSES
from convlens.data.synthetic import SHAPES, make_batch
from convlens.errors import DataError, ModelLoadError
from convlens.models import load_model
from convlens.models.shapes import WEIGHTS_FILE, ShapesNet, load_shapes_model
from convlens.train import accuracy, train_classifier
from convlens.train.synthetic import save_shapes_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_logits_are_the_spatial_mean_of_the_class_activation_maps():
    # y_c = mean_xy sum_k w_ck A_k(x, y) + b_c: the identity CAM relies on.
    net = ShapesNet(num_classes=4, width=4).eval()
    images = torch.randn(3, 3, 20, 24)
    with torch.no_grad():
        features = net.features(images)
        cams = torch.einsum("ck,bkhw->bchw", net.classifier.weight, features)
        expected = cams.mean(dim=(2, 3)) + net.classifier.bias
        assert features.shape[-2:] == (5, 6)
        torch.testing.assert_close(net(images), expected, rtol=1e-5, atol=1e-5)


def test_training_is_seeded_and_learns_a_separable_toy_task():
    labels = torch.arange(64) % 2
    images = torch.randn(64, 3, 8, 8) * 0.5
    images[:, 0] += 2.0 * labels[:, None, None] - 1.0  # class = sign of the red channel

    def run():
        torch.manual_seed(1)
        net = ShapesNet(num_classes=2, width=4)
        log = train_classifier(net, images, labels, epochs=6, batch_size=16, seed=3)
        return net, log

    (net_a, log_a), (net_b, log_b) = run(), run()
    assert torch.equal(net_a.classifier.weight, net_b.classifier.weight)
    assert log_a.losses == log_b.losses
    assert not net_a.training
    assert log_a.losses[-1] < log_a.losses[0]
    assert accuracy(net_a, images, labels) >= 0.9


def test_shipped_weights_are_small_and_classify_held_out_shapes():
    assert WEIGHTS_FILE.stat().st_size < 400_000
    loaded = load_model("synthetic-shapes")
    assert loaded.labels == SHAPES
    assert loaded.preprocess.height_width == (64, 64)
    batch = make_batch(64, seed=1, start=5000)  # held-out stream, never used in training
    inputs = loaded.preprocess.normalize(batch.display)
    assert accuracy(loaded.module, inputs, batch.labels) >= 0.9
    # mean = std = 0.5: the inputs are (x - 0.5) / 0.5 of the pixels in [0, 1]
    torch.testing.assert_close(inputs, batch.images * 2 - 1)


def test_random_weights_option_gives_the_same_architecture():
    untrained = load_model("synthetic-shapes", pretrained=False)
    assert isinstance(untrained.module, ShapesNet)


def test_loader_takes_classes_size_and_normalisation_from_the_weights_file(tmp_path):
    net = ShapesNet(num_classes=3)
    file = save_shapes_model(net, {"note": "test"}, tmp_path / "w.pt")
    saved = torch.load(file, weights_only=True)
    saved |= {"classes": ["a", "b", "c"], "size": 32, "mean": [0.1, 0.2, 0.3]}
    torch.save(saved, file)
    loaded = load_shapes_model(path=file)
    assert loaded.labels == ("a", "b", "c")
    assert loaded.preprocess.height_width == (32, 32)
    assert loaded.preprocess.mean == (0.1, 0.2, 0.3)
    assert loaded.module.classifier.out_features == 3
    torch.save({"state_dict": net.state_dict()}, file)
    with pytest.raises(ModelLoadError, match="lacks"):
        load_shapes_model(path=file)


def test_scenes_files_share_the_loader_and_keep_their_width(tmp_path):
    from convlens.models.scenes import load_scenes_model
    from convlens.train.scenes import save_scenes_model

    net = ShapesNet(num_classes=len(SCENE_CLASSES), width=4)
    file = save_scenes_model(net, {"note": "test"}, tmp_path / "scenes.pt")
    loaded = load_scenes_model(path=file)
    assert loaded.name == "synthetic-scenes" and loaded.labels == SCENE_CLASSES
    assert loaded.module.classifier.in_features == 3 * 4
    saved = torch.load(file, weights_only=True)
    del saved["width"]
    torch.save(saved, file)
    with pytest.raises(ModelLoadError, match=r"\['width'\].*save_scenes_model"):
        load_scenes_model(path=file)
    with pytest.raises(ModelLoadError, match="convlens train scenes-model"):
        load_scenes_model(path=tmp_path / "absent.pt")


def test_training_loop_rejects_mismatched_inputs():
    net = ShapesNet(num_classes=2, width=4)
    with pytest.raises(DataError, match="one class id per image"):
        train_classifier(net, torch.randn(4, 3, 8, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(DataError, match="epochs"):
        train_classifier(net, torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), epochs=0)


def test_test_only_command_measures_the_shipped_weights(capsys):
    from convlens.cli import main
    from convlens.models.shapes import WEIGHTS_FILE
    from convlens.train.synthetic import held_out_accuracy

    shipped = WEIGHTS_FILE.read_bytes()
    assert main(["train", "shapes-model", "--test-only", "--test", "30"]) == 0
    assert WEIGHTS_FILE.read_bytes() == shipped
    out = capsys.readouterr().out
    measured = held_out_accuracy(test=30)
    assert f"test accuracy {measured:.4f} ({round(measured * 30)} / 30 held-out" in out
    assert measured >= 0.9
