"""SpRAy (Lapuschkin et al. 2019, "Unmasking Clever Hans predictors and assessing what
machines really learn"): spectral clustering of a data set's attribution maps, to find the
groups of images that a class's score is explained by in the same way (a strategy), and
among them the ones that stand apart (a shortcut, a watermark).

Steps, for ``Tensor[N, H, W]`` maps of one class:

1. features (`spray_features`): each map is shrunk to ``size x size`` by area averaging
   (`convlens.scan.attribute.shrink_maps`) and divided by its largest absolute value;
   ``features="maps"`` (the paper's) keeps the map's layout, ``features="sorted"`` keeps only
   its values sorted from largest to smallest (the distribution of relevance, whatever
   its position: a translation-invariant variant that is not in the paper);
   ``features="channels"`` takes instead each image's LRP relevance per channel of an
   intermediate layer, summed over space (``Tensor[N, K]``; the concept relevances of CRP,
   Achtibat et al. 2023, as clustered by Dreyer et al. 2023, "Understanding the
   (extra-)ordinary"), divided by the sum of its absolute values: the share of the layer's
   relevance each channel carries, wherever in the image it lies; ``features="peaks"``
   takes each channel's largest windowed relevance instead of its sum
   (`convlens.maps.channel_peaks`: the largest mean absolute relevance over ``window x
   window`` windows of the layer's map), divided by the row's sum: a small, strong pattern
   anywhere in the image (a watermark, a sticker) is not averaged away;
2. affinity: the symmetric k-nearest-neighbour graph of the features (Euclidean, ``k =
   neighbours``, at most ``(N - 1) // 2``: with ``k`` near ``N - 1`` every map is every
   other's neighbour, the graph is complete and its eigenvectors carry no structure; an
   edge has weight 1, or 1/2 when only one end has the other among its neighbours);
3. the eigenvalues ``0 = l_1 <= l_2 <= ...`` of the normalised Laplacian
   ``I - D^-1/2 A D^-1/2``; the count of clusters ``c`` in ``2 .. max_clusters`` is the
   one with the largest eigengap ``l_{c+1} - l_c`` (as in the paper);
4. the rows of the first ``c`` eigenvectors, scaled to unit length (Ng, Jordan and Weiss
   2002), are clustered by k-means started from farthest points (deterministic, and the
   same whatever the order of the maps);
5. each cluster's ``score`` is the mean silhouette of its members on the features (in
   [-1, 1]: how much nearer a member is to its own cluster than to the nearest other one);
   clusters are ranked by it, best first: the top-ranked cluster is the one that stands
   apart most.

Does a cluster stand apart at all? (`null_scores`, ``null_draws`` > 0.) The top-ranked
cluster's score is compared with the top score of the same pipeline on ``null_draws``
data sets drawn from one Gaussian with the features' mean and covariance (the null of
SigClust, Liu, Hayes, Nobel and Marron 2008: the data are one Gaussian cloud, not
clusters). ``features="peaks"`` rows are shares of a whole (positive, summing to 1), for
which the one-cloud model is the logistic normal (Aitchison 1986, "The Statistical
Analysis of Compositional Data"): the Gaussian is fitted to the rows' centred log-ratios
``log v - mean(log v)`` and each draw mapped back by softmax, so the skew and bounds of
shares are in the null too (a Gaussian in the shares themselves was beaten by cue-free
rows, see docs/concepts.md). ``p_value = (1 + #{null >= observed}) / (1 + null_draws)``;
a cluster stands apart when ``p_value <= STANDS_APART_ALPHA`` (0.01; with 99 draws: the
observed score beats every draw).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from convlens.errors import DataError
from convlens.maps import channel_peaks
from convlens.scan.attribute import load_attributions, shrink_maps

FEATURES = ("maps", "sorted", "channels", "peaks")
DEFAULT_SIZE = 16
DEFAULT_WINDOW = 3
STANDS_APART_ALPHA = 0.01
DEFAULT_NEIGHBOURS = 10
DEFAULT_MAX_CLUSTERS = 10


@dataclass(frozen=True)
class SprayCluster:
    """One cluster: ``id`` its rank (0 = stands apart most), ``members`` the rows of the
    maps given (ascending), ``sources`` their names, ``score`` the mean silhouette in [-1,
    1], ``mean_map`` ``Tensor[size, size]`` the mean of its members' features as maps
    (``features="maps"`` only; else None)."""

    id: int
    members: list[int]
    sources: list[str]
    score: float
    mean_map: torch.Tensor | None

    @property
    def size(self) -> int:
        return len(self.members)

    def record(self) -> dict:
        """``{"id", "size", "members": [source, ...], "score"}``."""
        return {"id": self.id, "size": self.size, "members": self.sources, "score": self.score}


@dataclass(frozen=True)
class SprayResult:
    """``clusters`` ranked (best first); ``labels`` ``LongTensor[N]`` each row's cluster id;
    ``eigenvalues`` ``Tensor[max_clusters + 1]`` the smallest of the normalised Laplacian,
    ascending; ``embedding`` ``Tensor[N, c]`` the spectral embedding (unit rows);
    ``features`` ``Tensor[N, D]`` float64 what was clustered (`spray_features`);
    ``membership`` ``Tensor[N]`` in [-1, 1] how firmly each row belongs to the top-ranked
    cluster (`membership`: a member's silhouette; ranks the images from the clearest case
    of the top cluster's strategy to the farthest from it); ``null_scores``
    ``Tensor[draws]`` the top score on each one-cloud null draw (None without
    ``null_draws``)."""

    clusters: list[SprayCluster]
    labels: torch.Tensor
    eigenvalues: torch.Tensor
    embedding: torch.Tensor
    features: torch.Tensor
    membership: torch.Tensor
    null_scores: torch.Tensor | None = None

    @property
    def p_value(self) -> float | None:
        """``(1 + #{null >= top score}) / (1 + draws)``: how often one Gaussian cloud with the
        features' mean and covariance gives a top cluster that stands apart as much (None
        without null draws)."""
        if self.null_scores is None:
            return None
        beaten = int((self.null_scores >= self.clusters[0].score).sum())
        return (1 + beaten) / (1 + len(self.null_scores))

    @property
    def stands_apart(self) -> bool | None:
        """The top-ranked cluster stands apart: ``p_value <= STANDS_APART_ALPHA`` (None
        without null draws)."""
        p_value = self.p_value
        return None if p_value is None else p_value <= STANDS_APART_ALPHA

    @property
    def eigengap(self) -> float:
        """``l_{c+1} - l_c`` for the count ``c`` the eigengap chose (the embedding's width;
        k-means may leave fewer non-empty clusters)."""
        c = self.embedding.shape[1]
        return float(self.eigenvalues[c] - self.eigenvalues[c - 1])


def spray_features(
    maps: torch.Tensor,
    size: int = DEFAULT_SIZE,
    features: str = "maps",
    window: int = DEFAULT_WINDOW,
) -> torch.Tensor:
    """Features of step 1 of the module docstring, float64: ``Tensor[N, H, W]`` maps to
    ``Tensor[N, size * size]`` (``"maps"``, ``"sorted"``), or ``Tensor[N, K]`` channel
    relevances to ``Tensor[N, K]``, each row divided by the sum of its absolute values
    (``"channels"``; ``size`` unused); ``"peaks"``: a layer's relevance ``Tensor[N, K, h,
    w]`` to its `channel_peaks` over ``window x window`` windows (or such peaks already
    pooled, ``Tensor[N, K]``, >= 0), each row divided by its sum."""
    if features not in FEATURES:
        raise DataError(f"unknown features {features!r}; use one of {', '.join(FEATURES)}")
    if features == "peaks":
        return _peak_features(maps, window)
    if features == "channels":
        if maps.dim() != 2:
            raise DataError(
                "features='channels' takes channel relevances Tensor[N, K] (lrp's extras "
                f"'channel_relevance', or a folder of 'convlens attribute --option "
                f"relevance_layer=LAYER'), got {tuple(maps.shape)}"
            )
    elif maps.dim() != 3:
        raise DataError(f"SpRAy takes maps Tensor[N, H, W], got {tuple(maps.shape)}")
    if bool(torch.isnan(maps).any()):
        raise DataError("a map holds NaN; recompute the maps (check the model's outputs)")
    if features == "channels":
        vectors = maps.detach().cpu().double()
        return vectors / vectors.abs().sum(1, keepdim=True).clamp_min(1e-30)
    small = shrink_maps(maps.detach().cpu(), size).flatten(1).double()
    small = small / small.abs().amax(1, keepdim=True).clamp_min(1e-30)
    if features == "sorted":
        small = small.sort(1, descending=True).values
    return small


def _peak_features(relevance: torch.Tensor, window: int) -> torch.Tensor:
    if relevance.dim() == 4:
        if bool(torch.isnan(relevance).any()):
            raise DataError("a relevance map holds NaN; recompute it (check the model's outputs)")
        peaks = channel_peaks(relevance.detach().cpu().double(), window)
    elif relevance.dim() == 2:
        peaks = relevance.detach().cpu().double()
        if bool(torch.isnan(peaks).any()) or bool((peaks < 0).any()):
            raise DataError(
                "features='peaks' takes channel peaks >= 0 (lrp with relevance_pool='peak')"
            )
    else:
        raise DataError(
            "features='peaks' takes a layer's relevance Tensor[N, K, h, w], or its channel "
            "peaks Tensor[N, K] ('convlens attribute --method lrp --option relevance_layer="
            f"LAYER --option relevance_pool=peak'), got {tuple(relevance.shape)}"
        )
    return peaks / peaks.sum(1, keepdim=True).clamp_min(1e-30)


def knn_affinity(features: torch.Tensor, neighbours: int) -> torch.Tensor:
    """``Tensor[N, N]``: the symmetric k-nearest-neighbour graph of ``features`` (step 2)."""
    distances = torch.cdist(features, features)
    distances.fill_diagonal_(float("inf"))
    # equal distances are the one place where the order of the rows may change the graph
    nearest = distances.topk(neighbours, largest=False).indices
    graph = torch.zeros_like(distances)
    graph.scatter_(1, nearest, 1.0)
    return (graph + graph.T) / 2


def spectral_embedding(
    affinity: torch.Tensor, max_clusters: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Eigenvalues (``max_clusters + 1`` smallest of the normalised Laplacian), the count
    with the largest eigengap, and the unit-row embedding of that many eigenvectors."""
    inverse_root = affinity.sum(1).clamp_min(1e-30).rsqrt()
    normalised = inverse_root[:, None] * affinity * inverse_root[None]
    values, vectors = torch.linalg.eigh(normalised)  # ascending; Laplacian = 1 - values
    laplacian = (1 - values.flip(0))[: max_clusters + 1].clamp_min(0)
    gaps = laplacian[2:] - laplacian[1:-1]  # gap after c = 2 .. max_clusters
    count = int(gaps.argmax()) + 2
    embedding = vectors.flip(1)[:, :count]
    embedding = embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return laplacian, embedding, count


def kmeans(points: torch.Tensor, count: int, iterations: int = 100) -> torch.Tensor:
    """``LongTensor[N]`` cluster of each row of ``points`` (``Tensor[N, D]``): Lloyd's
    algorithm from farthest-point starts (the first: the row farthest from the mean), so
    the partition does not depend on the order of the rows."""
    first = int((points - points.mean(0)).norm(dim=1).argmax())
    centres = [points[first]]
    nearest = (points - centres[0]).norm(dim=1)
    for _ in range(count - 1):
        far = int(nearest.argmax())
        centres.append(points[far])
        nearest = torch.minimum(nearest, (points - points[far]).norm(dim=1))
    centres = torch.stack(centres)
    labels = torch.cdist(points, centres).argmin(1)
    for _ in range(iterations):
        centres = torch.stack(
            [
                points[labels == c].mean(0) if (labels == c).any() else centres[c]
                for c in range(count)
            ]
        )
        update = torch.cdist(points, centres).argmin(1)
        if torch.equal(update, labels):
            break
        labels = update
    return labels


def _mean_distances(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``Tensor[N, C]``: each row's mean distance to the members of each cluster (clusters
    in ``labels.unique()`` order), itself left out; inf for a cluster with no other member."""
    distances = torch.cdist(features, features)
    one_hot = (labels[:, None] == labels.unique()[None]).double()
    others = one_hot.sum(0)[None] - one_hot  # the cluster's size, less the row itself
    means = (distances @ one_hot) / others.clamp_min(1)
    return means.masked_fill(others == 0, float("inf"))


def _relative_silhouettes(means: torch.Tensor, cluster: torch.Tensor) -> torch.Tensor:
    """``(b - a) / max(a, b)`` per row, ``a`` = ``means`` to the row's ``cluster`` (column
    index per row), ``b`` the smallest of its other columns (0 when there is one cluster:
    then every score is -1, nothing stands apart); 0 where ``a`` is inf (no other member)."""
    rows = torch.arange(len(means))
    a = means[rows, cluster]
    others = means.clone()
    others[rows, cluster] = float("inf")
    b = others.min(1).values if means.shape[1] > 1 else torch.zeros_like(a)
    score = (b - a) / torch.maximum(a, b).clamp_min(1e-30)
    return torch.where(torch.isfinite(a), score, torch.zeros_like(score))


def silhouettes(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``Tensor[N]``: each row's silhouette ``(b - a) / max(a, b)``, ``a`` the mean distance
    to the other members of its cluster, ``b`` the smallest mean distance to another
    cluster's members; 0 for a member alone in its cluster."""
    own = (labels[:, None] == labels.unique()[None]).long().argmax(1)
    return _relative_silhouettes(_mean_distances(features, labels), own)


def membership(features: torch.Tensor, labels: torch.Tensor, cluster: int) -> torch.Tensor:
    """``Tensor[N]`` in [-1, 1]: how firmly each row belongs to ``cluster`` (a label of
    ``labels``): ``(b - a) / max(a, b)``, ``a`` the row's mean distance to the cluster's
    members (itself left out), ``b`` the smallest mean distance to another cluster's. A
    member's membership is its silhouette; a positive value on a non-member means it lies
    nearer that cluster than any other (on the border, or misplaced)."""
    column = int((labels.unique() == cluster).nonzero()[0, 0])
    means = _mean_distances(features, labels)
    return _relative_silhouettes(means, torch.full((len(labels),), column))


def graph_neighbours(neighbours: int, count: int) -> int:
    """The ``k`` of the affinity graph of ``count`` maps: ``neighbours``, at most half of
    the other maps (a graph of nearly every pair is complete and clusters nothing)."""
    return max(1, min(neighbours, (count - 1) // 2))


def cluster_features(
    vectors: torch.Tensor, neighbours: int, max_clusters: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 2 to 5 on ``Tensor[N, D]`` features: ``(labels LongTensor[N], silhouettes
    Tensor[N], eigenvalues, embedding)``; labels are k-means's, not yet ranked."""
    count = len(vectors)
    affinity = knn_affinity(vectors, graph_neighbours(neighbours, count))
    eigenvalues, embedding, clusters = spectral_embedding(affinity, min(max_clusters, count - 2))
    labels = kmeans(embedding, clusters)
    return labels, silhouettes(vectors, labels), eigenvalues, embedding


def top_score(labels: torch.Tensor, scores: torch.Tensor) -> float:
    """The largest mean silhouette of a cluster (the top-ranked cluster's score)."""
    return max(float(scores[labels == c].mean()) for c in labels.unique().tolist())


def null_scores(
    vectors: torch.Tensor,
    neighbours: int,
    max_clusters: int,
    draws: int,
    seed: int = 0,
    compositional: bool = False,
) -> torch.Tensor:
    """``Tensor[draws]``: the top-ranked cluster's score (steps 2 to 5) on ``draws`` data sets
    of ``N`` rows drawn from one Gaussian with the mean and covariance (maximum likelihood)
    of ``vectors`` ``Tensor[N, D]`` (the SigClust null), from a generator seeded ``seed``.
    ``compositional``: the rows are shares (>= 0, summing to 1) and the Gaussian is fitted
    to their centred log-ratios and mapped back by softmax (the logistic-normal null); a
    zero share is first replaced by half the smallest positive share of the data and its
    row rescaled to sum 1 (multiplicative replacement, Martin-Fernandez et al. 2003)."""
    vectors = vectors.double()
    if compositional:
        vectors = _centred_log_ratios(vectors)
    mean = vectors.mean(0)
    _, singular, basis = torch.linalg.svd(vectors - mean, full_matrices=False)
    spread = singular / len(vectors) ** 0.5  # standard deviation along each principal axis
    generator = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(draws):
        normal = torch.randn(len(vectors), len(spread), generator=generator, dtype=torch.float64)
        drawn = (normal * spread) @ basis + mean
        if compositional:
            drawn = drawn.softmax(1)
        scores.append(top_score(*cluster_features(drawn, neighbours, max_clusters)[:2]))
    return torch.tensor(scores, dtype=torch.float64)


def _centred_log_ratios(shares: torch.Tensor) -> torch.Tensor:
    """``log v - mean(log v)`` per row of ``shares`` ``Tensor[N, D]`` (>= 0, rows summing to
    1), zeros replaced as in `null_scores`."""
    if bool((shares <= 0).any()):
        floor = shares[shares > 0].min() / 2
        shares = torch.where(shares > 0, shares, floor)
        shares = shares / shares.sum(1, keepdim=True)
    logs = shares.log()
    return logs - logs.mean(1, keepdim=True)


def spray(
    maps,
    *,
    class_id: int | None = None,
    sources: list[str] | None = None,
    size: int = DEFAULT_SIZE,
    features: str = "maps",
    window: int = DEFAULT_WINDOW,
    neighbours: int = DEFAULT_NEIGHBOURS,
    max_clusters: int = DEFAULT_MAX_CLUSTERS,
    null_draws: int = 0,
    seed: int = 0,
) -> SprayResult:
    """SpRAy clusters of attribution maps (module docstring).

    Args:
        maps: ``Tensor[N, H, W]`` maps of one class's images (any method, raw), or with
            ``features="channels"`` their channel relevances ``Tensor[N, K]`` (lrp's
            extras ``"channel_relevance"``), with ``features="peaks"`` a layer's relevance
            ``Tensor[N, K, h, w]`` (`convlens.attribution.lrp.propagate_relevance`) or its
            channel peaks ``Tensor[N, K]`` (lrp with ``relevance_pool="peak"``), or the
            folder of ``convlens attribute DATA --out DIR`` (then ``class_id`` picks the
            rows that explain that class; without it all rows, which must explain one
            class).
        sources: a name per map (default ``"0"``, ``"1"``, ...; a folder's sources).
        size: side of the shrunk maps (the paper shrinks before clustering).
        features: ``"maps"`` (the paper's), ``"sorted"`` (translation-invariant),
            ``"channels"`` (relevance per channel, translation-invariant) or ``"peaks"``
            (each channel's largest windowed relevance, translation-invariant).
        window: side of the windows of ``"peaks"`` on a ``Tensor[N, K, h, w]``, in the
            layer's positions (about the side of the pattern sought, at that layer).
        neighbours: k of the nearest-neighbour affinity graph (at most ``(N - 1) // 2``).
        max_clusters: the largest count the eigengap may choose (at least 2).
        null_draws: how many one-cloud data sets the top score is compared with
            (`null_scores`: Gaussian, logistic normal for ``"peaks"``; 0: none,
            ``p_value`` and ``stands_apart`` are None).
        seed: the generator seed of the null draws.

    Returns a `SprayResult`; its clusters ranked by score, best first.

    Example:
        >>> maps = torch.zeros(12, 8, 8); maps[:6, :4, :4] = 1; maps[6:, 4:, 4:] = 1
        >>> noise = torch.linspace(0, 0.01, 768).view(12, 8, 8)
        >>> result = spray(maps + noise, size=8, neighbours=5)
        >>> sorted(c.size for c in result.clusters)
        [6, 6]
    """
    if isinstance(maps, (str, Path)):
        maps, sources = _folder_maps(Path(maps), class_id, sources, features)
    if not isinstance(maps, torch.Tensor):
        raise DataError("SpRAy takes maps Tensor[N, H, W] or a 'convlens attribute' folder")
    if max_clusters < 2:
        raise DataError(f"max_clusters must be >= 2, got {max_clusters}")
    if null_draws < 0:
        raise DataError(f"null_draws must be >= 0, got {null_draws}")
    count = len(maps)
    if count < 4:
        raise DataError(f"SpRAy needs at least 4 maps to cluster, got {count}")
    if sources is None:
        sources = [str(i) for i in range(count)]
    if len(sources) != count:
        raise DataError(f"{len(sources)} sources for {count} maps; give one name per map")
    vectors = spray_features(maps, size, features, window)
    labels, scores, eigenvalues, embedding = cluster_features(vectors, neighbours, max_clusters)
    groups = [(labels == c).nonzero()[:, 0].tolist() for c in labels.unique().tolist()]
    # best score first; equal scores: the smaller cluster, then the one with the first row
    groups.sort(key=lambda rows: (-float(scores[rows].mean()), len(rows), rows[0]))
    ranked = torch.empty_like(labels)
    result = []
    for rank, rows in enumerate(groups):
        ranked[rows] = rank
        mean_map = vectors[rows].mean(0).view(size, size).float() if features == "maps" else None
        result.append(
            SprayCluster(
                rank, rows, [sources[i] for i in rows], float(scores[rows].mean()), mean_map
            )
        )
    top_members = membership(vectors, ranked, 0).float()
    null = None
    if null_draws:
        shares = features == "peaks"
        null = null_scores(vectors, neighbours, max_clusters, null_draws, seed, shares)
    return SprayResult(
        result, ranked, eigenvalues.float(), embedding.float(), vectors, top_members, null
    )


@dataclass(frozen=True)
class SprayClass:
    """SpRAy of one explained class of a ``convlens attribute`` folder: ``record`` its entry
    of ``spray.json``, ``result`` the `SprayResult`, ``maps`` ``Tensor[N, S, S]`` the stored
    maps of its rows (whatever the features: what the atlas draws)."""

    record: dict
    result: SprayResult
    maps: torch.Tensor

    @property
    def features(self) -> torch.Tensor:
        """``Tensor[N, D]``: what was clustered (`spray_features`)."""
        return self.result.features


def spray_classes(
    folder: str | Path, class_id: int | None = None, **settings
) -> tuple[list[SprayClass], list[dict]]:
    """SpRAy of every explained class of a ``convlens attribute`` folder (or only
    ``class_id``): the classes in the folder's order, and the skipped ones ``[{"class",
    "message"}]`` (fewer than 4 maps). ``settings``: those of `spray`."""
    attributions = load_attributions(folder)
    features = settings.get("features", "maps")
    stored = _stored(attributions, Path(folder), features)
    by_class: dict = {}
    for i, row in enumerate(attributions.rows):
        by_class.setdefault(row["class"], []).append(i)
    if class_id is not None and class_id not in by_class:
        raise DataError(
            f"{folder}: no map explains class {class_id}; its classes: "
            f"{', '.join(map(str, by_class))}"
        )
    classes, skipped = [], []
    for c, rows in by_class.items():
        if class_id is not None and c != class_id:
            continue
        if len(rows) < 4:
            skipped.append({"class": c, "message": f"{len(rows)} maps; SpRAy needs at least 4"})
            continue
        sources = [attributions.rows[i]["source"] for i in rows]
        result = spray(stored[rows], sources=sources, **settings)
        record = {
            "class": c,
            "class_name": attributions.rows[rows[0]].get("class_name"),
            "count": len(rows),
            "eigengap": result.eigengap,
            "clusters": [cluster.record() for cluster in result.clusters],
            "membership": membership_ranking(result, sources),
        }
        if result.null_scores is not None:
            record["p_value"] = result.p_value
            record["stands_apart"] = result.stands_apart
        classes.append(SprayClass(record, result, attributions.maps[rows]))
    return classes, skipped


def membership_ranking(result: SprayResult, sources: list[str]) -> list[dict]:
    """``[{"source", "membership"}]`` for every row, most firmly in the top-ranked cluster
    first (ties: the first row first): the images to look at first for its strategy."""
    order = sorted(range(len(sources)), key=lambda i: (-float(result.membership[i]), i))
    return [{"source": sources[i], "membership": float(result.membership[i])} for i in order]


def spray_attributions(folder: str | Path, class_id: int | None = None, **settings) -> dict:
    """SpRAy of every explained class of a ``convlens attribute`` folder (or only
    ``class_id``): ``{"classes": [{"class", "class_name", "count", "eigengap", "clusters":
    [{"id", "size", "members": [source, ...], "score"}], "membership": [{"source",
    "membership"}]}], "skipped": [{"class", "message"}]}`` (`membership_ranking`).
    ``settings``: those of `spray`. A class with fewer than 4 maps is skipped (named in
    ``skipped``)."""
    classes, skipped = spray_classes(folder, class_id, **settings)
    return {"classes": [entry.record for entry in classes], "skipped": skipped}


def _folder_maps(
    folder: Path, class_id: int | None, sources, features: str
) -> tuple[torch.Tensor, list[str]]:
    attributions = load_attributions(folder)
    stored = _stored(attributions, folder, features)
    rows = list(range(len(attributions.rows)))
    classes = {r["class"] for r in attributions.rows}
    if class_id is not None:
        rows = [i for i in rows if attributions.rows[i]["class"] == class_id]
        if not rows:
            raise DataError(f"{folder}: no map explains class {class_id}; its classes: {classes}")
    elif len(classes) > 1:
        raise DataError(
            f"{folder} explains several classes {sorted(map(str, classes))}; pick one with "
            "class_id (SpRAy clusters one class's maps)"
        )
    names = [attributions.rows[i]["source"] for i in rows]
    return stored[rows], names if sources is None else sources


def _stored(attributions, folder: Path, features: str) -> torch.Tensor:
    """What ``features`` clusters in a folder: its channel relevances for ``"channels"``
    (summed) and ``"peaks"`` (pooled by peak; `DataError` naming the fix when it has none
    of that kind), else its maps."""
    if features not in ("channels", "peaks"):
        return attributions.maps
    pool = "peak" if features == "peaks" else "sum"
    option = " --option relevance_pool=peak" if pool == "peak" else ""
    fix = (
        f"run 'convlens attribute DATA --method lrp --option relevance_layer=LAYER{option} "
        f"--out {folder}' (LAYER: an activation, such as a ReLU of the middle blocks)"
    )
    if attributions.channels is None:
        raise DataError(
            f"{folder} holds no channel relevances: {fix}, or cluster its maps (features maps "
            "or sorted)"
        )
    stored = attributions.index.get("channel_pool") or "sum"
    if stored != pool:
        raise DataError(
            f"{folder} holds channel relevances pooled by {stored}, features={features!r} "
            f"needs them pooled by {pool}: {fix}, or use features="
            f"{'peaks' if stored == 'peak' else 'channels'!r}"
        )
    return attributions.channels
