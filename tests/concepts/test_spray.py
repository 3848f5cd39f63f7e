"""SpRAy on hand-made maps whose groups are known: exact separation, the tight group ranked
first, the partition independent of the order of the maps, translation-invariant features
(sorted values; relevance per channel; windowed channel peaks), the Gaussian-null test of
"a cluster stands apart", and the command on an attribute folder."""

from __future__ import annotations

import json

import pytest
import torch

from convlens.concepts.spray import spray, spray_features
from convlens.errors import DataError


def _groups(noise_b: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """20 maps 16x16: 8 with a blob top-left (noise 0.02), 12 with a blob bottom-right
    (noise ``noise_b``); and the group of each row."""
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(20, 16, 16, generator=generator)
    maps[:8] *= 0.02
    maps[8:] *= noise_b
    maps[:8, 2:6, 2:6] += 1.0
    maps[8:, 10:14, 9:13] += 1.0
    return maps, torch.tensor([0] * 8 + [1] * 12)


def test_two_obvious_groups_are_separated_exactly_and_the_tight_one_ranks_first():
    maps, group = _groups(noise_b=0.6)
    result = spray(maps, size=8, neighbours=4)
    assert len(result.clusters) == 2
    assert torch.equal(result.labels, group)  # the tight group (low noise) is cluster 0
    assert result.clusters[0].members == list(range(8))
    assert result.clusters[0].score > result.clusters[1].score
    assert result.clusters[0].sources == [str(i) for i in range(8)]
    assert result.eigengap > 0.5  # two components: l_2 = 0, l_3 = 1


def test_membership_is_the_silhouette_inside_the_top_cluster_and_grows_towards_it():
    """A member's membership is its silhouette; a row moved step by step from the other
    group towards the top cluster gains membership at every step and turns positive only
    once it is nearer the top cluster (the continuous score SpRAy's AUC can be read from)."""
    from convlens.concepts.spray import membership, silhouettes

    points = torch.cat(
        [
            torch.randn(10, 3, generator=torch.Generator().manual_seed(0)) * 0.1,
            torch.randn(10, 3, generator=torch.Generator().manual_seed(1)) * 0.1 + 4,
        ]
    )
    labels = torch.tensor([0] * 10 + [1] * 10)
    inside = membership(points.double(), labels, 0)
    assert torch.allclose(inside[:10], silhouettes(points.double(), labels)[:10])
    assert bool((inside[10:] < -0.9).all())  # the other group lies far from cluster 0
    values = []
    for step in torch.linspace(0, 1, 9):  # the last row walks from group 1's centre to 0's
        moved = points.clone()
        moved[-1] = (1 - step) * 4 + step * 0.0
        values.append(float(membership(moved.double(), labels, 0)[-1]))
    assert values == sorted(values) and values[0] < 0 < values[-1]
    assert values[3] < 0 < values[5]  # the sign changes at the midway point
    maps, group = _groups(noise_b=0.6)
    result = spray(maps, size=8, neighbours=4)
    assert torch.equal(result.membership > 0, group == 0)


def test_the_partition_does_not_depend_on_the_order_of_the_maps():
    maps, _ = _groups()
    maps[8:14] += 0.3 * torch.rand(6, 16, 16, generator=torch.Generator().manual_seed(1))
    order = torch.randperm(20, generator=torch.Generator().manual_seed(2))
    straight = spray(maps, size=8, neighbours=4)
    shuffled = spray(maps[order], size=8, neighbours=4)
    assert len(straight.clusters) == len(shuffled.clusters)
    assert torch.equal(straight.labels[order], shuffled.labels)
    assert [c.score for c in straight.clusters] == pytest.approx(
        [c.score for c in shuffled.clusters], abs=1e-9
    )


@pytest.mark.parametrize("count", [8, 11])
def test_a_small_class_at_the_default_neighbours_still_finds_its_groups(count):
    # with k >= N - 1 the graph would be complete: every partition the same to it
    maps = torch.zeros(count, 16, 16)
    half = count // 2
    maps[:half, :6, :6] = 1
    maps[half:, 10:, 10:] = 1
    maps += 0.01 * torch.rand(count, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = [list(range(half)), list(range(half, count))]
    for order in (
        torch.arange(count),
        torch.randperm(count, generator=torch.Generator().manual_seed(1)),
    ):
        result = spray(maps[order], size=16)  # neighbours=10
        groups = sorted(sorted(order[c.members].tolist()) for c in result.clusters)
        assert groups == expected and result.eigengap > 0.5


def test_sorted_features_ignore_where_the_relevance_is():
    blob = torch.zeros(2, 16, 16)
    blob[0, 0:4, 0:6] = torch.arange(24.0).view(4, 6)
    blob[1, 8:12, 10:16] = torch.arange(24.0).view(4, 6)  # the same blob, moved by 2-cell steps
    by_value = spray_features(blob, size=8, features="sorted")
    by_place = spray_features(blob, size=8, features="maps")
    assert torch.equal(by_value[0], by_value[1])
    assert not torch.equal(by_place[0], by_place[1])


def _patterns_at(positions: list[tuple[int, int]], checker: list[bool]) -> torch.Tensor:
    """``Tensor[B, 3, 16, 16]``: a 4x4 patch on a zero background at each top-left corner
    of ``positions``, a checkerboard where ``checker`` is true, else a solid square."""
    images = torch.zeros(len(positions), 3, 16, 16)
    cells = torch.arange(4)
    board = ((cells[:, None] + cells[None, :]) % 2).float()
    for image, (y, x), check in zip(images, positions, checker, strict=True):
        image[:, y : y + 4, x : x + 4] = board if check else 0.6
    return images


def test_channel_relevance_ignores_where_the_pattern_is_and_groups_by_pattern(unchanged):
    from tests.helpers.networks import small_convnet

    from convlens.attribution.lrp import lrp

    net = small_convnet().eval()
    positions = [(3, 3), (8, 5), (5, 9), (9, 8)] * 2  # at least 3 px from every border
    images = _patterns_at(positions, [True] * 4 + [False] * 4)
    with unchanged(net, images):
        maps, extras = lrp(net, images, 1, relevance_layer="4")
    channels = extras["channel_relevance"]
    assert channels.shape == (8, 4)
    # a moved pattern: the same relevance per channel, a different map
    for group in (channels[:4], channels[4:]):
        torch.testing.assert_close(group, group[:1].expand(4, -1), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(maps[0], maps[1])
    result = spray(channels, features="channels", neighbours=3)
    assert sorted(c.members for c in result.clusters) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    features = spray_features(channels, features="channels")
    torch.testing.assert_close(features.abs().sum(1), torch.ones(8, dtype=torch.float64))


def test_channel_peaks_ignore_where_a_small_pattern_is_and_are_not_averaged_away():
    from convlens.maps import channel_peaks

    pattern = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0], [2.0, 0.0, 1.5]])
    small, large = torch.zeros(2, 2, 8, 8), torch.zeros(1, 2, 32, 32)
    small[0, 0, 0:3, 0:3] = pattern  # in a corner
    small[1, 0, 4:7, 3:6] = pattern  # moved
    large[0, 0, 20:23, 9:12] = pattern  # in a map 16 times as large
    small[:, 1] = 0.25  # a constant channel
    large[:, 1] = 0.25
    expected = torch.tensor([pattern.abs().mean().item(), 0.25])
    for peaks in (channel_peaks(small, 3), channel_peaks(large, 3)):
        torch.testing.assert_close(peaks, expected.expand(len(peaks), 2))
    # the sum over space would shrink the pattern's share as the map grows
    share = small.abs().flatten(2).sum(2)[:, 0] / small.abs().flatten(1).sum(1)
    share_large = large.abs().flatten(2).sum(2)[:, 0] / large.abs().flatten(1).sum(1)
    assert float(share_large[0]) < float(share[0]) / 5
    for maps in (small, large):
        features = spray_features(maps, features="peaks", window=3)
        torch.testing.assert_close(
            features, (expected / expected.sum()).double().expand_as(features)
        )


def _cloud(groups: bool) -> torch.Tensor:
    """60 points in 4 dimensions (all positive, as channel peaks are): one Gaussian cloud, or
    two groups (24 and 36 points) 12 standard deviations apart."""
    points = 20 + torch.randn(60, 4, generator=torch.Generator().manual_seed(3))
    if groups:
        points[:24, 0] += 12.0
    return points


def test_a_group_stands_apart_from_the_one_cloud_null_and_a_cloud_does_not():
    apart = spray(_cloud(True), features="peaks", null_draws=99)
    cloud = spray(_cloud(False), features="peaks", null_draws=99)
    assert sorted(c.members for c in apart.clusters) == [list(range(24)), list(range(24, 60))]
    assert apart.p_value == pytest.approx(0.01) and apart.stands_apart  # beats all 99 draws
    assert cloud.p_value > 0.05 and not cloud.stands_apart
    assert len(cloud.null_scores) == 99
    again = spray(_cloud(False), features="peaks", null_draws=9)
    assert torch.equal(again.null_scores, cloud.null_scores[:9])  # seeded, drawn in order
    plain = spray(_cloud(True), features="peaks")
    assert plain.p_value is None and plain.stands_apart is None


def test_shares_are_tested_against_a_logistic_normal_cloud_not_a_gaussian_one():
    """One skewed cloud of shares (softmax of one Gaussian): a Gaussian fitted to the shares
    themselves is beaten by it (a false alarm), the logistic-normal null that "peaks" uses is
    not; a zero share (a silent channel) leaves the null finite."""
    from convlens.concepts.spray import null_scores

    logits = torch.randn(60, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shares = logits.softmax(1)
    result = spray(shares, features="peaks", null_draws=19)
    gaussian = null_scores(result.features, 10, 10, 19)
    assert bool((gaussian < result.clusters[0].score).all())  # Gaussian: p = 1/20, "apart"
    assert result.p_value > 0.2 and not result.stands_apart
    shares[:, 0] = 0.0
    silent = spray(shares / shares.sum(1, keepdim=True), features="peaks", null_draws=3)
    assert bool(torch.isfinite(silent.null_scores).all())


def test_bad_input_names_the_fix():
    with pytest.raises(DataError, match="at least 4 maps"):
        spray(torch.rand(3, 8, 8))
    with pytest.raises(DataError, match="use one of maps, sorted, channels, peaks"):
        spray(torch.rand(6, 8, 8), features="fourier")
    with pytest.raises(DataError, match="one name per map"):
        spray(torch.rand(6, 8, 8), sources=["a"])
    with pytest.raises(DataError, match="Tensor\\[N, H, W\\]"):
        spray(torch.rand(6, 1, 8, 8))
    with pytest.raises(DataError, match="Tensor\\[N, K, h, w\\]"):
        spray(torch.rand(6, 8, 8), features="peaks")
    with pytest.raises(DataError, match="peaks >= 0"):
        spray(-torch.rand(6, 8), features="peaks")
    with pytest.raises(DataError, match="null_draws"):
        spray(torch.rand(6, 8, 8), null_draws=-1)


def test_the_command_clusters_an_attribute_folder_as_the_function_does(tmp_path, monkeypatch):
    from tests.helpers.networks import small_convnet

    import convlens.concepts.spray_atlas as spray_atlas
    from convlens.cli import main
    from convlens.data.preprocess import Preprocess
    from convlens.models.loading import LoadedModel
    from convlens.scan.attribute import attribute_dataset, load_attributions

    # the layout is openTSNE's (importing it takes a second; test_embed covers it)
    monkeypatch.setattr(spray_atlas, "map_2d", lambda features, *_: features[:, :2].numpy())
    preprocess = Preprocess(size=16, mode="stretch", mean=(0.5,) * 3, std=(0.5,) * 3)
    model = LoadedModel(small_convnet(), "small", preprocess)
    attribute_dataset(model, "shapes:6", tmp_path, "saliency", target=1, size=8)
    assert main(["spray", str(tmp_path), "--size", "4", "--neighbours", "2"]) == 0
    written = json.loads((tmp_path / "spray.json").read_text())
    stored = load_attributions(tmp_path)
    sources = [row["source"] for row in stored.rows]
    expected = spray(stored.maps, sources=sources, size=4, neighbours=2)
    assert [entry["class"] for entry in written["classes"]] == [1]
    assert written["classes"][0]["clusters"] == [c.record() for c in expected.clusters]
    assert sorted(s for c in written["classes"][0]["clusters"] for s in c["members"]) == sorted(
        sources
    )
    ranking = written["classes"][0]["membership"]
    assert sorted(r["source"] for r in ranking) == sorted(sources)
    by_source = dict(zip(sources, expected.membership.tolist(), strict=True))
    assert [r["membership"] for r in ranking] == pytest.approx(
        [by_source[r["source"]] for r in ranking]
    )
    assert [r["membership"] for r in ranking] == sorted(
        (r["membership"] for r in ranking), reverse=True
    )
    # the atlas: a map of the class, a picture per cluster, a page per class, an index
    atlas = tmp_path / "spray"
    pictures = {p.name for p in atlas.glob("*.png")}
    assert pictures == {"class-1-map.png"} | {
        f"class-1-cluster-{c.id}.png" for c in expected.clusters
    }
    page = (atlas / "class-1.html").read_text()
    assert all(f'src="{name}"' in page for name in pictures)
    assert f"{ranking[0]['source']} ({ranking[0]['membership']:.2f})" in page
    assert 'href="class-1.html"' in (atlas / "index.html").read_text()
    # a file convlens did not write among the pictures: refused before anything is written
    (tmp_path / "spray.json").unlink()
    (atlas / f"class-1-cluster-{expected.clusters[-1].id}.png").write_bytes(b"mine")
    assert main(["spray", str(tmp_path), "--size", "4", "--neighbours", "2"]) == 1
    assert not (tmp_path / "spray.json").exists()
    with pytest.raises(DataError, match="no map explains class 4"):
        spray(tmp_path, class_id=4)
    with pytest.raises(DataError, match="relevance_layer=LAYER"):
        spray(tmp_path, features="channels")


def test_attribute_stores_channel_relevances_and_spray_clusters_them(tmp_path):
    from convlens.attribution.lrp import lrp
    from convlens.cli import main
    from convlens.data.datasets import open_dataset
    from convlens.models import load_model
    from convlens.scan.attribute import load_attributions

    folder = str(tmp_path / "maps")
    layer = "features.13"
    args = ["attribute", "shapes:5", "--model", "synthetic-shapes", "--method", "lrp"]
    args += ["--option", f"relevance_layer={layer}", "--target", "0", "--size", "8"]
    assert main([*args, "--out", folder]) == 0
    stored = load_attributions(folder)
    assert stored.index["channel_layer"] == layer and stored.channels.shape == (5, 48)
    # the stored vectors are those of lrp on the same images
    model = load_model("synthetic-shapes")
    dataset = open_dataset("shapes:5", model.preprocess)
    images = torch.stack([dataset[i][1] for i in range(5)])
    _, extras = lrp(model, images, 0, relevance_layer=layer)
    torch.testing.assert_close(stored.channels, extras["channel_relevance"], rtol=1e-4, atol=1e-5)
    assert main(["spray", folder, "--features", "channels", "--neighbours", "2", "--no-atlas"]) == 0
    assert not (tmp_path / "maps" / "spray").exists()
    written = json.loads((tmp_path / "maps" / "spray.json").read_text())
    sources = [row["source"] for row in stored.rows]
    expected = spray(stored.channels, sources=sources, features="channels", neighbours=2)
    assert written["classes"][0]["clusters"] == [c.record() for c in expected.clusters]


def test_attribute_stores_channel_peaks_and_spray_tests_them(tmp_path):
    from convlens.attribution.common import prepare
    from convlens.attribution.lrp import input_bounds, lrp, propagate_relevance
    from convlens.cli import main
    from convlens.data.datasets import open_dataset
    from convlens.errors import MethodError
    from convlens.layers.relevance import resolve_composite
    from convlens.maps import channel_peaks
    from convlens.models import load_model
    from convlens.scan.attribute import load_attributions

    folder = str(tmp_path / "maps")
    layer = "features.6"
    args = ["attribute", "shapes:5", "--model", "synthetic-shapes", "--method", "lrp"]
    args += ["--option", f"relevance_layer={layer}", "--option", "relevance_pool=peak"]
    args += ["--option", "relevance_window=2", "--target", "0", "--size", "8"]
    assert main([*args, "--out", folder]) == 0
    stored = load_attributions(folder)
    assert stored.index["channel_pool"] == "peak" and stored.channels.shape == (5, 32)
    # the stored peaks are those of the layer's relevance from the same backward pass
    model = load_model("synthetic-shapes")
    dataset = open_dataset("shapes:5", model.preprocess)
    images = torch.stack([dataset[i][1] for i in range(5)])
    prepared = prepare(model, images, 0)
    _, at_layer, _ = propagate_relevance(
        prepared.module,
        prepared.images,
        prepared.targets,
        resolve_composite("epsilon_plus_flat"),
        input_bounds(model),
        layer,
    )
    expected = channel_peaks(at_layer, 2)
    torch.testing.assert_close(stored.channels, expected, rtol=1e-4, atol=1e-6)
    spray_args = ["spray", folder, "--features", "peaks", "--neighbours", "2", "--no-atlas"]
    assert main([*spray_args, "--null-draws", "9"]) == 0
    written = json.loads((tmp_path / "maps" / "spray.json").read_text())["classes"][0]
    result = spray(stored.channels, features="peaks", neighbours=2, null_draws=9)
    assert written["p_value"] == pytest.approx(result.p_value)
    assert written["stands_apart"] == result.stands_apart
    with pytest.raises(DataError, match="pooled by peak"):
        spray(folder, features="channels")
    with pytest.raises(MethodError, match="relevance_pool"):
        lrp(model, images[:1], 0, relevance_layer=layer, relevance_pool="mean")
    with pytest.raises(MethodError, match="relevance_window"):
        lrp(model, images[:1], 0, relevance_layer=layer, relevance_pool="peak", relevance_window=0)
