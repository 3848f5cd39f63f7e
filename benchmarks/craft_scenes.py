"""CRAFT's ground truth on the shipped scenes model: do the concepts it discovers for a shape
class localise that shape?

Run: ``python benchmarks/craft_scenes.py`` (``--help`` for options; a few minutes on one
CPU thread with the defaults). Prints a Markdown table and, with ``--json FILE``, writes
every number.

For each of the six classes ``c`` of `convlens.data.scenes` (model ``synthetic-scenes``):

1. `convlens.craft` on the first ``--train`` scenes of the training stream (seed 0) that
   hold a ``c`` (``scenes:N@c``), at ``--layer`` with ``--k`` concepts;
2. each concept's map (`convlens.concepts.craft.concept_maps`, upsampled to 64 x 64) on the
   first ``--test`` held-out scenes (seed 1) that hold a ``c``, thresholded at ``--threshold``
   times the map's own maximum in that image (a map that is 0 everywhere selects nothing);
3. the IoU of that region with the exact visible mask of ``c``, averaged over the held-out
   scenes: per concept. ``best-match`` is the largest over the ``k`` concepts,
   ``top-ranked`` the IoU of the concept CRAFT ranks most important (no look at the masks).

Controls, thresholded and scored the same way (no model involved):

- ``centre``: a Gaussian bump at the image centre (sigma a quarter of the side);
- ``random best-of-k``: ``k`` maps of uniform noise on the layer's grid, upsampled like the
  concept maps; the best of the ``k`` by mean IoU (the same choice best-match makes);
- ``whole image``: every pixel selected (IoU = the mask's share of the image);
- ``random weights``: the whole procedure on the same architecture with random weights
  (``load_scenes_model(pretrained=False)``, seeded), best-match.

``top precision`` and ``top recall``: the share of the top-ranked concept's region inside
the mask, and of the mask inside that region (averaged over the scenes). And a ceiling,
``mask at layer grid``: the true mask area-averaged to the layer's grid and upsampled like
the concept maps (the best a map at the layer's resolution can do here).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from convlens.concepts.craft import concept_maps, craft
from convlens.concepts.sets import scene_batch, scene_images
from convlens.data.scenes import SCENE_CLASSES
from convlens.maps import resize_maps
from convlens.models.scenes import load_scenes_model

TEXT = ("class", "best_concept", "per_concept", "importance")


def held_out(count: int, class_id: int, preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` held-out scenes (seed 1) holding class ``class_id``: their
    preprocessed images ``Tensor[n, 3, 64, 64]`` and masks of the class ``bool[n, 64, 64]``."""
    batch = scene_batch(f"scenes-test:{6 * count}")
    rows = batch.present[:, class_id].nonzero()[:, 0][:count]
    return scene_images(batch, preprocess)[rows], batch.masks[rows, class_id]


def regions(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """``bool[..., H, W]``: pixels at or above ``threshold`` times each map's maximum (none
    where the maximum is 0)."""
    top = maps.flatten(-2).amax(-1)[..., None, None]
    return (maps >= threshold * top) & (top > 0)


def mean_iou(selected: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``Tensor[k]``: IoU of ``selected`` ``bool[n, k, H, W]`` with ``masks`` ``bool[n, H, W]``,
    averaged over the ``n`` images."""
    truth = masks[:, None]
    inter = (selected & truth).flatten(2).sum(2).float()
    union = (selected | truth).flatten(2).sum(2).float()
    return (inter / union.clamp_min(1)).mean(0)


def centre_map(size: int) -> torch.Tensor:
    centre = (size - 1) / 2
    grid = torch.arange(size, dtype=torch.float32) - centre
    sigma = size / 4
    return torch.exp(-(grid[:, None] ** 2 + grid[None] ** 2) / (2 * sigma**2))


def random_maps(count: int, k: int, grid: int, size: int, seed: int) -> torch.Tensor:
    noise = torch.rand(count * k, grid, grid, generator=torch.Generator().manual_seed(seed))
    return resize_maps(noise, (size, size)).view(count, k, size, size)


def shrunk(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """``Tensor[n, grid, grid]``: ``masks`` area-averaged to the layer's grid."""
    return torch.nn.functional.adaptive_avg_pool2d(masks[:, None], grid)[:, 0]


def one_class(model, class_id: int, args, random_model) -> dict:
    name = SCENE_CLASSES[class_id]
    data = f"scenes:{args.train}@{name}"
    factorised = {"concepts": args.k, "crop": args.crop, "crops_per_image": args.crops}
    result = craft(
        model, data, class_id, args.layer, **factorised,
        designs=args.designs, importance=args.importance,
    )  # fmt: skip
    images, masks = held_out(args.test, class_id, model.preprocess)
    maps = concept_maps(model, images, result)
    per_concept = mean_iou(regions(maps, args.threshold), masks)
    size, grid = masks.shape[-1], concept_maps(model, images[:1], result, upsample=False).shape[-1]
    centre = regions(centre_map(size), args.threshold).expand(len(masks), 1, size, size)
    noise = regions(random_maps(len(masks), args.k, grid, size, class_id), args.threshold)
    whole = torch.ones(len(masks), 1, size, size, dtype=torch.bool)
    blurred = resize_maps(shrunk(masks.float(), grid), (size, size))[:, None]
    row = {
        "class": name,
        "images": len(masks),
        "best_match": float(per_concept.max()),
        "best_concept": int(per_concept.argmax()),
        "top_ranked": float(per_concept[0]),
        "per_concept": per_concept.tolist(),
        "importance": result.importance.tolist(),
        "reconstruction_error": result.error,
        "centre": float(mean_iou(centre, masks)[0]),
        "random_best_of_k": float(mean_iou(noise, masks).max()),
        "whole_image": float(mean_iou(whole, masks)[0]),
        "mask_at_layer_grid": float(mean_iou(regions(blurred, args.threshold), masks)[0]),
    }
    top = regions(maps[:, 0], args.threshold)
    inside = (top & masks).flatten(1).sum(1).float()
    row["top_precision"] = float((inside / top.flatten(1).sum(1).clamp_min(1)).mean())
    row["top_recall"] = float((inside / masks.flatten(1).sum(1).clamp_min(1)).mean())
    for extra in args.also:
        scores = mean_iou(regions(maps, extra), masks)
        row[f"best_match@{extra}"] = float(scores.max())
        row[f"top_ranked@{extra}"] = float(scores[0])
        centre = regions(centre_map(size), extra).expand(len(masks), 1, size, size)
        row[f"centre@{extra}"] = float(mean_iou(centre, masks)[0])
    if random_model is not None:
        # its importance is not reported: few Sobol designs
        control = craft(random_model, data, class_id, args.layer, **factorised, designs=2)
        control_maps = concept_maps(random_model, images, control)
        row["random_weights"] = float(mean_iou(regions(control_maps, args.threshold), masks).max())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", default="features.16")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--train", type=int, default=200, help="training scenes scanned")
    parser.add_argument("--test", type=int, default=100, help="held-out scenes per class")
    parser.add_argument("--crop", type=float, default=0.5)
    parser.add_argument("--crops", type=int, default=8, help="crops per image")
    parser.add_argument("--designs", type=int, default=32)
    parser.add_argument("--importance", default="sobol")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument(
        "--also",
        type=lambda text: [float(t) for t in text.split(",") if t],
        default=[],
        help="more thresholds to score (comma separated), e.g. 0.3,0.7",
    )
    parser.add_argument("--no-random-weights", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_scenes_model()
    torch.manual_seed(0)
    random_model = None if args.no_random_weights else load_scenes_model(pretrained=False)
    started = time.perf_counter()
    rows = [one_class(model, c, args, random_model) for c in range(len(SCENE_CLASSES))]
    seconds = time.perf_counter() - started
    columns = ["best_match", "top_ranked", "centre", "random_best_of_k", "whole_image"]
    columns += ["mask_at_layer_grid", "top_precision", "top_recall"]
    if random_model is not None:
        columns.append("random_weights")
    print(f"layer {args.layer}, k = {args.k}, threshold {args.threshold} x max, {seconds:.0f} s")
    print("| class | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for row in rows:
        print(f"| {row['class']} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    means = {c: sum(r[c] for r in rows) / len(rows) for c in rows[0] if c not in TEXT}
    print("| **mean** | " + " | ".join(f"{means[c]:.3f}" for c in columns) + " |")
    for extra in args.also:
        keys = [f"best_match@{extra}", f"top_ranked@{extra}", f"centre@{extra}"]
        print(f"threshold {extra}: " + ", ".join(f"{k} {means[k]:.3f}" for k in keys))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"settings": vars(args), "rows": rows, "means": means}, handle, indent=2)


if __name__ == "__main__":
    main()
