"""The metric zoo: properties that need no reference, and equality with Quantus 0.6.

Parity tests feed Quantus and convlens the same images, maps, targets and, for randomised
metrics, the same random draws (convlens takes the draws as an option; the test makes them
with NumPy in the order Quantus consumes the global NumPy generator), so every comparison
is deterministic and held to |difference| <= 1e-4 (float32 model outputs through float64
sums). Quantus divides the whole batch by its largest |value| where convlens divides each map
by its own; the maps are built with the same largest |value| (1) so both agree, and the
metrics that are not scale-invariant are compared on that footing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tests.helpers.networks import small_convnet, tiny_gap_classifier

from convlens.errors import MetricError
from convlens.evaluate import metrics_zoo as zoo

SIDE = 16


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    net = small_convnet().eval()
    images = torch.randn(4, 3, SIDE, SIDE)
    maps = torch.randn(4, SIDE, SIDE)
    maps = maps / maps.abs().amax((1, 2), keepdim=True)  # every map's largest |value| is 1
    targets = torch.tensor([0, 1, 2, 1])
    masks = torch.zeros(4, SIDE, SIDE, dtype=torch.bool)
    masks[:, 4:10, 3:12] = True
    masks[1, :, :2] = True
    return net, images, maps, targets, masks


def gradient_map(net):
    """x * d(logit)/dx summed over channels: a cheap deterministic explainer."""

    def explain(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = images.detach().clone().requires_grad_(True)
        logits = net(x)
        (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), x)
        return (grad * x).sum(1).detach()

    return explain


# ---------------------------------------------------------------- properties


def test_gini_and_entropy_extremes():
    one_hot = torch.zeros(2, 8, 8)
    one_hot[:, 3, 5] = 1.0
    flat = torch.full((2, 8, 8), 0.5)
    assert torch.allclose(
        zoo.sparseness(None, None, one_hot), torch.tensor(63 / 64, dtype=torch.float64), atol=1e-5
    )
    assert torch.allclose(
        zoo.sparseness(None, None, flat), torch.zeros(2, dtype=torch.float64), atol=1e-9
    )
    assert torch.allclose(
        zoo.complexity(None, None, one_hot), torch.zeros(2, dtype=torch.float64), atol=1e-9
    )
    assert torch.allclose(
        zoo.complexity(None, None, flat), torch.full((2,), math.log(64), dtype=torch.float64)
    )


def test_localisation_metrics_on_a_map_equal_to_the_mask(case):
    _, _, _, _, masks = case
    perfect = masks.float()
    assert torch.equal(
        zoo.relevance_mass_accuracy(None, None, perfect, masks=masks),
        torch.ones(4, dtype=torch.float64),
    )
    assert torch.equal(
        zoo.relevance_rank_accuracy(None, None, perfect, masks=masks),
        torch.ones(4, dtype=torch.float64),
    )
    empty = masks.clone()
    empty[2] = False
    assert torch.isnan(zoo.relevance_mass_accuracy(None, None, perfect, masks=empty)[2])


def test_selectivity_prefers_the_map_that_removes_what_the_logit_uses(case, unchanged):
    net, images, _, targets, _ = case
    # a linear "model" that reads only the top-left 8x8 patch: removing it first wins
    weight = torch.zeros(3, 3, SIDE, SIDE)
    weight[:, :, :8, :8] = 1.0
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIDE * SIDE, 3, bias=False))
    model[1].weight.data = weight.reshape(3, -1)
    positive = images.abs() + 1  # the black value (min) is below every pixel
    good = torch.zeros(4, SIDE, SIDE)
    good[:, :8, :8] = 1
    with unchanged(model, positive, good):
        good_score = zoo.selectivity(model, positive, good, targets, softmax=False)
    bad_score = zoo.selectivity(model, positive, 1 - good, targets, softmax=False)
    assert (good_score < bad_score).all()


def test_registry_and_errors(case):
    net, images, maps, targets, masks = case
    assert zoo.metric_names("all") == list(zoo.METRICS)
    assert zoo.metric_names("sparseness, complexity") == ["sparseness", "complexity"]
    with pytest.raises(MetricError, match="unknown metric"):
        zoo.metric_names("gini")
    with pytest.raises(MetricError, match="masks"):
        zoo.run_metric("relevance_mass_accuracy", net, images, maps, targets)
    with pytest.raises(MetricError, match="explain"):
        zoo.run_metric("random_logit", net, images, maps, targets)
    with pytest.raises(MetricError, match="input resolution"):
        zoo.run_metric("selectivity", net, images, maps[:, :8], targets)
    for name, spec in zoo.METRICS.items():
        scores = zoo.run_metric(
            name,
            net,
            images,
            maps,
            targets,
            masks=masks,
            explain=gradient_map(net),
            method=lambda model, x, t: gradient_map(model)(x, t),
            **({"samples": 2} if "sensitivity" in name or "lipschitz" in name else {}),
            **({"runs": 4} if name == "faithfulness_correlation" else {}),
        )
        assert scores.shape == (4,) and scores.dtype == torch.float64, name
        assert isinstance(spec.higher_is_better, bool)


def test_random_subsets_are_distinct_and_uniform():
    generator = torch.Generator().manual_seed(0)
    subsets = zoo.random_subsets(50, 40, 6, 20, generator)
    assert subsets.shape == (50, 20, 6)
    flat = subsets.view(-1, 6)
    assert all(len(set(row.tolist())) == 6 for row in flat)
    counts = torch.bincount(flat.flatten(), minlength=40).double()
    expected = flat.numel() / 40  # 150 per index; 5 sigma of a binomial is about 60
    assert (counts - expected).abs().max() < 60


# ---------------------------------------------------------------- parity with Quantus


@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


def _np(t):
    return t.detach().numpy().astype(np.float32)


def _call(metric, net, images, maps, targets, **kwargs):
    return np.asarray(
        metric(
            model=net,
            x_batch=_np(images),
            y_batch=targets.numpy(),
            a_batch=_np(maps)[:, None],
            channel_first=True,
            device="cpu",
            **kwargs,
        ),
        dtype=np.float64,
    )


def _quantus_explain(explain):
    def inner(model, inputs, targets, **kwargs):
        x = torch.from_numpy(np.asarray(inputs, dtype=np.float32))
        return explain(x, torch.from_numpy(np.asarray(targets)).long()).numpy()[:, None]

    return inner


def test_map_only_metrics_equal_quantus(quantus, case):
    net, images, maps, targets, masks = case
    s = masks.numpy()[:, None].astype(np.float32)
    pairs = [
        (quantus.Sparseness, zoo.sparseness, {}),
        (quantus.Complexity, zoo.complexity, {}),
        (quantus.RelevanceMassAccuracy, zoo.relevance_mass_accuracy, {"masks": masks}),
        (quantus.RelevanceRankAccuracy, zoo.relevance_rank_accuracy, {"masks": masks}),
    ]
    for reference, ours, extra in pairs:
        expected = _call(reference(disable_warnings=True), net, images, maps, targets, s_batch=s)
        got = ours(net, images, maps, targets, **extra).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=reference.__name__)


def test_selectivity_equals_quantus(quantus, case, unchanged):
    net, images, maps, targets, _ = case
    metric = quantus.Selectivity(patch_size=6, disable_warnings=True)  # 16 px: padded by 1
    _call(metric, net, images, maps, targets)
    expected = [np.trapezoid(np.asarray(curve), dx=1) for curve in metric.evaluation_scores]
    with unchanged(net, images, maps):
        got = zoo.selectivity(net, images, maps, targets, patch_size=6)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)


def test_faithfulness_correlation_equals_quantus_on_shared_draws(quantus, case, monkeypatch):
    net, images, maps, targets, _ = case
    runs, size, features = 12, 40, 3 * SIDE * SIDE
    generator = torch.Generator().manual_seed(3)
    subsets = zoo.random_subsets(4, features, size, runs, generator)
    # Quantus draws each run's subset image by image with np.random.choice: replay ours
    replay = iter(subsets.permute(1, 0, 2).reshape(-1, size).numpy())
    monkeypatch.setattr(np.random, "choice", lambda *args, **kwargs: next(replay))
    metric = quantus.FaithfulnessCorrelation(
        nr_runs=runs, subset_size=size, return_aggregate=False, disable_warnings=True
    )
    expected = _call(metric, net, images, maps, targets)
    got = zoo.faithfulness_correlation(net, images, maps, targets, subsets=subsets)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)


def test_random_logit_equals_quantus(quantus, case):
    net, images, maps, targets, _ = case
    explain = gradient_map(net)
    own = explain(images, targets)
    metric = quantus.RandomLogit(num_classes=3, seed=7, normalise=False, disable_warnings=True)
    expected = _call(metric, net, images, own, targets, explain_func=_quantus_explain(explain))
    got = zoo.random_logit(net, images, own, targets, explain=explain, seed=7, normalise=False)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("name", ["MaxSensitivity", "AvgSensitivity"])
def test_sensitivity_equals_quantus_on_shared_noise(quantus, case, name):
    net, images, _, targets, _ = case
    explain = gradient_map(net)
    own = explain(images, targets)
    samples = 3
    np.random.seed(5)
    noise = np.stack(
        [np.random.uniform(-0.2, 0.2, size=(4, 3 * SIDE * SIDE)) for _ in range(samples)]
    )
    noise = torch.from_numpy(noise).float().view(samples, *images.shape)
    np.random.seed(5)
    metric = getattr(quantus, name)(nr_samples=samples, disable_warnings=True)
    expected = _call(metric, net, images, own, targets, explain_func=_quantus_explain(explain))
    ours = zoo.max_sensitivity if name == "MaxSensitivity" else zoo.avg_sensitivity
    got = ours(net, images, own, targets, explain=explain, noise=noise)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)


def test_local_lipschitz_equals_quantus_on_shared_noise(quantus, case):
    net, images, _, targets, _ = case
    explain = gradient_map(net)
    own = explain(images, targets)
    samples = 3
    np.random.seed(6)
    noise = np.stack(
        [np.random.normal(0.0, 0.1, size=(4, 3 * SIDE * SIDE)) for _ in range(samples)]
    )
    np.random.seed(6)
    metric = quantus.LocalLipschitzEstimate(
        nr_samples=samples, normalise=False, disable_warnings=True
    )
    expected = _call(metric, net, images, own, targets, explain_func=_quantus_explain(explain))
    noise = torch.from_numpy(noise).float().view(samples, *images.shape)
    got = zoo.local_lipschitz_estimate(
        net, images, own, targets, explain=explain, noise=noise, normalise=False
    )
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)


# ---------------------------------------------------------------- MPRT, efficient MPRT


def test_randomised_model_redraws_every_layer_of_a_copy_from_its_seed(case, unchanged):
    net, images, _, _, _ = case
    rng = torch.random.get_rng_state()
    seen = {}
    with unchanged(net, images):
        for order in ("top_down", "bottom_up"):
            seen[order] = []
            record = seen[order].append
            zoo.randomised_model(net, images, seed=3, order=order, each=lambda n, _, r=record: r(n))
        a, b = (zoo.randomised_model(net, images, seed=3) for _ in range(2))
        c = zoo.randomised_model(net, images, seed=4)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the global generator is untouched
    assert seen["top_down"] == ["7", "3", "1", "0"] == seen["bottom_up"][::-1]
    for p, q, r, s in zip(
        net.parameters(), a.parameters(), b.parameters(), c.parameters(), strict=True
    ):
        assert not torch.equal(p, q) and torch.equal(q, r) and not torch.equal(q, s)
    with pytest.raises(MetricError, match="order"):
        zoo.randomised_model(net, images, order="sideways")


def test_a_map_that_ignores_the_model_fails_both_randomisation_tests(case, unchanged):
    net, images, maps, targets, _ = case

    def fixed(model, x, t):  # the same maps whatever the weights: what MPRT exists to catch
        return maps

    with unchanged(net, images, maps):
        same = zoo.mprt(net, images, maps, targets, method=fixed)
        mean = zoo.mprt(net, images, maps, targets, method=fixed, aggregate="mean")
        rise = zoo.efficient_mprt(net, images, maps, targets, method=fixed)
    assert torch.allclose(same, torch.ones(4, dtype=torch.float64))
    assert torch.allclose(mean, torch.ones(4, dtype=torch.float64))
    assert torch.equal(rise, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(MetricError, match="method=callable"):
        zoo.mprt(net, images, maps, targets)
    flat = torch.ones(4, SIDE, SIDE)  # no entropy to rise from: undefined
    assert torch.isnan(zoo.efficient_mprt(net, images, flat, targets, method=fixed)).all()


def _replay_quantus(quantus, metric, net, images, maps, targets, method, seed, monkeypatch):
    """Run a Quantus randomisation metric so that it draws the weights convlens draws:
    Quantus re-seeds the global generator with ``seed + 1`` before each layer; with that
    re-seeding disabled and the generator seeded once with ``seed``, both re-draw the same
    layers (this net's call order is its definition order) from one stream, in order."""

    def quantus_explain(model, inputs, targets, **kwargs):
        x = torch.from_numpy(np.asarray(inputs, dtype=np.float32))
        return method(model, x, torch.from_numpy(np.asarray(targets)).long()).numpy()[:, None]

    torch.manual_seed(seed)
    with monkeypatch.context() as patch:
        patch.setattr(torch, "manual_seed", lambda *args, **kwargs: None)
        return _call(metric, net, images, maps, targets, explain_func=quantus_explain)


@pytest.mark.parametrize("aggregate", ["last", "mean"])
def test_mprt_equals_quantus_on_shared_draws(quantus, monkeypatch, aggregate):
    net = tiny_gap_classifier().eval()
    images = torch.randn(4, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 1, 2, 4])

    def method(model, x, t):
        return gradient_map(model)(x, t)

    maps = method(net, images, targets)
    options = {"return_last_correlation": True, "skip_layers": True}
    if aggregate == "mean":
        options = {"return_average_correlation": True}
    metric = quantus.MPRT(seed=5, disable_warnings=True, **options)
    expected = _replay_quantus(quantus, metric, net, images, maps, targets, method, 5, monkeypatch)
    got = zoo.mprt(net, images, maps, targets, method=method, seed=5, aggregate=aggregate)
    assert not np.isnan(expected).all()
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)


def test_efficient_mprt_equals_quantus_on_shared_draws(quantus, monkeypatch):
    net = tiny_gap_classifier().eval()
    images = torch.randn(4, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 1, 2, 4])

    def method(model, x, t):
        return gradient_map(model)(x, t)

    maps = method(net, images, targets)
    metric = quantus.EfficientMPRT(seed=5, disable_warnings=True)
    expected = _replay_quantus(quantus, metric, net, images, maps, targets, method, 5, monkeypatch)
    got = zoo.efficient_mprt(net, images, maps, targets, method=method, seed=5)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)
