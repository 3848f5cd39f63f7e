"""convlens's SpRAy against CoRelAy's SpRAy pipeline (Anders et al. 2021,
``corelay.pipeline.spectral.SpectralClustering``) on the same features.

Run: ``python benchmarks/spray_corelay.py`` (needs ``pip install corelay``; about a minute on
one CPU thread).

Inputs, fixed: ``groups``, 60 hand-made 16x16 maps in three groups (a blob in one of three
places, noise of three strengths); and the triangle class's LRP of the 337 triangle scenes
among ``ShortcutScenes(800, seed=1, rate=0)`` on ``shortcut-1.0`` (as in
``benchmarks/spray_shortcuts.py``) with the three feature kinds (maps and sorted at 16 x 16,
channels at ``features.13``).

For each, convlens's features (`convlens.concepts.spray.spray_features`) go to both:

- convlens: `convlens.spray` with ``neighbours`` = 10; its eigengap picks the count ``c``;
- CoRelAy, the same settings: Euclidean distances (``SciPyPDist``), the symmetric 10-NN graph
  (``SparseKNN(n_neighbors=10, symmetric=True)``), ``SymmetricNormalLaplacian`` (which is
  ``D^-1/2 A D^-1/2``), ``EigenDecomposition(n_eigval=c, which="LA")`` (the ``c`` largest
  eigenvalues of that matrix, i.e. the ``c`` smallest of the normalised Laplacian; rows
  scaled to unit length) and scikit-learn's ``KMeans(n_clusters=c)`` with
  ``random_state`` 0 .. 9.

Printed: the largest difference of the ``c`` eigenvalues, the adjusted Rand index of the
two partitions (1: the same partition up to the names of the clusters) over the k-means
seeds, and k-means' objective (sum of squared distances to the cluster means, on CoRelAy's
embedding) of convlens's partition and of CoRelAy's; and the same with CoRelAy's default
``which="LM"`` (largest in magnitude).
"""

from __future__ import annotations

import numpy as np
import torch
from corelay.pipeline.spectral import SpectralClustering
from corelay.processor.affinity import SparseKNN
from corelay.processor.clustering import KMeans
from corelay.processor.distance import SciPyPDist
from corelay.processor.embedding import EigenDecomposition
from corelay.processor.laplacian import SymmetricNormalLaplacian
from sklearn.metrics import adjusted_rand_score

from convlens.attribution.explain import explain
from convlens.concepts.spray import spray, spray_features
from convlens.data.shortcuts import SHORTCUT_CLASS, ShortcutScenes
from convlens.models import load_model

NEIGHBOURS = 10


def hand_made_groups() -> torch.Tensor:
    """``Tensor[60, 16, 16]``: three groups of 20 maps, a blob in one of three places."""
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(60, 16, 16, generator=generator)
    for g, (noise, y, x) in enumerate([(0.1, 2, 2), (0.3, 9, 10), (0.6, 2, 10)]):
        rows = slice(20 * g, 20 * g + 20)
        maps[rows] *= noise
        maps[rows, y : y + 4, x : x + 4] += 1.0
    return maps


def shortcut_inputs() -> dict[str, tuple[torch.Tensor, str]]:
    """LRP maps and channel relevances of the triangle scenes on shortcut-1.0."""
    data = ShortcutScenes(800, seed=1, rate=0.0)
    rows = (data.batch().labels[:, SHORTCUT_CLASS] > 0).nonzero()[:, 0].tolist()
    model = load_model("shortcut-1.0")
    images = model.preprocess.normalize(data.batch(rows).display("images"))
    parts = [
        explain(model, images[i : i + 64], "lrp", SHORTCUT_CLASS, relevance_layer="features.13")
        for i in range(0, len(images), 64)
    ]
    maps = torch.cat([p.maps for p in parts])
    channels = torch.cat([p.extras["channel_relevance"] for p in parts])
    return {
        "shortcut-1.0 LRP maps": (maps, "maps"),
        "shortcut-1.0 LRP sorted": (maps, "sorted"),
        "shortcut-1.0 LRP channels@features.13": (channels, "channels"),
    }


def corelay_partition(features: np.ndarray, count: int, which: str, seed: int):
    """CoRelAy's spectral clustering of ``features`` with ``count`` eigenvectors and
    clusters: (eigenvalues of the Laplacian ascending, labels)."""
    pipeline = SpectralClustering(
        pairwise_distance=SciPyPDist(metric="euclidean"),
        affinity=SparseKNN(n_neighbors=NEIGHBOURS, symmetric=True),
        laplacian=SymmetricNormalLaplacian(),
        embedding=EigenDecomposition(n_eigval=count, which=which, is_output=True),
        clustering=KMeans(n_clusters=count, kwargs={"random_state": seed}, is_output=True),
    )
    (eigenvalues, vectors), labels = pipeline(features)
    return np.sort(eigenvalues), vectors, labels


def inertia(points: np.ndarray, labels: np.ndarray) -> float:
    """k-means' objective: the sum of squared distances of the points to their cluster's
    mean."""
    return float(
        sum(((points[labels == c] - points[labels == c].mean(0)) ** 2).sum() for c in set(labels))
    )


def compare(name: str, inputs: torch.Tensor, features: str) -> None:
    ours = spray(inputs, features=features, neighbours=NEIGHBOURS)
    vectors = spray_features(inputs, features=features).numpy()
    count = ours.embedding.shape[1]
    for which in ("LA", "LM"):
        scores, gaps, objectives = [], [], []
        for seed in range(10):
            eigenvalues, embedding, labels = corelay_partition(vectors, count, which, seed)
            gaps.append(float(np.abs(eigenvalues - ours.eigenvalues[:count].numpy()).max()))
            scores.append(adjusted_rand_score(ours.labels.numpy(), labels))
            objectives.append(inertia(embedding, labels))
        own = inertia(embedding, ours.labels.numpy())
        print(
            f"{name:40s} c={count:2d} which={which}: eigenvalues differ by <= {max(gaps):.1e}; "
            f"ARI min {min(scores):.3f} median {float(np.median(scores)):.3f} max "
            f"{max(scores):.3f} (k-means seeds 0..9); k-means objective on CoRelAy's "
            f"embedding: convlens {own:.3f}, CoRelAy {min(objectives):.3f} .. "
            f"{max(objectives):.3f}",
            flush=True,
        )


def main() -> None:
    torch.set_num_threads(1)
    compare("hand-made groups (maps)", hand_made_groups(), "maps")
    for name, (inputs, features) in shortcut_inputs().items():
        compare(name, inputs, features)


if __name__ == "__main__":
    main()
