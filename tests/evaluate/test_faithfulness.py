"""Deletion/insertion curves, AUC and average drop/increase: exact values on a linear model."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.networks import CountingNet, small_convnet
from torch import nn

from convlens.errors import MetricError
from convlens.evaluate import average_drop_increase, deletion_curve, insertion_curve, pixel_ranks
from convlens.layers import borrowed_model
from convlens.maps import auc, gaussian_blur

WEIGHTS = [4.0, 3.0, 2.0, 1.0]


def linear_net(weights=WEIGHTS, bias1: float = 0.0) -> nn.Module:
    """1x2x2 image -> 2 logits: class 0 = sum_i w_i x_i, class 1 = ``bias1``."""
    linear = nn.Linear(4, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([weights, [0.0] * 4]))
        linear.bias.copy_(torch.tensor([0.0, bias1]))
    return nn.Sequential(nn.Flatten(), linear)


ONES = torch.ones(1, 1, 2, 2)
BEST_MAP = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # removes the heaviest pixel first


def test_deletion_curve_golden_values():
    curve = deletion_curve(linear_net(), ONES, BEST_MAP, target=0, steps=4, score="logit")
    assert curve.tolist() == [[10.0, 6.0, 3.0, 1.0, 0.0]]
    assert auc(curve).tolist() == [pytest.approx(3.75)]  # (8 + 4.5 + 2 + 0.5) / 4
    worst = deletion_curve(linear_net(), ONES, -BEST_MAP, target=0, steps=4, score="logit")
    assert worst.tolist() == [[10.0, 9.0, 7.0, 4.0, 0.0]]
    assert float(auc(worst)) > float(auc(curve))


def test_deletion_probability_and_uneven_steps():
    curve = deletion_curve(linear_net(), ONES, BEST_MAP, target=0, steps=4)
    assert torch.allclose(curve, torch.sigmoid(torch.tensor([[10.0, 6.0, 3.0, 1.0, 0.0]])))
    # 4 pixels in 3 steps: floor(k * 4 / 3) = 0, 1, 2, 4 pixels removed
    uneven = deletion_curve(linear_net(), ONES, BEST_MAP, target=0, steps=3, score="logit")
    assert uneven.tolist() == [[10.0, 6.0, 3.0, 0.0]]


def test_insertion_curve_golden_values():
    curve = insertion_curve(
        linear_net(), ONES, BEST_MAP, target=0, steps=4, baseline="zero", score="logit"
    )
    assert curve.tolist() == [[0.0, 4.0, 7.0, 9.0, 10.0]]
    assert auc(curve).tolist() == [pytest.approx(6.25)]
    # a custom baseline tensor: removed pixels take the value 0.5
    half = deletion_curve(
        linear_net(), ONES, BEST_MAP, target=0, steps=2, baseline=torch.tensor(0.5), score="logit"
    )
    assert half.tolist() == [[10.0, 6.5, 5.0]]


def test_top1_class_is_fixed_on_the_original_image():
    # class 1 has logit 5: it wins once the image is half deleted; the curve keeps class 0
    curve = deletion_curve(linear_net(bias1=5.0), ONES, BEST_MAP, steps=4, score="logit")
    assert curve.tolist() == [[10.0, 6.0, 3.0, 1.0, 0.0]]


def test_insertion_starts_from_blur():
    images = torch.arange(16.0).view(1, 1, 4, 4)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    maps = torch.rand(1, 4, 4)
    curve = insertion_curve(net, images, maps, target=1, steps=2, score="logit")
    with torch.no_grad():
        assert torch.allclose(curve[0, 0], net(gaussian_blur(images))[0, 1])
        assert torch.allclose(curve[0, -1], net(images)[0, 1])


def test_gaussian_blur_keeps_constants_and_mass():
    flat = torch.full((1, 3, 9, 9), 0.7)
    assert torch.allclose(gaussian_blur(flat), flat)
    spike = torch.zeros(1, 1, 31, 31)
    spike[0, 0, 15, 15] = 1.0
    blurred = gaussian_blur(spike)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5)
    assert blurred[0, 0, 15, 15] == blurred.max()


def test_pixel_ranks_order_by_value_and_break_ties_by_a_seeded_shuffle():
    ranks = pixel_ranks(torch.tensor([[[1.0, 3.0], [3.0, 0.0]]]))
    assert ranks[0, 0, 0] == 2 and ranks[0, 1, 1] == 3  # distinct values keep their order
    assert sorted([int(ranks[0, 0, 1]), int(ranks[0, 1, 0])]) == [0, 1]
    flat = torch.zeros(1, 16, 16)  # every pixel tied
    a, b, c = pixel_ranks(flat, seed=0), pixel_ranks(flat, seed=0), pixel_ranks(flat, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sorted(a.flatten().tolist()) == list(range(256))
    # the first quarter removed is scattered over the image, not the top four rows
    first = a[0] < 64
    assert 0 < int(first[:4].sum()) < 64 and int(first[8:].sum()) > 16


def test_curve_steps_default_to_the_image_side():
    net = small_convnet()
    images, maps = torch.randn(1, 3, 8, 8), torch.rand(1, 8, 8)
    assert deletion_curve(net, images, maps).shape == (1, 9)
    assert insertion_curve(net, images, maps, steps=4).shape == (1, 5)


def test_average_drop_masks_pixels_towards_black_for_a_loaded_model():
    """With a LoadedModel (mean = std = 0.5) an all-zero map turns the input into black
    pixels, (0 - 0.5) / 0.5 = -1 in input space, not the dataset mean (0 in input space)."""
    from convlens.models import LoadedModel, Preprocess

    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], 1)

    preprocess = Preprocess(size=4, mode="stretch", mean=(0.5,) * 3, std=(0.5,) * 3)
    loaded = LoadedModel(Recorder(), "recorder", preprocess)
    images = torch.rand(1, 3, 4, 4)
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = 1.0
    average_drop_increase(loaded, images, maps, target=0)
    explained = seen[-1]
    assert torch.allclose(explained[0, :, 1:, :], torch.full((3, 3, 4), -1.0))
    assert torch.allclose(explained[0, :, 0, 0], images[0, :, 0, 0])


def test_average_drop_and_increase_golden_values():
    mask = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]])
    drop, increase = average_drop_increase(linear_net(), ONES, mask, target=0)
    y, o = torch.sigmoid(torch.tensor(10.0)), torch.sigmoid(torch.tensor(5.5))
    assert torch.allclose(drop, ((y - o) / y)[None])
    assert increase.tolist() == [False]
    # masking out a pixel with a negative weight raises the confidence
    net = linear_net([4.0, 3.0, 2.0, -5.0])
    drop, increase = average_drop_increase(net, ONES, torch.tensor([[[1.0, 1.0], [1.0, 0.0]]]), 0)
    assert drop.tolist() == [0.0] and increase.tolist() == [True]


def test_chunk_size_and_batch_do_not_change_results(unchanged):
    net = small_convnet().train()
    images, maps = torch.randn(3, 3, 8, 8), torch.rand(3, 8, 8)
    with unchanged(net, images, maps):
        reference = deletion_curve(net, images, maps, steps=6, batch_size=1000)
        for size in (1, 5):
            assert torch.allclose(
                deletion_curve(net, images, maps, steps=6, batch_size=size), reference, atol=1e-6
            )
        single = deletion_curve(net, images[1:2], maps[1:2], steps=6)
        assert torch.allclose(single, reference[1:2], atol=1e-6)
        ins = insertion_curve(net, images, maps, steps=6, batch_size=4)
        assert torch.allclose(
            ins, insertion_curve(net, images, maps, steps=6, batch_size=100), atol=1e-6
        )
        drop, inc = average_drop_increase(net, images, maps, batch_size=1)
        drop2, inc2 = average_drop_increase(net, images, maps, batch_size=3)
        assert torch.allclose(drop, drop2, atol=1e-6) and torch.equal(inc, inc2)
    assert net.training  # the borrowed model is handed back in train mode


@pytest.mark.parametrize("curve", [deletion_curve, insertion_curve])
def test_rows_with_the_same_input_share_forward_passes_and_keep_their_targets(curve):
    """Rows 0, 1 and 3 are one image and one map explained for three classes (as a
    class-agnostic map on a multi-object image): their perturbed inputs go through the model
    once per step, and each row still gets its own class's score."""
    gen = torch.Generator().manual_seed(4)
    images, maps = torch.randn(2, 3, 8, 8, generator=gen), torch.rand(2, 8, 8, generator=gen)
    rows, row_maps = images[[0, 0, 1, 0]], maps[[0, 0, 1, 0]]
    targets = torch.tensor([0, 1, 1, 2])
    shared = CountingNet(small_convnet())
    together = curve(shared, rows, row_maps, target=targets, steps=4, batch_size=3)
    distinct = CountingNet(shared.net)
    other_maps = row_maps.clone()
    other_maps[1] = 1 - other_maps[1]  # row 1 now has its own order
    curve(distinct, rows, other_maps, target=targets, steps=4, batch_size=3)
    assert distinct.seen - shared.seen == 5  # one row of 5 inputs fewer
    for n in range(4):
        one = slice(n, n + 1)
        alone = curve(shared.net, rows[one], row_maps[one], target=targets[one], steps=4)
        assert torch.allclose(together[n], alone[0], atol=1e-6), n
    assert not torch.allclose(together[0], together[1])  # same inputs, other class


def test_bad_inputs_raise_and_leave_model_unchanged(unchanged):
    net = small_convnet()
    images = torch.randn(2, 3, 8, 8)
    with unchanged(net, images):
        with pytest.raises(MetricError, match="input resolution"):
            deletion_curve(net, images, torch.rand(2, 4, 4))
        with pytest.raises(MetricError, match="one map per row"):
            insertion_curve(net, images, torch.rand(3, 8, 8))
        nan = torch.rand(2, 8, 8)
        nan[1, 2, 2] = float("nan")
        with pytest.raises(MetricError, match="NaN"):
            deletion_curve(net, images, nan)
        with pytest.raises(MetricError, match="baseline"):
            deletion_curve(net, images, torch.rand(2, 8, 8), baseline="noise")
        with pytest.raises(MetricError, match="score='logit'"):
            deletion_curve(net, images, torch.rand(2, 8, 8), target=lambda out: out[:, 0])
    with pytest.raises(MetricError, match="at least two points"):
        auc(torch.ones(2, 1))


def test_default_model_curves_start_and_end_where_they_should(default_model, unchanged):
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(1))
    module = default_model.module
    with unchanged(module, images, maps):
        deletion = deletion_curve(default_model, images, maps, steps=2, batch_size=2)
        insertion = insertion_curve(default_model, images, maps, steps=2, batch_size=2)
        with borrowed_model(module), torch.no_grad():
            probabilities = module(images).softmax(1)
    top = int(probabilities.argmax())
    assert deletion[0, 0] == pytest.approx(float(probabilities[0, top]), rel=1e-4)
    assert insertion[0, -1] == pytest.approx(float(probabilities[0, top]), rel=1e-4)


def test_curves_and_drops_run_eight_224_pixel_images_a_pass_on_the_cpu():
    """Perturbed images go through `forward_copies`: at most eight 224 x 224 images a pass
    whatever ``batch_size``, with the scores of one image at a time."""
    torch.manual_seed(0)
    net = CountingNet().eval()
    images = torch.rand(3, 3, 224, 224)
    maps = torch.rand(3, 224, 224)
    curve = deletion_curve(net, images, maps, target=1, steps=5, batch_size=64)
    assert [rows for rows, _ in net.calls] == [6, 6, 6]  # 3 images x 6 steps, even passes
    single = deletion_curve(net, images, maps, target=1, steps=5, batch_size=1)
    torch.testing.assert_close(curve, single, rtol=1e-5, atol=1e-6)
    net.calls.clear()
    average_drop_increase(net, images, maps, target=1, batch_size=64)
    assert all(rows <= 8 for rows, _ in net.calls)
