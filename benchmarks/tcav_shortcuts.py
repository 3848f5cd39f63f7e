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
at ``--layers`` (Bonferroni over them) with ``runs`` = 10 and reports every test's p-value
(``cosine`` and ``score``: the concept against the 11 random sets as null concepts,
Crawford-Howell; ``runs``: the paper's t-test of the runs). The false-positive check
replaces the concept by ``--concept`` scenes of seed 4 (``images``, the same distribution
as the random sets: a concept that means nothing; experiment ``k`` takes scenes
``k * concept ..``), keeps the random sets, and counts the experiments significant at
p < 0.01 and at p < 0.05 under each test. The layers' activations and the null concepts'
fits are computed once per model and layer (`convlens.concepts.tcav.tcav_statistics`);
the cue's record is checked against the public `convlens.tcav` call.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from convlens.concepts.sets import ImageSet
from convlens.concepts.tcav import (
    TESTS,
    class_gradients,
    layer_activations,
    null_concept_runs,
    random_sets,
    tcav,
    tcav_statistics,
)
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


def layer_inputs(model, layer: str, randoms, tested, runs: int):
    """Random sets' activations (split as `convlens.tcav` splits one pool), class gradients
    and null-concept runs of one layer."""
    parts = random_sets([ImageSet(randoms, [str(i) for i in range(len(randoms))])], runs)
    random_acts = [layer_activations(model, part.images, layer) for part in parts]
    gradients = class_gradients(model, tested, layer, SHORTCUT_CLASS)
    return random_acts, gradients, null_concept_runs(random_acts, gradients, runs)


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
    concepts = {"cue": cue} | {
        f"random-{k}": scenes(args.concept, 4, "images", preprocess, start=k * args.concept)
        for k in range(args.random_concepts)
    }
    records = []
    for rate in args.models.split(","):
        name = f"shortcut-{float(rate):.1f}"
        start = time.perf_counter()
        model = load_model(name).module
        public = {
            r.layer: r for r in tcav(name, cue, randoms, tested, "triangle", layers, runs=args.runs)
        }
        for layer in layers:
            random_acts, gradients, null = layer_inputs(model, layer, randoms, tested, args.runs)
            false = {(test, alpha): 0 for test in TESTS for alpha in (0.01, 0.05)}
            for concept, images in concepts.items():
                acts = layer_activations(model, images, layer)
                found = tcav_statistics(acts, random_acts, gradients, args.runs, len(layers), null)
                records.append({"model": name, "layer": layer, "concept": concept} | found)
                if concept == "cue":
                    assert found["p_values"] == public[layer].p_values, "public call differs"
                    p = found["p_values"]
                    print(
                        f"{name} {layer} cue: score {found['score']:.3f} cosine "
                        f"{found['cosine']:.4f} p cosine {p['cosine']:.2g} score "
                        f"{p['score']:.2g} runs {p['runs']:.2g}",
                        flush=True,
                    )
                    continue
                for test, alpha in false:
                    false[test, alpha] += found["p_values"][test] < alpha
            counts = ", ".join(
                f"{test} p<{alpha}: {n}/{args.random_concepts}"
                for (test, alpha), n in false.items()
            )
            print(f"{name} {layer} random concepts: {counts}", flush=True)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(records, handle, indent=1)


if __name__ == "__main__":
    main()
