"""Exact nearest neighbours of embeddings, and 2-D maps of them.

`nearest` compares every query with every stored vector by chunked matrix products
(float32; stored float16 vectors are widened chunk by chunk), so memory stays at one chunk
of distances. Distances: ``"cosine"``: ``1 - cos(q, x)``; ``"l2"``: ``||q - x||``,
computed as ``sqrt(max(|q|^2 + |x|^2 - 2 q.x, 0))``. Neighbours are ordered by distance,
ties to the lower row. When `faiss` is installed (``backend="auto"``) its exact flat
indexes (inner product on unit vectors for cosine, squared L2) give the same neighbours.

`map_2d` places each vector in the plane: UMAP (McInnes et al. 2018) when ``umap-learn``
is installed, else openTSNE's t-SNE (van der Maaten & Hinton 2008; Policar et al. 2019).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import torch

from convlens.errors import DataError

METRICS = ("cosine", "l2")


@dataclass(frozen=True)
class Neighbours:
    """The stored items nearest one query, nearest first: their ``sources`` and
    ``distances`` (by ``metric``). A notebook shows them as a table (`_repr_html_`)."""

    query: str
    sources: list[str]
    distances: list[float]
    metric: str

    def _repr_html_(self) -> str:
        from convlens.render.scans import neighbours_html

        return neighbours_html(self.query, self.sources, self.distances, self.metric)


def _prepared(vectors: torch.Tensor, metric: str) -> torch.Tensor:
    vectors = vectors.float()
    if metric == "cosine":
        return vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return vectors


def _distances(queries: torch.Tensor, block: torch.Tensor, metric: str) -> torch.Tensor:
    products = queries @ block.T
    if metric == "cosine":  # >= 0: rounding puts cos(x, x) a few ulps above 1
        return (1.0 - products).clamp_min(0)
    squared = (queries * queries).sum(1, keepdim=True) + (block * block).sum(1) - 2 * products
    return squared.clamp_min(0).sqrt()


def check_metric(metric: str) -> str:
    """``metric`` when it is one of `METRICS`, else `DataError` naming them."""
    if metric not in METRICS:
        raise DataError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return metric


def _check(vectors, queries, k: int, metric: str) -> None:
    check_metric(metric)
    if vectors.dim() != 2 or queries.dim() != 2 or vectors.shape[1] != queries.shape[1]:
        raise DataError(
            f"vectors {tuple(vectors.shape)} and queries {tuple(queries.shape)} must be "
            "[N, D] and [Q, D] with the same D (embed queries with the index's model and layer)"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"k must be an integer >= 1, got {k!r}")


def nearest(
    vectors: torch.Tensor,
    queries: torch.Tensor,
    k: int = 5,
    metric: str = "cosine",
    *,
    exclude: torch.Tensor | None = None,
    chunk: int = 4096,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` stored rows nearest each query: ``(rows Tensor[Q, k'], distances
    Tensor[Q, k'])`` with ``k' = min(k, N)`` (one fewer with ``exclude``), nearest first.

    ``vectors`` ``Tensor[N, D]``, ``queries`` ``Tensor[Q, D]``; ``exclude`` ``Tensor[Q]``: a
    row to leave out per query (the query itself when it is stored). ``backend``:
    ``"torch"``, ``"faiss"`` or ``"auto"`` (faiss when installed)."""
    _check(vectors, queries, k, metric)
    if backend == "auto":
        backend = "faiss" if importlib.util.find_spec("faiss") is not None else "torch"
    if backend == "faiss":
        return _faiss_nearest(vectors, queries, k, metric, exclude)
    if backend != "torch":
        raise DataError(f"backend must be torch, faiss or auto, got {backend!r}")
    keep = min(k, len(vectors) - (exclude is not None))
    rows_out, dist_out = [], []
    for q0 in range(0, len(queries), chunk):
        q = _prepared(queries[q0 : q0 + chunk], metric)
        best_d = torch.empty(len(q), 0)
        best_r = torch.empty(len(q), 0, dtype=torch.long)
        for v0 in range(0, len(vectors), chunk):
            block = _prepared(vectors[v0 : v0 + chunk], metric)
            dist = _distances(q, block, metric)
            rows = torch.arange(v0, v0 + len(block)).expand_as(dist)
            if exclude is not None:
                dist = dist.masked_fill(rows == exclude[q0 : q0 + chunk, None], torch.inf)
            best_d, best_r = _smallest(
                torch.cat([best_d, dist], 1), torch.cat([best_r, rows], 1), keep
            )
        rows_out.append(best_r)
        dist_out.append(best_d)
    return torch.cat(rows_out), torch.cat(dist_out)


def _smallest(dist: torch.Tensor, rows: torch.Tensor, k: int):
    """Per row, the k smallest distances (ties to the lower row index)."""
    order = torch.argsort(rows, dim=1, stable=True)
    dist, rows = dist.gather(1, order), rows.gather(1, order)
    order = torch.argsort(dist, dim=1, stable=True)[:, :k]
    return dist.gather(1, order), rows.gather(1, order)


def _faiss_nearest(vectors, queries, k, metric, exclude):
    import faiss

    base = _prepared(vectors, metric).numpy()
    index = (
        faiss.IndexFlatIP(base.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(base.shape[1])
    )
    index.add(np.ascontiguousarray(base))
    extra = 1 if exclude is not None else 0
    keep = min(k, len(vectors) - extra)
    found, rows = index.search(
        np.ascontiguousarray(_prepared(queries, metric).numpy()), min(keep + extra, len(vectors))
    )
    found, rows = torch.from_numpy(found), torch.from_numpy(rows).long()
    dist = (1.0 - found).clamp_min(0) if metric == "cosine" else found.clamp_min(0).sqrt()
    if exclude is not None:
        dist = dist.masked_fill(rows == exclude[:, None], torch.inf)
    dist, rows = _smallest(dist, rows, keep)
    return rows, dist


MAP_MIN_ITEMS = 5  # t-SNE's perplexity (N - 1) / 3 needs a few neighbours per point


MAP_METHODS = ("auto", "tsne", "umap")


def checked_map_method(method: str) -> str:
    """``method`` when `map_2d` can run it: one of `MAP_METHODS`, and ``"umap"`` only with
    umap-learn installed; else `DataError` naming the fix."""
    if method not in MAP_METHODS:
        raise DataError(f"map method must be one of {', '.join(MAP_METHODS)}, got {method!r}")
    if method == "umap" and importlib.util.find_spec("umap") is None:
        raise DataError("a UMAP map needs umap-learn: pip install umap-learn, or use tsne or auto")
    return method


def map_2d(vectors: torch.Tensor, method: str = "auto", seed: int = 0) -> np.ndarray:
    """``float[N, 2]`` positions: ``method`` ``"umap"``, ``"tsne"`` or ``"auto"`` (UMAP when
    umap-learn is installed, else t-SNE with perplexity ``min(30, (N - 1) / 3)``). Seeded."""
    data = vectors.float().numpy().astype(np.float64)
    if len(data) < MAP_MIN_ITEMS:
        raise DataError(f"a 2-D map needs at least {MAP_MIN_ITEMS} items, got {len(data)}")
    checked_map_method(method)
    if method == "auto":
        method = "umap" if importlib.util.find_spec("umap") is not None else "tsne"
    if method == "umap":
        import umap

        return umap.UMAP(random_state=seed).fit_transform(data)
    from openTSNE import TSNE

    perplexity = min(30.0, (len(data) - 1) / 3)
    return np.asarray(TSNE(perplexity=perplexity, random_state=seed, n_jobs=1).fit(data))
