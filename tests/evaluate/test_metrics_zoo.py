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
from tests.helpers.layouts import LayoutBlind, ViewNet
from tests.helpers.networks import small_convnet, tiny_gap_classifier
from torch import nn

from convlens.attribution.common import _CONTIGUOUS_ONLY
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


def test_explain_is_called_at_most_the_cpu_pass_rows_at_a_time_for_a_cpu_model():
    """With the model on the CPU the explain function gets even calls of at most
    `CPU_PASS_PIXELS` pixels, whatever ``batch_size``; the maps (per image) are those of one
    call on the whole batch. Without a model, or with one elsewhere (here the meta device),
    ``explain`` may run anywhere: ``batch_size`` as given."""
    torch.manual_seed(0)
    net = small_convnet().eval()
    images = torch.randn(11, 3, 224, 224)
    targets = torch.arange(11) % 3
    calls = []
    explain = gradient_map(net)

    def recorded(x, t):
        calls.append(len(x))
        return explain(x, t)

    found = zoo._explain_chunks(recorded, images, targets, batch_size=256, model=net)
    assert calls == [6, 5]
    torch.testing.assert_close(found, explain(images, targets), rtol=1e-5, atol=1e-6)
    for model, size, expected in [(net, 2, [2] * 5 + [1]), (None, 256, [11])]:
        calls.clear()
        zoo._explain_chunks(recorded, images, targets, batch_size=size, model=model)
        assert calls == expected
    calls.clear()
    elsewhere = nn.Linear(1, 1).to("meta")
    zoo._explain_chunks(recorded, images, targets, batch_size=256, model=elsewhere)
    assert calls == [11]


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
            **({"percentages": (10, 60)} if name.startswith("road") else {}),
            **(
                {"samples": 2, "features_in_step": 96} if name == "monotonicity_correlation" else {}
            ),
        )
        assert scores.shape == (4,) and scores.dtype == torch.float64, name
        assert isinstance(spec.higher_is_better, bool)


def test_rank_accuracy_takes_tied_pixels_in_raster_order_as_a_stable_sort():
    torch.manual_seed(0)
    maps = torch.randint(0, 4, (6, 8, 8)).float()  # many ties at every threshold
    maps[5] = 0.0  # one constant map: every pixel tied
    masks = torch.rand(6, 8, 8) < 0.3
    masks[0] = False  # an empty mask: NaN
    masks[1] = True  # a full mask: 1
    got = zoo.relevance_rank_accuracy(None, None, maps, masks=masks)
    for n in range(6):
        size = int(masks[n].sum())
        order = torch.sort(-maps[n].flatten(), stable=True).indices[:size]
        if size == 0:
            assert got[n].isnan()
        else:
            assert got[n].item() == int(masks[n].flatten()[order].sum()) / size


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (3, 1, 1, 5)])  # 96 values; 5 (not 16k)
@pytest.mark.parametrize("kind", ["relative", "lipschitz"])
def test_noise_drawn_one_sample_at_a_time_is_the_one_call_stream(shape, kind):
    generator = torch.Generator().manual_seed(4)
    if kind == "relative":
        whole = (torch.rand(3, *shape, generator=generator) * 2 - 1) * 0.2
    else:
        whole = torch.randn(3, *shape, generator=generator) * 0.2
    draws = [draw.clone() for draw in zoo._noise_draws(kind, 3, shape, 0.2, seed=4)]
    assert all(torch.equal(draw, part) for draw, part in zip(draws, whole, strict=True))


def test_infidelity_is_the_same_for_every_chunk_size_and_an_input_editing_model(case, unchanged):
    net, images, maps, targets, _ = case

    class EditsInput(torch.nn.Module):  # the same function, but it writes into its input
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.mul_(2).div_(2))

    editing = EditsInput(net).eval()
    reference = zoo.infidelity(net, images, maps, targets, patch_sizes=(6, 8))
    for model, batch_size in ((net, 3), (net, 1000), (editing, 5), (editing, 64)):
        with unchanged(model, images, maps):
            got = zoo.infidelity(
                model, images, maps, targets, patch_sizes=(6, 8), batch_size=batch_size
            )
        torch.testing.assert_close(got, reference, rtol=1e-6, atol=1e-6)


class SpoilsInput(torch.nn.Module):
    """The same function as ``inner``, but it overwrites its input after reading it: a
    metric that reused a perturbed batch without rebuilding it would see the change."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x.clone())
        x.fill_(7.0)
        return out


@pytest.mark.parametrize(
    "name, options",
    [
        ("selectivity", {"patch_size": 6}),
        ("selectivity", {"patch_size": 5, "softmax": False}),
        ("faithfulness_correlation", {"runs": 7, "subset_size": 20}),
        ("monotonicity_correlation", {"samples": 3, "features_in_step": 96, "softmax": False}),
        ("infidelity", {"patch_sizes": (4, 6)}),
    ],
)
def test_perturbed_batches_are_the_same_for_every_chunk_size_and_an_input_spoiling_model(
    case, unchanged, name, options
):
    net, images, maps, targets, _ = case
    spoiling = SpoilsInput(net).eval()
    reference = zoo.run_metric(name, net, images, maps, targets, **options)
    for batch_size in (3, 5, 64, 1000):
        plain = zoo.run_metric(name, net, images, maps, targets, batch_size=batch_size, **options)
        with unchanged(spoiling, images, maps):
            got = zoo.run_metric(
                name, spoiling, images, maps, targets, batch_size=batch_size, **options
            )
        # the same batches: the same scores, bit for bit
        assert torch.equal(got.isnan(), plain.isnan())
        assert torch.equal(got.nan_to_num(), plain.nan_to_num())
        # other batch compositions round float32 logits differently (a correlation of small
        # drops magnifies that)
        torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize(
    "name, options",
    [
        ("selectivity", {"patch_size": 6}),
        ("faithfulness_correlation", {"runs": 7, "subset_size": 20}),
        ("infidelity", {"patch_sizes": (4,)}),
        ("monotonicity_correlation", {"samples": 3, "features_in_step": 64}),
    ],
)
def test_perturbed_batches_in_channels_last_equal_contiguous_ones(case, unchanged, name, options):
    """The perturbed batches go through the model channels-last on the CPU; a model that
    cannot take that layout (``view``) gets them contiguous. Both give the same scores, float
    rounding aside (that the batches hold the right perturbations: the Quantus tests and
    `test_storage_positions_scatter_the_same_elements_in_either_layout`)."""
    _, images, maps, targets, _ = case
    torch.manual_seed(0)
    view = ViewNet().eval()
    blind = LayoutBlind(ViewNet().eval()).eval()
    blind.net.load_state_dict(view.state_dict())
    with unchanged(view, images, maps):
        fallback = zoo.run_metric(name, view, images, maps, targets, **options)
    with unchanged(blind, images, maps):
        laid_out = zoo.run_metric(name, blind, images, maps, targets, **options)
    assert all(blind.layouts) and view in _CONTIGUOUS_ONLY
    assert fallback.isfinite().all()
    torch.testing.assert_close(laid_out, fallback, rtol=1e-4, atol=1e-5)


def test_storage_positions_scatter_the_same_elements_in_either_layout():
    """`_storage_positions` turns flat ``C*H*W`` (channel-first) positions into positions of
    the channels-last storage order the perturbed batches are built in: scattering through
    `_storage_flat` at them changes the same elements."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 3, 5, 7, generator=generator)  # Tensor[g, b, C, H, W]
    index = torch.randint(0, 3 * 5 * 7, (2, 3, 11), generator=generator)
    expected = x.clone()
    expected.view(2, 3, -1).scatter_(2, index, -9.0)
    laid_out = torch.empty(6, 3, 5, 7, memory_format=torch.channels_last).view(2, 3, 3, 5, 7)
    laid_out.copy_(x)
    assert not laid_out.is_contiguous()
    positions = zoo._storage_positions(index, x[0])  # a CPU Tensor[B, C, H, W]: channels-last
    zoo._storage_flat(laid_out).scatter_(2, positions, -9.0)
    assert torch.equal(laid_out, expected)
    on_one_channel = torch.randn(3, 1, 5, 7)  # contiguous and channels-last are one order
    assert torch.equal(zoo._storage_positions(index % 35, on_one_channel), index % 35)


@pytest.mark.parametrize("rows", [1, 3])
def test_ssim_1d_equals_skimage_and_refuses_short_maps(rows):
    metrics = pytest.importorskip("skimage.metrics")
    generator = torch.Generator().manual_seed(3)
    a = torch.rand(5, 40, generator=generator, dtype=torch.float64)
    b = (a + 0.3 * torch.rand(5, 40, generator=generator, dtype=torch.float64)).abs()
    b[1] = a[1]  # a perfect match scores 1
    got = zoo._ssim_1d(a, b, rows=rows)  # 5 rows: the last chunk of 3 is short
    for row, x, y in zip(got.tolist(), a.numpy(), b.numpy(), strict=True):
        span = max(x.max(), y.max()) - min(x.min(), y.min())
        assert row == pytest.approx(metrics.structural_similarity(x, y, data_range=span), abs=1e-12)
    assert got[1].item() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(MetricError, match="at least 7"):
        zoo._ssim_1d(a[:, :6], b[:, :6])


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


# ------------------------------------------ ROAD, IROF, infidelity, monotonicity
# Quantus 0.6's ROAD and IROF run only on one-channel images (with three channels ROAD indexes
# its pixel mask with channel-value indices and IROF asserts a one-channel mask has the
# image's shape); their parity tests use one-channel inputs, and `linear_imputation` is
# also compared on three channels directly.


def gray_case():
    """A seeded linear 3-class model on one-channel 16 px images, whose top class moves when
    pixels are imputed, with four images, maps (largest |value| 1) and the predicted classes."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIDE * SIDE, 3)).eval()
    torch.manual_seed(0)
    images = torch.rand(4, 1, SIDE, SIDE)
    maps = torch.randn(4, SIDE, SIDE)
    maps = maps / maps.abs().amax((1, 2), keepdim=True)
    with torch.no_grad():
        targets = net(images).argmax(1)
    return net, images, maps, targets


def test_infidelity_is_zero_for_a_linear_model_explained_by_its_weights():
    # f(x) = w . x on one channel: every logit drop is exactly sum(w * (x - x_k))
    net, images, _, _ = gray_case()
    weights = net[1].weight.detach().view(3, SIDE, SIDE)
    targets = torch.tensor([0, 1, 2, 0])
    exact = zoo.infidelity(net, images, weights[targets], targets)
    assert exact.abs().max() < 1e-8  # float32 logits
    assert (zoo.infidelity(net, images, -weights[targets], targets) > 1e-3).all()


def test_infidelity_equals_quantus(quantus, case, unchanged):
    net, images, maps, targets, _ = case
    metric = quantus.Infidelity(n_perturb_samples=1, disable_warnings=True)
    expected = _call(metric, net, images, maps, targets)
    with unchanged(net, images, maps):
        got = zoo.infidelity(net, images, maps, targets)
    # scores reach ~2e3 and Quantus sums the 768 products in float32: relative 1e-6
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-4)


def color_case():
    """`small_convnet` on four seeded three-channel 12 px images (Quantus's monotonicity needs
    ``features_in_step`` to divide H*W, and a multiple of 3 divides 144), random maps."""
    torch.manual_seed(0)
    net = small_convnet().eval()
    images = torch.rand(4, 3, 12, 12)
    maps = torch.randn(4, 12, 12)
    maps = maps / maps.abs().amax((1, 2), keepdim=True)
    return net, images, maps, torch.tensor([0, 1, 2, 1])


@pytest.mark.parametrize("channels", [1, 3])
def test_monotonicity_correlation_equals_quantus_on_shared_draws(quantus, unchanged, channels):
    """On three channels the perturbed copies are built channels-last (their flat positions
    remapped): a wrong remapping sets other pixels and breaks the equality."""
    net, images, maps, targets = gray_case() if channels == 1 else color_case()
    step, samples = 32 if channels == 1 else 48, 3
    groups = images[0].numel() // step
    np.random.seed(4)  # Quantus draws one value per image, for each group then each sample
    values = np.stack(
        [[np.random.uniform(0, 1, size=4) for _ in range(samples)] for _ in range(groups)]
    )
    np.random.seed(4)
    metric = quantus.MonotonicityCorrelation(
        nr_samples=samples, features_in_step=step, disable_warnings=True
    )
    expected = _call(metric, net, images, maps, targets)
    with unchanged(net, images, maps):
        got = zoo.monotonicity_correlation(
            net,
            images,
            maps,
            targets,
            samples=samples,
            features_in_step=step,
            values=torch.from_numpy(values).permute(2, 0, 1),
        )
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)


def test_irof_equals_quantus_run_image_by_image(quantus, monkeypatch, unchanged):
    net, images, maps, targets = gray_case()
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # gone in NumPy 2
    # Quantus fills with the mean of its whole batch: one image per batch is the image's mean
    metric = quantus.IROF(return_aggregate=False, disable_warnings=True)
    expected = _call(metric, net, images, maps, targets, batch_size=1)
    with unchanged(net, images, maps):
        got = zoo.irof(net, images, maps, targets)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)


def test_irof_on_three_channels_follows_its_definition_step_by_step(case, unchanged):
    """IROF on colour images, against the definition written out: segments of a fixed
    labelling (a 4 x 4 grid, one label left out so it is absent) replaced in order of
    decreasing mean map value by the mean of the image as it stands, all channels."""
    net, images, maps, targets, _ = case
    rows = torch.arange(SIDE)[:, None] // 4
    segments = (rows * 4 + torch.arange(SIDE)[None, :] // 4).expand(4, -1, -1).clone()
    segments[segments == 15] = 14  # label 15 absent: 15 segments
    with unchanged(net, images, maps):
        got = zoo.irof(net, images, maps, targets, segments=segments, softmax=False)
    for n in range(4):
        x, labels = images[n : n + 1].clone(), segments[n]
        means = [(maps[n][labels == s].mean().item(), s) for s in range(15)]
        order = [s for _, s in sorted(means, key=lambda pair: (-pair[0], pair[1]))]
        with torch.no_grad():
            start = net(x)[0, targets[n]].item()
            curve = []
            for s in order:
                x = torch.where(labels == s, x.mean(), x)
                curve.append(net(x)[0, targets[n]].item() / start)
        area = sum(curve) - (curve[0] + curve[-1]) / 2
        assert got[n].item() == pytest.approx(15 - area, abs=1e-4)


def test_linear_imputation_equals_quantus_on_three_channels(quantus):
    from quantus.functions.perturb_func import noisy_linear_imputation

    image = torch.rand(3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    removed = torch.randperm(SIDE * SIDE, generator=torch.Generator().manual_seed(1))[:150]
    expected = noisy_linear_imputation(image.double().numpy(), removed.numpy(), noise=0.0)
    got = zoo.linear_imputation(image, removed)
    np.testing.assert_allclose(got.numpy(), expected.reshape(3, -1)[:, removed], atol=1e-9)
    # each imputed value is the weighted mean of its neighbours (1/6 direct, 1/12 diagonal)
    filled = image.double().clone().view(3, -1)
    filled[:, removed] = got
    means = _neighbour_means(filled.view(3, SIDE, SIDE))
    assert torch.allclose(means[:, removed], got, atol=1e-9)


def _neighbour_means(image: torch.Tensor) -> torch.Tensor:
    """``Tensor[C, H*W]``: each pixel's weighted mean of its neighbours inside the image
    (1/6 direct, 1/12 diagonal, renormalised at the border)."""
    channels, height, width = image.shape
    kernel = torch.tensor([[1, 2, 1], [2, 0, 2], [1, 2, 1]], dtype=torch.float64) / 12
    sums = torch.nn.functional.conv2d(image.double()[:, None], kernel[None, None], padding=1)
    weight = torch.nn.functional.conv2d(
        torch.ones(1, 1, height, width).double(), kernel[None, None], padding=1
    )
    return (sums / weight).view(channels, -1)


@pytest.mark.parametrize("share", [0.9, 0.5, 1 / 2304, (2304 - 1) / 2304])
def test_linear_imputation_fills_large_holes_exactly(share):
    # smooth maps remove connected holes spanning the image: the dissection order splits
    # them many times; the answer must not depend on the order of elimination
    from scipy.sparse.linalg import spsolve

    side = 48
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(3, side, side, generator=generator)
    smooth = torch.nn.functional.interpolate(
        torch.rand(1, 1, 6, 6, generator=generator), size=side, mode="bicubic"
    ).flatten()
    removed = torch.sort(-smooth, stable=True).indices[: round(side * side * share)]
    got = zoo.linear_imputation(image, removed)
    assert got.shape == (3, len(removed)) and got.dtype == torch.float64
    filled = image.double().clone().view(3, -1)
    filled[:, removed] = got
    assert torch.allclose(_neighbour_means(filled.view(3, side, side))[:, removed], got, atol=1e-9)
    # the same system through SciPy's default solver (column minimum degree, pivoting)
    k = len(removed)
    rows = removed // side
    cols = removed % side
    index = {int(p): i for i, p in enumerate(removed)}
    matrix = np.zeros((k, k))
    rhs = np.zeros((k, 3))
    flat = image.double().view(3, -1).numpy()
    for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if (dr or dc) and 0 <= r + dr < side and 0 <= c + dc < side:
                    weight = (1 / 12) if dr and dc else (1 / 6)
                    matrix[i, i] -= weight
                    neighbour = (r + dr) * side + c + dc
                    if neighbour in index:
                        matrix[i, index[neighbour]] += weight
                    else:
                        rhs[i] -= weight * flat[:, neighbour]
    if k <= 300:
        expected = np.linalg.solve(matrix, rhs)
    else:
        from scipy.sparse import csc_matrix

        expected = spsolve(csc_matrix(matrix), rhs)
    np.testing.assert_allclose(got.numpy(), np.asarray(expected).reshape(k, 3).T, atol=1e-9)


def test_road_equals_quantus_on_shared_noise(quantus, monkeypatch, unchanged):
    net, images, maps, targets = gray_case()
    percentages = [5, 30, 60, 90]
    draws = torch.randn(
        len(percentages), 4, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(2)
    )
    # Quantus draws noise for the removed pixels in its ranking order, image after image
    replay = []
    for column, percentage in enumerate(percentages):
        for n in range(4):
            ranked = np.argsort(-maps[n].flatten().numpy())[: int(SIDE * SIDE * percentage / 100)]
            replay.append(draws[column, n].view(1, -1)[:, ranked].double().numpy())
    replay = iter(replay)
    monkeypatch.setattr(np.random, "randn", lambda *shape: next(replay).reshape(shape))
    metric = quantus.ROAD(percentages=percentages, noise=0.3, disable_warnings=True)
    expected = metric(
        model=net,
        x_batch=_np(images),
        y_batch=targets.numpy(),
        a_batch=_np(maps)[:, None],
        channel_first=True,
        device="cpu",
    )  # {percentage: accuracy over the images}
    monkeypatch.undo()
    with unchanged(net, images, maps):
        curve = zoo.road_curve(
            net, images, maps, targets, percentages=percentages, noise=0.3, draws=draws
        )
    assert 0 < curve.mean() < 1  # the prediction moves: the comparison is not vacuous
    np.testing.assert_allclose(curve.mean(0).numpy(), [expected[p] for p in percentages])
    assert torch.equal(
        zoo.road_morf(net, images, maps, targets, percentages=percentages, noise=0.3, draws=draws),
        curve.mean(1),
    )
