"""The benchmark CNN, the training loop, and the shipped synthetic-shapes weights."""

from __future__ import annotations

import pytest
import torch

from convlens.data.synthetic import SHAPES, make_batch
from convlens.models import load_model
from convlens.train import ShapesNet, accuracy, train_classifier
from convlens.train.synthetic import WEIGHTS_FILE, normalize


@pytest.fixture(autouse=True)
def _one_thread():
    # Small tensors: one intra-op thread is faster, and far faster on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    assert accuracy(loaded.module, normalize(batch.images), batch.labels) >= 0.9
    # the preprocess that travels with the model gives the same inputs as `normalize`
    display = (batch.images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    torch.testing.assert_close(loaded.preprocess.normalize(display), normalize(batch.images))


def test_random_weights_option_gives_the_same_architecture():
    untrained = load_model("synthetic-shapes", pretrained=False)
    assert isinstance(untrained.module, ShapesNet)
