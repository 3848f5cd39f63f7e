"""SpRAy's ground truth on the planted-shortcut models: do the images whose triangle score
depends on the cue land in the top-ranked cluster?

Run: ``python benchmarks/spray_shortcuts.py`` (``--help`` for options; a few minutes on one
CPU thread).

Data: the held-out scenes ``ShortcutScenes(--scenes, seed=1, rate=0)`` that hold a triangle
(the cue is a fair coin there, so about half carry it), as a model meets them (``images``).
Counterfactual effect of each image: triangle logit of the image minus that of the same
image without the cue (``images_without_cue``; exactly 0 where there is no cue). An image
"depends on the cue" when the effect exceeds ``--threshold`` logits (0.5 by default).

For each model and method, the triangle maps of all these images go to `convlens.spray`
with both feature kinds (``maps``: the paper's; ``sorted``: translation-invariant), and the
ROC AUC of "member of the top-ranked cluster" (a 0/1 score) against "depends on the cue" is
printed with every cluster's size, score and count of cue-dependent members.
"""

from __future__ import annotations

import argparse

import torch

from convlens.attribution.explain import explain
from convlens.concepts.spray import spray
from convlens.data.shortcuts import SHORTCUT_CLASS, ShortcutScenes
from convlens.models import load_model


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """ROC AUC of ``scores`` for the boolean ``positive`` (ties count one half); NaN when
    one side is empty."""
    pos, neg = scores[positive].double(), scores[~positive].double()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None]).double().mean()
    equal = (pos[:, None] == neg[None]).double().mean()
    return float(greater + equal / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="1.0,0.0")
    parser.add_argument("--methods", default="lrp,gradcam")
    parser.add_argument("--scenes", type=int, default=800)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--neighbours", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = ShortcutScenes(args.scenes, seed=1, rate=0.0)
    rows = (data.batch().labels[:, SHORTCUT_CLASS] > 0).nonzero()[:, 0].tolist()
    batch = data.batch(rows)
    for rate in args.models.split(","):
        model = load_model(f"shortcut-{float(rate):.1f}")
        images = model.preprocess.normalize(batch.display("images"))
        without = model.preprocess.normalize(batch.display("images_without_cue"))
        with torch.no_grad():
            effect = (
                model.module(images)[:, SHORTCUT_CLASS] - model.module(without)[:, SHORTCUT_CLASS]
            )
        depends = effect > args.threshold
        print(
            f"shortcut-{rate}: {len(rows)} triangle scenes, {int(batch.has_cue.sum())} with the "
            f"cue, {int(depends.sum())} with effect > {args.threshold}"
        )
        for method in args.methods.split(","):
            maps = torch.cat(
                [
                    explain(model, images[i : i + 64], method, target=SHORTCUT_CLASS).maps
                    for i in range(0, len(images), 64)
                ]
            )
            for features in ("maps", "sorted"):
                result = spray(maps, size=args.size, features=features, neighbours=args.neighbours)
                top = (result.labels == 0).float()
                clusters = [
                    f"{c.size}/{c.score:.2f}/{int(depends[c.members].sum())}"
                    for c in result.clusters
                ]
                print(
                    f"  {method:8s} {features:6s} AUC {roc_auc(top, depends):.3f} "
                    f"eigengap {result.eigengap:.3f} clusters (size/score/dependent): "
                    f"{' '.join(clusters)}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
