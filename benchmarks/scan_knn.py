"""Nearest neighbours in the shapes model's feature space share the class (Zeiler & Fergus
style retrieval check), beside model-free floors.

Run: ``python benchmarks/scan_knn.py`` (``--help`` for options).

The index holds ``--train`` synthetic-shapes items of stream 0 (the stream the shipped
model trained on); the queries are ``--test`` items of stream 1 (its test stream). For each
query the 5 nearest index items (cosine distance, `convlens.scan.knn.nearest`) are found
with three kinds of features, and the share of those neighbours whose class equals the
query's is reported (target for the model's features: >= 90%):

- the shapes model's pooled features (the classifier's input, `convlens.scan.embed`);
- raw pixels (the 64 x 64 image, normalised; index: the first ``--pixel-items`` training
  images), a model-free floor;
- chance: the share of the most frequent class (1/6 with six balanced classes).
"""

from __future__ import annotations

import argparse
import json

import torch

from convlens.data.datasets import ScanDataset, open_dataset
from convlens.models import load_model
from convlens.scan.embed import embed, load_embeddings
from convlens.scan.knn import nearest


def shared_class(index_vectors, index_labels, queries, query_labels, k: int) -> float:
    """Share of the k nearest index items (cosine) that have the query's class."""
    rows, _ = nearest(index_vectors, queries, k, "cosine")
    neighbour_labels = torch.as_tensor(index_labels)[rows]
    return float((neighbour_labels == torch.as_tensor(query_labels)[:, None]).float().mean())


def pixels(dataset: ScanDataset, count: int) -> torch.Tensor:
    """The first ``count`` items' normalised pixels, one row each."""
    return torch.stack([dataset[i][1].flatten() for i in range(min(count, len(dataset)))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=600)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--pixel-items", type=int, default=2000, help="index size, pixel floor")
    parser.add_argument(
        "--index",
        help="reuse a folder written by 'convlens embed shapes:N --model synthetic-shapes' "
        "(its N items replace --train)",
    )
    args = parser.parse_args()
    model = load_model("synthetic-shapes")
    queries = open_dataset(f"shapes-test:{args.test}", model.preprocess)
    if args.index:
        stored = load_embeddings(args.index)
        args.train = len(stored.sources)
    else:
        stored = embed(model, f"shapes:{args.train}", batch_size=64)
    index = open_dataset(f"shapes:{args.train}", model.preprocess)
    asked = embed(model, queries, batch_size=64)
    rows = {
        "shapes model pooled features": shared_class(
            stored.vectors, stored.labels, asked.vectors, asked.labels, args.k
        ),
        "raw pixels (floor)": shared_class(
            pixels(index, args.pixel_items),
            index.labels[: args.pixel_items],
            pixels(queries, args.test),
            queries.labels,
            args.k,
        ),
        "chance (floor)": max(queries.labels.count(c) for c in set(queries.labels))
        / len(queries.labels),
    }
    print(
        f"{args.k} nearest of {args.test} test images among {args.train} training images "
        f"({min(args.pixel_items, args.train)} for the pixel floor):"
    )
    for name, share in rows.items():
        print(f"  {name:32s} {100 * share:5.1f}% share the query's class")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
