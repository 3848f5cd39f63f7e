"""Localisation metrics: localisation accuracy, MaxBoxAcc (V1, V2), the pointing game.

Boxes are ``(x0, y0, x1, y1)`` with x1/y1 exclusive (see `convlens.localize.boxes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from convlens.errors import MetricError
from convlens.localize.boxes import (
    as_box_list,
    box_iou,
    check_boxes,
    component_boxes,
)
from convlens.localize.masks import (
    check_image_size,
    check_maps,
    check_masks,
    check_same_size,
    connectivity_structure,
    constant_maps,
)
from convlens.maps import normalize_maps

DEFAULT_THRESHOLDS = torch.arange(1, 100, dtype=torch.float64).float() / 100
# Choe et al.'s V2 sweep starts at 0 (the whole image is one box there).
DEFAULT_THRESHOLDS_V2 = torch.arange(0, 100, dtype=torch.float64).float() / 100


def best_box_iou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Highest IoU between any predicted box and any ground-truth box (0 when ``pred`` is
    empty): the match used when an image has several objects or several candidate boxes."""
    if len(pred) == 0:
        return 0.0
    return float(box_iou(pred, gt).max())


def localization_hits(
    pred_boxes: torch.Tensor | Sequence[torch.Tensor],
    pred_classes: torch.Tensor,
    gt_boxes: torch.Tensor | Sequence[torch.Tensor],
    gt_classes: torch.Tensor,
    iou: float = 0.5,
    *,
    image_size: tuple[int, int],
) -> torch.Tensor:
    """Per image, ``Tensor[N]`` bool: the predicted class equals the true class AND a
    predicted box overlaps a ground-truth box with IoU ``>= iou`` (the top-1 localisation
    criterion of the ILSVRC and CAM papers).

    ``pred_boxes``/``gt_boxes``: a ``Tensor[N, 4]`` or a list of ``N`` ``Tensor[k, 4]``
    (several ground-truth objects, or several candidate boxes, allowed; an image without a
    predicted box is a miss), in pixels of the ``image_size = (H, W)`` image: every box must
    lie inside it (`MetricError` otherwise). ``pred_classes``/``gt_classes``: ``Tensor[N]``
    class ids.
    """
    pred_classes = torch.as_tensor(pred_classes).reshape(-1)
    gt_classes = torch.as_tensor(gt_classes).reshape(-1)
    count = len(gt_classes)
    if len(pred_classes) != count:
        raise MetricError(f"got {len(pred_classes)} predicted classes for {count} images")
    preds = as_box_list(pred_boxes, count, "pred_boxes")
    gts = as_box_list(gt_boxes, count, "gt_boxes")
    hits = torch.zeros(count, dtype=torch.bool)
    for index, (pred, gt) in enumerate(zip(preds, gts, strict=True)):
        gt = check_boxes(gt, image_size, name=f"ground-truth boxes of image {index}")
        if len(gt) == 0:
            raise MetricError(f"image {index} has no ground-truth box")
        if len(pred):
            pred = check_boxes(pred, image_size, name=f"predicted boxes of image {index}")
        same_class = int(pred_classes[index]) == int(gt_classes[index])
        hits[index] = same_class and best_box_iou(pred, gt) >= iou
    return hits


def localization_accuracy(
    pred_boxes: torch.Tensor | Sequence[torch.Tensor],
    pred_classes: torch.Tensor,
    gt_boxes: torch.Tensor | Sequence[torch.Tensor],
    gt_classes: torch.Tensor,
    iou: float = 0.5,
    *,
    image_size: tuple[int, int],
) -> float:
    """Fraction of images (in [0, 1]) that `localization_hits`: right class and box IoU
    ``>= iou`` (default 0.5), boxes in pixels of the ``image_size = (H, W)`` image. Top-1
    localisation error is ``1 -`` this."""
    hits = localization_hits(
        pred_boxes, pred_classes, gt_boxes, gt_classes, iou, image_size=image_size
    )
    return float(hits.float().mean())


def max_box_acc(
    maps: torch.Tensor,
    gt_boxes: torch.Tensor | Sequence[torch.Tensor],
    thresholds: Sequence[float] | torch.Tensor | None = None,
    iou_thresholds: Sequence[float] | None = None,
    version: int = 1,
    connectivity: int = 8,
    *,
    image_size: tuple[int, int],
) -> dict:
    """MaxBoxAcc (Choe et al. 2020, "Evaluating Weakly Supervised Object Localization
    Methods Right"): box accuracy at the best map threshold.

    For a threshold ``tau`` and IoU threshold ``delta``,
    ``BoxAcc(tau, delta) = 1/N sum_n [ max_{b in B_n(tau), g in G_n} IoU(b, g) >= delta ]``
    where ``B_n(tau)`` are the boxes of map ``n`` thresholded at ``tau`` (min-max normalised,
    ``>= tau``; see `threshold_maps`) and ``G_n`` its ground-truth boxes.
    ``MaxBoxAcc(delta) = max_tau BoxAcc(tau, delta)``. At ``tau = 0`` every pixel is kept:
    one box, the whole image.

    - ``version=1``: ``B_n`` is the largest component's box; ``delta = 0.5`` by default;
      the result is ``MaxBoxAcc(0.5)``.
    - ``version=2``: ``B_n`` holds every component's box; ``delta`` in (0.3, 0.5, 0.7) by
      default; the result is the mean of ``MaxBoxAcc(delta)`` over the deltas, each delta
      taking its own best threshold; the default sweep is 0, 0.01, ..., 0.99 (it includes
      0, as Choe et al.'s).

    Args:
        maps: finite ``Tensor[N, H, W]`` at image resolution.
        gt_boxes: ``Tensor[N, 4]`` or a list of ``N`` ``Tensor[k, 4]`` (several objects), in
            pixels of the image, each inside it.
        thresholds: the sweep of ``tau`` in [0, 1]; default 0.01, 0.02, ..., 0.99 for V1 and
            0, 0.01, ..., 0.99 for V2.
        connectivity: 4 or 8 (components of the thresholded maps).
        image_size: ``(H, W)`` of the images the boxes refer to; the maps must have exactly
            this size (a map at feature resolution raises `MetricError`: upsample it first).

    Returns a dict: ``maxboxacc`` (float in [0, 1]), ``per_iou`` ({delta: MaxBoxAcc}),
    ``best_threshold`` ({delta: tau}), ``box_acc`` (``Tensor[T, D]``: BoxAcc per tau and
    delta), ``thresholds`` (``Tensor[T]``), ``best_iou`` (``Tensor[N, T]``: per image and
    tau, the IoU of its best box), ``version``.
    """
    if version not in (1, 2):
        raise MetricError(f"version must be 1 or 2, got {version}")
    maps = check_maps(maps)
    size = check_image_size(maps, image_size)
    structure = connectivity_structure(connectivity)
    deltas = tuple(iou_thresholds or ((0.5,) if version == 1 else (0.3, 0.5, 0.7)))
    default = DEFAULT_THRESHOLDS if version == 1 else DEFAULT_THRESHOLDS_V2
    taus = default if thresholds is None else torch.as_tensor(thresholds).float()
    if taus.dim() != 1 or len(taus) == 0 or bool(((taus < 0) | (taus > 1)).any()):
        raise MetricError("thresholds must be a non-empty 1-D sequence of values in [0, 1]")
    gts = [
        check_boxes(g, image_size=size, name=f"ground-truth boxes of image {n}")
        for n, g in enumerate(as_box_list(gt_boxes, len(maps), "gt_boxes"))
    ]
    if any(len(g) == 0 for g in gts):
        raise MetricError("every image needs at least one ground-truth box")
    mode = "largest" if version == 1 else "all"
    best_iou = threshold_sweep_iou(maps, gts, taus, mode, structure)
    # A tiny slack so an IoU that is exactly delta in real arithmetic counts as a hit.
    hits = best_iou[:, :, None] >= torch.tensor(deltas)[None, None, :] - 1e-6
    box_acc = hits.float().mean(dim=0)
    best = box_acc.max(dim=0)
    per_iou = {d: float(best.values[i]) for i, d in enumerate(deltas)}
    return {
        "maxboxacc": float(best.values.mean()),
        "per_iou": per_iou,
        "best_threshold": {d: float(taus[best.indices[i]]) for i, d in enumerate(deltas)},
        "box_acc": box_acc,
        "thresholds": taus,
        "best_iou": best_iou,
        "version": version,
    }


def threshold_sweep_iou(
    maps: torch.Tensor,
    gts: list[torch.Tensor],
    taus: torch.Tensor,
    mode: str,
    structure: np.ndarray,
) -> torch.Tensor:
    """``Tensor[N, T]``: per map and threshold, the best IoU between the boxes of the
    thresholded map (`component_boxes` with the scipy ``structure`` of
    `connectivity_structure`) and the map's ground-truth boxes (validated); 0 for a constant
    map or an empty mask. One labelling per map and threshold, in numpy."""
    normalized = normalize_maps(maps).cpu().numpy()
    constant = constant_maps(maps).tolist()
    best_iou = np.zeros((len(maps), len(taus)))
    for n in range(len(maps)):
        if constant[n]:
            continue
        gt = gts[n].cpu().double().numpy()
        for t, tau in enumerate(taus.tolist()):
            boxes = component_boxes(normalized[n] >= tau, mode, structure)
            if len(boxes):
                best_iou[n, t] = _max_iou(boxes, gt)
    return torch.from_numpy(best_iou).float()


def _max_iou(boxes: np.ndarray, gt: np.ndarray) -> float:
    """Highest IoU between any row of ``boxes`` ``float64[k, 4]`` and of ``gt`` ``[m, 4]``
    (the arithmetic of `iou_matrix`, in numpy: the sweep's inner loop)."""
    top_left = np.maximum(boxes[:, None, :2], gt[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], gt[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None)
    intersection = overlap[..., 0] * overlap[..., 1]
    area_a = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_b = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    return float((intersection / (area_a[:, None] + area_b[None, :] - intersection)).max())


def pointing_points(maps: torch.Tensor) -> torch.Tensor:
    """The pixel each map points at, ``Tensor[N, 2]`` as (row, column): its maximum. When
    several pixels share the maximum, the one nearest the centroid of those pixels (then the
    first in raster order), so a plateau points at its middle and a constant map at the
    image centre (Zhang et al.'s centre baseline)."""
    maps = check_maps(maps)
    points = torch.zeros(len(maps), 2, dtype=torch.long)
    for n, single in enumerate(maps):
        rows, cols = torch.nonzero(single == single.max(), as_tuple=True)
        if len(rows) > 1:
            centre_r, centre_c = rows.float().mean(), cols.float().mean()
            distance = (rows.float() - centre_r) ** 2 + (cols.float() - centre_c) ** 2
            pick = int(torch.argmin(distance))
            rows, cols = rows[pick : pick + 1], cols[pick : pick + 1]
        points[n] = torch.stack([rows[0], cols[0]])
    return points


def pointing_game(
    maps: torch.Tensor, gt_masks: torch.Tensor, tolerance: float = 15
) -> torch.Tensor:
    """Pointing game (Zhang et al. 2016, "Top-down Neural Attention by Excitation
    Backprop"): per image, ``Tensor[N]`` bool, a hit when the map's maximum (see
    `pointing_points`) lies within ``tolerance`` pixels (Euclidean distance between pixel
    centres) of a pixel of the object mask: ``min_{p in G} ||argmax(M) - p||_2 <= tolerance``.
    Zhang et al. use 15 pixels; ``tolerance=0`` requires the maximum inside the mask.

    ``maps``: finite ``Tensor[N, H, W]``; ``gt_masks``: bool ``Tensor[N, H, W]`` of the
    same size, none empty. Hit rate = ``hits.float().mean()``.
    """
    if tolerance < 0:
        raise MetricError(f"tolerance must be >= 0 pixels, got {tolerance}")
    maps = check_maps(maps)
    masks = check_masks(gt_masks, "ground-truth masks", allow_empty=False)
    check_same_size(maps, masks, "maps", "ground-truth masks")
    points = pointing_points(maps)
    hits = torch.zeros(len(maps), dtype=torch.bool)
    for n, mask in enumerate(masks.cpu().numpy()):
        distance = ndimage.distance_transform_edt(~mask)
        row, col = points[n].tolist()
        hits[n] = bool(distance[row, col] <= tolerance + 1e-9)
    return hits


__all__ = [
    "best_box_iou",
    "localization_accuracy",
    "localization_hits",
    "max_box_acc",
    "pointing_game",
    "pointing_points",
    "threshold_sweep_iou",
]
