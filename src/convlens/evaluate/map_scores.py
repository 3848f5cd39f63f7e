"""Scores of one set of maps against ground truth: the columns of the box benchmarks
(``shapes``, ``shapes-multi``), the same for a method's maps and for a model-free floor.

Each row of a `GroundTruth` is one explained (image, class) pair: on the multi-object set an
image with K present classes gives K rows, each scored against that class's box and mask
only, so a class-agnostic map can be right for at most one of them.
"""

from __future__ import annotations

import torch

from convlens.evaluate.ground_truth import GroundTruth

MASK_THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(1, 10))


def class_mean(hits: torch.Tensor, classes: torch.Tensor) -> float:
    """Mean over the classes present in ``classes`` (``Tensor[N]``) of the hit rate of
    ``hits`` (bool ``Tensor[N]``) within each class: every class weighs the same, however
    many rows it has (Zhang et al.'s pointing-game average)."""
    rates = [hits[classes == c].float().mean() for c in torch.unique(classes)]
    return float(torch.stack(rates).mean())


def best_mask_iou(maps: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean mask IoU at the threshold (of `MASK_THRESHOLDS`) best over the data set."""
    from convlens.localize import mask_iou, threshold_maps

    return max(float(mask_iou(threshold_maps(maps, tau), masks).mean()) for tau in MASK_THRESHOLDS)


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
) -> tuple[dict, dict]:
    """Localisation and faithfulness scores of ``maps`` ``Tensor[N, H, W]`` (one per row of
    ``truth``, input resolution), and the mean deletion/insertion curves.

    ``predicted``: ``Tensor[N]`` the class the model decided for each row (-1 when it missed
    the row's class; see `GroundTruth.multilabel`). Returns ``(scores, curves)`` with scores
    ``maxboxacc_v2``, ``maxboxacc``, ``loc_acc``, ``pointing``, ``mask_iou``,
    ``deletion_auc``, ``insertion_auc``; curves ``{"deletion": Tensor[S+1], "insertion"}``.
    """
    from convlens.evaluate.faithfulness import deletion_curve, insertion_curve
    from convlens.localize import localization_hits, maps_to_boxes, max_box_acc, pointing_game
    from convlens.maps import auc

    size = tuple(truth.tensor.shape[-2:])
    boxes = maps_to_boxes(maps, fraction=0.2)
    loc = localization_hits(boxes, predicted, truth.boxes, truth.labels, iou=0.5, image_size=size)
    score = "sigmoid" if truth.multilabel else "probability"
    curve_args = dict(steps=curve_steps, batch_size=4 * batch_size, score=score, seed=seed)
    deletion = deletion_curve(model, truth.tensor, maps, truth.labels, **curve_args)
    insertion = insertion_curve(model, truth.tensor, maps, truth.labels, **curve_args)
    hits = pointing_game(maps, truth.point_masks, tolerance)
    scores = {
        "maxboxacc_v2": max_box_acc(maps, truth.boxes, version=2, image_size=size)["maxboxacc"],
        "maxboxacc": max_box_acc(maps, truth.boxes, image_size=size)["maxboxacc"],
        "loc_acc": float(loc.float().mean()),
        "pointing": class_mean(hits, truth.labels),
        "mask_iou": best_mask_iou(maps, truth.masks) if truth.masks is not None else None,
        "deletion_auc": float(auc(deletion).mean()),
        "insertion_auc": float(auc(insertion).mean()),
    }
    return scores, {"deletion": deletion.mean(0), "insertion": insertion.mean(0)}


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
