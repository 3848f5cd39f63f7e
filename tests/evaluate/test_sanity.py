"""Cascading parameter randomisation: order, cumulativeness, seeding, similarity values,
and the user's model left untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.helpers.networks import small_convnet
from torch import nn

from convlens.attribution.common import input_gradient
from convlens.errors import LayerError, MetricError
from convlens.evaluate import (
    cascading_randomization,
    mean_defined,
    parametrised_layers,
    randomize_layer,
    spearman,
    ssim,
)
from convlens.evaluate.sanity import average_ranks
from convlens.targets import resolve_targets


def gradient_map(model, images, target):
    """|d score / d input| summed over channels: ``Tensor[N, H, W]``."""
    targets = resolve_targets(target, len(images))
    gradient, _ = input_gradient(model, images, targets)
    return gradient.abs().sum(1)


def image_map(model, images, target):
    """A "map" that ignores the model (an edge-detector-like failure case)."""
    return images.sum(1)


IMAGES = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(3))


def test_layers_are_ordered_from_the_logits_down():
    assert parametrised_layers(small_convnet(), IMAGES) == ["7", "3", "1", "0"]


def test_steps_are_cumulative_and_top_down():
    net = small_convnet()
    original = {name: p.detach().clone() for name, p in net.named_parameters()}
    changed_per_call = []

    def recording_map(model, images, target):
        changed = sorted(
            {
                name.split(".")[0]
                for name, p in model.named_parameters()
                if not torch.equal(p, original[name])
            }
        )
        changed_per_call.append(changed)
        return gradient_map(model, images, target)

    result = cascading_randomization(net, IMAGES, recording_map)
    assert result.layers == ["7", "3", "1", "0"]
    assert changed_per_call == [[], ["7"], ["3", "7"], ["1", "3", "7"], ["0", "1", "3", "7"]]


def test_model_independent_map_stays_identical():
    result = cascading_randomization(small_convnet(), IMAGES, image_map, absolute=False)
    assert torch.allclose(result.spearman, torch.ones(4, 2))
    assert torch.allclose(result.ssim, torch.ones(4, 2), atol=1e-6)


def test_similarity_matches_a_hand_randomised_copy():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 9 * 9, 3))
    result = cascading_randomization(net, IMAGES, gradient_map, target=1, seed=7)
    # gradient of a linear model w.r.t. the input: the class-1 weight row
    copy = nn.Sequential(nn.Flatten(), nn.Linear(3 * 9 * 9, 3))
    copy.load_state_dict(net.state_dict())
    torch.manual_seed(7)
    randomize_layer(copy[1])
    before = net[1].weight[1].detach().view(3, 9, 9).abs().sum(0)
    after = copy[1].weight[1].detach().view(3, 9, 9).abs().sum(0)
    expected = spearman(before[None], after[None])
    assert result.layers == ["1"]
    assert torch.allclose(result.spearman, expected.expand(1, 2))
    assert torch.allclose(result.ssim, ssim(before[None], after[None]).expand(1, 2))
    assert float(result.spearman.abs().max()) < 0.5  # the weights really changed


def test_seeded_and_global_rng_untouched():
    net = small_convnet()  # seeds the global RNG itself, so build it first
    state = torch.get_rng_state()
    first = cascading_randomization(net, IMAGES, gradient_map, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    again = cascading_randomization(small_convnet(), IMAGES, gradient_map, seed=0)
    other = cascading_randomization(small_convnet(), IMAGES, gradient_map, seed=1)
    assert torch.equal(first.spearman, again.spearman)
    assert not torch.equal(first.spearman, other.spearman)


def test_registered_method_groups_and_keep_maps(unchanged):
    net = small_convnet().train()
    with unchanged(net, IMAGES):
        result = cascading_randomization(
            net, IMAGES, "saliency", layers=[["7", "3"], "0"], keep_maps=True
        )
    assert result.layers == ["7,3", "0"]
    assert result.maps.shape == (2, 2, 9, 9)
    assert result.spearman.shape == (2, 2) and result.final().shape == (2,)
    assert net.training


def test_randomize_layer_changes_norm_parameters_keeps_buffers():
    norm = nn.BatchNorm2d(4)
    norm.running_mean.fill_(0.3)
    randomize_layer(norm)
    assert not torch.equal(norm.weight, torch.ones(4))
    assert torch.equal(norm.running_mean, torch.full((4,), 0.3))


def test_spearman_and_ssim_golden_values():
    a = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    assert spearman(a, a).tolist() == [pytest.approx(1.0)]
    assert spearman(a, -a).tolist() == [pytest.approx(-1.0)]
    assert spearman(a, a**3).tolist() == [pytest.approx(1.0)]  # ranks only
    # ties take their average rank: ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4)
    tied = torch.tensor([[[1.0, 1.0, 3.0, 4.0]]])
    assert spearman(a, tied).tolist() == [pytest.approx(4.5 / (4.5 * 5) ** 0.5)]
    maps = torch.rand(2, 8, 8)
    assert torch.allclose(ssim(maps, maps), torch.ones(2))
    assert torch.allclose(ssim(maps, 3 * maps + 1), torch.ones(2), atol=1e-6)  # normalised


@pytest.mark.parametrize("levels", [3, 50, None])  # heavy ties, some ties, none
def test_average_ranks_equal_scipy_rankdata(levels):
    """`average_ranks` (an unstable sort, runs of ties averaged) equals scipy's rankdata
    exactly, on values with many ties, a few ties, and none; negative zeros included."""
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(7)
    for size in (1, 2, 17, 4096):
        values = rng.standard_normal(size)
        if levels is not None:
            values = np.round(values * levels / 4) / levels
            values[::5] = -0.0
        np.testing.assert_array_equal(average_ranks(values), stats.rankdata(values))


def test_bad_inputs_raise_and_leave_model_unchanged(unchanged):
    net = small_convnet()
    with unchanged(net, IMAGES):
        with pytest.raises(MetricError, match="similarity"):
            cascading_randomization(net, IMAGES, gradient_map, similarity=("pearson",))
        with pytest.raises(LayerError):
            cascading_randomization(net, IMAGES, gradient_map, layers=["nope"])

        def nan_map(model, images, target):
            return torch.full(images.shape[:1] + images.shape[2:], float("nan"))

        with pytest.raises(MetricError, match="NaN"):
            cascading_randomization(net, IMAGES, nan_map)
    with pytest.raises(MetricError, match="3x3"):
        ssim(torch.rand(1, 2, 2), torch.rand(1, 2, 2))


def test_a_constant_map_has_no_similarity():
    """An all-zero (or any constant) map has no ranking and no structure: NaN, not a score
    that would pass for "changed completely"."""
    maps = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(4))
    other = maps.clone()
    other[1] = 0.0  # all zeros (a dead Grad-CAM)
    other[2] = 0.7  # constant, not zero
    for values in (spearman(maps, other), ssim(maps, other), spearman(other, maps)):
        assert values[0] == pytest.approx(1.0, abs=1e-6)
        assert bool(torch.isnan(values[1:]).all())


def test_cascade_reports_nan_where_the_map_goes_flat():
    def dies_with_the_logits(model, images, target):
        """The gradient map while the last layer is the trained one, zeros afterwards."""
        trained = torch.equal(model[7].weight, reference[7].weight)
        maps = gradient_map(model, images, target)
        return maps if trained else torch.zeros_like(maps)

    reference = small_convnet()
    result = cascading_randomization(small_convnet(), IMAGES, dies_with_the_logits)
    assert bool(torch.isnan(result.spearman).all()) and bool(torch.isnan(result.ssim).all())
    assert bool(torch.isnan(result.final()).all())


def test_similarities_check_shapes_and_values():
    maps = torch.rand(2, 8, 8)
    for similarity in (spearman, ssim):
        with pytest.raises(MetricError, match="differ in shape"):
            similarity(maps, torch.rand(2, 8, 9))
        with pytest.raises(MetricError, match="differ in shape"):
            similarity(maps, torch.rand(3, 8, 8))
        nan = maps.clone()
        nan[1, 0, 0] = float("nan")
        with pytest.raises(MetricError, match="NaN"):
            similarity(maps, nan)
        with pytest.raises(MetricError, match=r"Tensor\[N, H, W\]"):
            similarity(maps.flatten(), maps.flatten())


def test_mean_defined_leaves_out_nan_and_counts_it():
    nan = float("nan")
    assert mean_defined(torch.tensor([0.2, nan, 0.4, nan])) == (pytest.approx(0.3), 2)
    assert mean_defined(torch.tensor([nan, nan])) == (None, 2)
    assert mean_defined(torch.tensor([-0.5, 0.5])) == (0.0, 0)
