"""Pictures of SpRAy's clusters (issue 23, part 2), drawn from a `SprayClass`:

- `class_map_picture`: the t-SNE map (openTSNE, `convlens.scan.knn.map_2d`) of the features
  SpRAy clustered, each image drawn as a thumbnail of its map, framed in its cluster's colour;
- `cluster_picture`: a cluster's mean map (the mean of its members' maps, each divided by
  its largest absolute value) beside its exemplars, the members whose features are nearest
  the cluster's mean features, nearest first.

Maps are drawn by `convlens.render.images.map_display`'s rule (signed maps in a diverging
colormap, white at 0). Nothing here writes a file; `convlens spray` saves the pictures and
`convlens.report.atlas.write_spray_atlas` the pages.
"""

from __future__ import annotations

import numpy as np
import torch

from convlens.concepts.spray import SprayClass, SprayCluster
from convlens.maps import resize_maps
from convlens.render.images import (
    DIVERGING_CMAP,
    SEQUENTIAL_CMAP,
    colorize,
    image_grid,
    map_display,
)
from convlens.render.scans import thumbnail_map
from convlens.scan.knn import MAP_MIN_ITEMS, map_2d

EXEMPLARS = 8
TILE = 64


def map_tile(values: torch.Tensor, tile: int = TILE) -> np.ndarray:
    """A map ``Tensor[S, S]`` (any range) as ``uint8[tile, tile, 3]``."""
    unit, signed = map_display(values)
    grown = resize_maps(unit.float()[None], (tile, tile))[0].clamp(0, 1)
    return colorize(grown, DIVERGING_CMAP if signed else SEQUENTIAL_CMAP)


def class_map_picture(entry: SprayClass, seed: int = 0, size: int = 900) -> np.ndarray | None:
    """The t-SNE map of one class's features with its maps as thumbnails framed in their
    cluster's colour and a legend of the clusters; None for fewer than `MAP_MIN_ITEMS`
    maps. ``uint8[H, size, 3]``."""
    if len(entry.maps) < MAP_MIN_ITEMS:
        return None
    points = map_2d(entry.features.float(), "tsne", seed)
    thumbs = [map_tile(m) for m in entry.maps]
    names = [f"cluster {c.id} ({c.size}, {c.score:.2f})" for c in entry.result.clusters]
    return thumbnail_map(points, thumbs, entry.result.labels.tolist(), names, size=size)


def exemplars(entry: SprayClass, cluster: SprayCluster, count: int = EXEMPLARS) -> list[int]:
    """The rows of ``cluster``'s members nearest its mean features, nearest first (equal
    distances: the earlier row), at most ``count``."""
    members = torch.tensor(cluster.members)
    features = entry.features[members]
    distance = (features - features.mean(0)).norm(dim=1)
    order = sorted(range(len(members)), key=lambda i: (float(distance[i]), i))
    return [int(members[i]) for i in order[:count]]


def cluster_picture(entry: SprayClass, cluster: SprayCluster) -> np.ndarray:
    """``cluster``'s mean map then its exemplars' maps, left to right, captioned."""
    maps = entry.maps[cluster.members]
    mean = (maps / maps.flatten(1).abs().amax(1).clamp_min(1e-30)[:, None, None]).mean(0)
    rows = exemplars(entry, cluster)
    tiles = [map_tile(mean)] + [map_tile(entry.maps[i]) for i in rows]
    names = entry.result.clusters[cluster.id].sources
    by_row = dict(zip(cluster.members, names, strict=True))
    titles = [f"mean of {cluster.size}"] + [_short(by_row[i]) for i in rows]
    return image_grid(tiles, titles, columns=len(tiles))


def _short(source: str) -> str:
    return source.replace("\\", "/").rsplit("/", 1)[-1]
