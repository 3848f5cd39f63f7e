"""Embeddings (pooled classifier input), exact kNN (chunked, both metrics, faiss when
installed) and the 2-D map."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from convlens.models import load_model
from convlens.scan.embed import embed, load_embeddings
from convlens.scan.knn import map_2d, nearest

pytestmark = pytest.mark.usefixtures("one_thread")


def _brute_nearest(vectors, queries, k, metric, exclude=None):
    v, q = vectors.double(), queries.double()
    if metric == "cosine":
        d = 1 - (q / q.norm(dim=1, keepdim=True)) @ (v / v.norm(dim=1, keepdim=True)).T
    else:
        d = torch.cdist(q, v)
    rows = []
    for i in range(len(q)):
        order = sorted(range(len(v)), key=lambda j: (float(d[i, j]), j))
        if exclude is not None:
            order = [j for j in order if j != int(exclude[i])]
        rows.append(order[:k])
    return torch.tensor(rows), d


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_chunked_nearest_equals_brute_force(metric):
    vectors, queries = torch.randn(23, 6), torch.randn(7, 6)
    rows, dist = nearest(vectors, queries, 4, metric, chunk=5)
    want, full = _brute_nearest(vectors, queries, 4, metric)
    assert torch.equal(rows, want)
    assert torch.allclose(dist.double(), full.gather(1, want), atol=1e-5)
    self_rows, _ = nearest(vectors, vectors[:7], 3, metric, exclude=torch.arange(7), chunk=4)
    assert torch.equal(
        self_rows, _brute_nearest(vectors, vectors[:7], 3, metric, torch.arange(7))[0]
    )


def test_a_vector_is_at_cosine_distance_zero_from_itself_never_below():
    # rounding put cos(x, x) a few ulps above 1: "cosine distance -0.0000" in the CLI
    vectors = torch.randn(64, 33, generator=torch.Generator().manual_seed(5)).half().float()
    _, dist = nearest(vectors, vectors, 1, "cosine", chunk=16)
    assert bool((dist >= 0).all()) and float(dist.max()) < 1e-5


def test_ties_go_to_the_lower_row():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    rows, _ = nearest(vectors, torch.tensor([[2.0, 0.0]]), 3, "cosine", chunk=2)
    assert rows.tolist() == [[0, 2, 3]]


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss not installed")
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_faiss_gives_the_same_neighbours(metric):
    vectors, queries = torch.randn(40, 8), torch.randn(9, 8)
    exact = nearest(vectors, queries, 5, metric)
    fast = nearest(vectors, queries, 5, metric, backend="faiss")
    assert torch.equal(exact[0], fast[0])
    assert torch.allclose(exact[1], fast[1], atol=1e-4)


def test_embeddings_are_the_classifier_input_in_item_order(tmp_path, unchanged):
    model = load_model("synthetic-shapes")
    with unchanged(model.module):
        result = embed(model, "shapes:10", batch_size=4)
    from convlens.data.synthetic import SyntheticShapes

    images = SyntheticShapes(10).batch().display
    tensor = model.preprocess.normalize(images)
    with torch.no_grad():
        module = model.module.eval()
        want = module.pool(module.features(tensor)).flatten(1)
    assert result.sources == [f"shapes:{i}" for i in range(10)]
    assert result.labels == [i % 6 for i in range(10)]
    assert result.vectors.dtype == torch.float16
    assert torch.allclose(result.vectors.float(), want.half().float(), atol=1e-3)
    loaded = load_embeddings(result.save(tmp_path))
    assert torch.equal(loaded.vectors, result.vectors) and loaded.sources == result.sources
    assert loaded.layer == "classifier" and loaded.inputs


@pytest.mark.slow  # importing openTSNE (scikit-learn) takes seconds
def test_map_2d_places_every_item():
    points = map_2d(torch.randn(12, 5), "tsne")
    assert points.shape == (12, 2) and bool(torch.isfinite(torch.from_numpy(points)).all())
