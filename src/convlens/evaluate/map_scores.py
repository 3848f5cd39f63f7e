"""Scores of one set of maps against ground truth: the columns of the box benchmarks
(``shapes``, ``shapes-multi``), the same for a method's maps and for a model-free floor.

Each row of a `GroundTruth` is one explained (image, class) pair: on the multi-object set an
image with K present classes gives K rows, each scored against that class's box and mask
only, so a class-agnostic map can be right for at most one of them.
"""

from __future__ import annotations

import hashlib

import torch

from convlens.evaluate.ground_truth import GroundTruth
from convlens.maps import auc

MASK_THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(1, 10))
# Input pixels per forward pass of the curves (64 images of 64x64): larger batches of
# activations exceed the allocator's reuse limit (32 MB) and come from fresh pages every
# pass; at 128 images of 64x64 the page faults took 40% of the curves' CPU time.
CURVE_PIXELS = 1 << 18


def class_mean(hits: torch.Tensor, classes: torch.Tensor) -> float:
    """Mean over the classes present in ``classes`` (``Tensor[N]``) of the hit rate of
    ``hits`` (bool ``Tensor[N]``) within each class: every class weighs the same, however
    many rows it has (Zhang et al.'s pointing-game average)."""
    rates = [hits[classes == c].float().mean() for c in torch.unique(classes)]
    return float(torch.stack(rates).mean())


def best_mask_iou(maps: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean mask IoU at the threshold (of `MASK_THRESHOLDS`) best over the data set."""
    from convlens.localize.masks import mask_iou_sweep

    return max(float(ious.mean()) for ious in mask_iou_sweep(maps, masks, MASK_THRESHOLDS))


def score_maps(
    model,
    truth: GroundTruth,
    maps: torch.Tensor,
    predicted: torch.Tensor,
    *,
    tolerance: float,
    curve_steps: int | None,
    batch_size: int,
    seed: int = 0,
    faithfulness: bool = True,
    curve_cache: dict | None = None,
) -> tuple[dict, dict]:
    """Localisation and faithfulness scores of ``maps`` ``Tensor[N, H, W]`` (one per row of
    ``truth``, input resolution), and the mean deletion/insertion curves.

    ``predicted``: ``Tensor[N]`` the class the model decided for each row (-1 when it missed
    the row's class; see `GroundTruth.multilabel`). Returns ``(scores, curves)`` with scores
    ``maxboxacc_v2``, ``maxboxacc``, ``loc_acc``, ``pointing``, ``mask_iou``,
    ``deletion_auc``, ``insertion_auc``; curves ``{"deletion": Tensor[S+1], "insertion"}``.
    With ``faithfulness=False`` no curve is run: ``deletion_auc`` and ``insertion_auc`` are
    None, curves ``{}``, and every other score is the same. ``curve_cache``: a dict shared
    by the maps scored on one ``truth`` with the same settings (one leaderboard run): maps
    that order every row's pixels exactly as earlier maps did (CAM and Grad-CAM on a GAP
    model, say) reuse those curves instead of running the same inputs again.
    """
    from convlens.localize import localization_hits, maps_to_boxes, pointing_game
    from convlens.localize.metrics import max_box_acc_v1_v2

    size = tuple(truth.tensor.shape[-2:])
    boxes = maps_to_boxes(maps, fraction=0.2)
    loc = localization_hits(boxes, predicted, truth.boxes, truth.labels, iou=0.5, image_size=size)
    hits = pointing_game(maps, truth.point_masks, tolerance)
    box_acc = max_box_acc_v1_v2(maps, truth.boxes, image_size=size)
    scores = {
        "maxboxacc_v2": box_acc[2]["maxboxacc"],
        "maxboxacc": box_acc[1]["maxboxacc"],
        "loc_acc": float(loc.float().mean()),
        "pointing": class_mean(hits, truth.labels),
        "mask_iou": best_mask_iou(maps, truth.masks) if truth.masks is not None else None,
        "deletion_auc": None,
        "insertion_auc": None,
    }
    if not faithfulness:
        return scores, {}
    curves = faithfulness_curves(model, truth, maps, curve_steps, batch_size, seed, curve_cache)
    scores |= {f"{kind}_auc": float(auc(curve).mean()) for kind, curve in curves.items()}
    return scores, {kind: curve.mean(0) for kind, curve in curves.items()}


def faithfulness_curves(
    model,
    truth: GroundTruth,
    maps: torch.Tensor,
    steps: int | None,
    batch_size: int,
    seed: int,
    cache: dict | None = None,
) -> dict[str, torch.Tensor]:
    """``{"deletion": Tensor[N, S+1], "insertion": Tensor[N, S+1]}``: each row's curves of
    the target's probability (sigmoid on a multi-label set), ties in the order of ``seed``.
    The curves depend on the maps only through `pixel_ranks`: with a ``cache`` (see
    `score_maps`), maps whose ranks equal earlier ones' get those curves."""
    from convlens.evaluate.faithfulness import deletion_curve, insertion_curve, pixel_ranks

    key = None
    if cache is not None:  # keyed by a 128-bit digest of every row's pixel order
        ranks = pixel_ranks(maps.float().cpu(), seed).numpy()
        key = hashlib.blake2b(ranks.tobytes(), digest_size=16).digest()
        if key in cache:
            return cache[key]
    score = "sigmoid" if truth.multilabel else "probability"
    chunk = curve_chunk(batch_size, *truth.tensor.shape[-2:])
    args = dict(steps=steps, batch_size=chunk, score=score, seed=seed)
    curves = {
        "deletion": deletion_curve(model, truth.tensor, maps, truth.labels, **args),
        "insertion": insertion_curve(model, truth.tensor, maps, truth.labels, **args),
    }
    if key is not None:
        cache[key] = curves
    return curves


def curve_chunk(batch_size: int, height: int, width: int) -> int:
    """Perturbed images per forward pass of the curves: ``4 * batch_size``, but no more than
    `CURVE_PIXELS` input pixels (in multiples of 8 images, at least 8). The scores do not
    depend on it (bit for bit on the shapes models and EfficientNet-Lite0, measured)."""
    budget = max(8, CURVE_PIXELS // (height * width) // 8 * 8)
    return min(4 * batch_size, budget)


def margins(scores: dict[str, dict], key: str) -> dict[str, float | None]:
    """Each method's ``key`` minus the best floor's (`convlens.evaluate.floors`): positive
    when the method beats every model-free map. None for floors and missing values."""
    from convlens.evaluate.floors import best_floor, is_floor

    best = best_floor(scores, key)
    return {
        name: None
        if best is None or is_floor(name) or values.get(key) is None
        else values[key] - best[1]
        for name, values in scores.items()
    }
