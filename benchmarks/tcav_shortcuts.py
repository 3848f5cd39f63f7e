"""TCAV's ground truth on the planted-shortcut models: is the triangle class's score
significantly sensitive to the cue concept, and how often does a random "concept" pass?

Run: ``python benchmarks/tcav_shortcuts.py`` (``--help`` for options; about 30 min on one
CPU thread with the defaults; ``--random-concepts 0`` skips the false-positive check).

Sets (all `convlens.data.shortcuts.ShortcutScenes` at rate 0, i.e. the held-out distribution
in which the cue is a fair coin, independent of the class; seed 0, the training stream, is
not used):

- concept "cue": the first ``--concept`` scenes of seed 2, every one with the cue painted
  (``images_with_cue``; any classes, so that the cue is the only thing the concept images
  share beyond the scene distribution);
- random: the first ``(runs + 1) * --random`` scenes of seed 3 as a model meets them
  (``images``: the cue in about half), split into ``runs + 1`` disjoint sets (TCAV paper:
  random images of the data distribution, one set per run);
- tested: the first ``--tested`` scenes of seed 1 that hold a triangle (``images``).

For each model (``shortcut-0.0``, ``shortcut-0.9``, ``shortcut-1.0``) `convlens.tcav` runs
at ``--layers`` (Bonferroni over them) with ``runs`` = 10. The false-positive check repeats
it with the concept replaced by ``--concept`` scenes of seed 4 (``images``, the same
distribution as the random sets: a concept that means nothing; experiment ``k`` takes scenes
``k * concept ..`` and splits the random pool with seed ``k``) and counts the experiments
significant at p < 0.01 and at p < 0.05.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from convlens.concepts.tcav import tcav
from convlens.data.shortcuts import SHORTCUT_CLASS, ShortcutScenes
from convlens.models import load_model


def scenes(count: int, seed: int, which: str, preprocess, start: int = 0) -> torch.Tensor:
    """``Tensor[count, 3, 64, 64]``: scenes of rate-0 stream ``seed`` (``which`` images)."""
    batch = ShortcutScenes(count, seed=seed, rate=0.0, start=start).batch()
    return preprocess.normalize(batch.display(which))


def triangle_scenes(count: int, preprocess) -> torch.Tensor:
    """The first ``count`` held-out scenes (seed 1, rate 0) that hold a triangle."""
    data = ShortcutScenes(4 * count, seed=1, rate=0.0)
    rows = (data.batch().labels[:, SHORTCUT_CLASS] > 0).nonzero()[:, 0][:count].tolist()
    return preprocess.normalize(data.batch(rows).display("images"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="0.0,0.9,1.0")
    parser.add_argument("--layers", default="features.13,features.16")
    parser.add_argument("--concept", type=int, default=50)
    parser.add_argument("--random", type=int, default=50, help="images per random set")
    parser.add_argument("--tested", type=int, default=100)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--random-concepts", type=int, default=20)
    parser.add_argument("--out", default=None, help="write every record to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    layers = args.layers.split(",")
    preprocess = load_model("shortcut-1.0").preprocess
    cue = scenes(args.concept, 2, "images_with_cue", preprocess)
    randoms = scenes((args.runs + 1) * args.random, 3, "images", preprocess)
    tested = triangle_scenes(args.tested, preprocess)
    records = []
    for rate in args.models.split(","):
        name = f"shortcut-{float(rate):.1f}"
        start = time.perf_counter()
        for result in tcav(
            name, cue, randoms, tested, "triangle", layers, runs=args.runs, concept_name="cue"
        ):
            records.append({"model": name, **result.record()})
            print(
                f"{name} cue {result.layer}: score {result.score:.3f} p {result.p_value:.4f}",
                flush=True,
            )
        false_01 = {layer: 0 for layer in layers}
        false_05 = {layer: 0 for layer in layers}
        for k in range(args.random_concepts):
            concept = scenes(args.concept, 4, "images", preprocess, start=k * args.concept)
            for result in tcav(
                name,
                concept,
                randoms,
                tested,
                "triangle",
                layers,
                runs=args.runs,
                seed=k,
                concept_name=f"random-{k}",
            ):
                records.append({"model": name, **result.record()})
                false_01[result.layer] += result.p_value < 0.01
                false_05[result.layer] += result.p_value < 0.05
        for layer in layers:
            print(
                f"{name} random concepts {layer}: p<0.01 in {false_01[layer]}/"
                f"{args.random_concepts}, p<0.05 in {false_05[layer]}/"
                f"{args.random_concepts}",
                flush=True,
            )
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(records, handle, indent=1)


if __name__ == "__main__":
    main()
