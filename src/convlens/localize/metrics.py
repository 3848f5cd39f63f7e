"""Localisation metrics: localisation accuracy, MaxBoxAcc (V1, V2), the pointing game.

Boxes are ``(x0, y0, x1, y1)`` with x1/y1 exclusive (see `convlens.localize.boxes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from convlens.errors import MetricError
from convlens.localize.boxes import (
    as_box_list,
    box_iou,
    check_boxes,
    largest_per_mask,
    stacked_component_boxes,
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
# Mask pixels labelled per scipy call in the threshold sweep (several maps x every threshold).
SWEEP_PIXELS = 1 << 21


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
    maps, gts, structure = _sweep_inputs(maps, gt_boxes, image_size, connectivity)
    deltas = tuple(iou_thresholds or ((0.5,) if version == 1 else (0.3, 0.5, 0.7)))
    default = DEFAULT_THRESHOLDS if version == 1 else DEFAULT_THRESHOLDS_V2
    taus = default if thresholds is None else torch.as_tensor(thresholds).float()
    if taus.dim() != 1 or len(taus) == 0 or bool(((taus < 0) | (taus > 1)).any()):
        raise MetricError("thresholds must be a non-empty 1-D sequence of values in [0, 1]")
    mode = "largest" if version == 1 else "all"
    best_iou = threshold_sweep_iou(maps, gts, taus, (mode,), structure)[mode]
    return _box_accuracy(best_iou, taus, deltas, version)


def max_box_acc_v1_v2(
    maps: torch.Tensor,
    gt_boxes: torch.Tensor | Sequence[torch.Tensor],
    connectivity: int = 8,
    *,
    image_size: tuple[int, int],
) -> dict[int, dict]:
    """``{1: max_box_acc(..., version=1), 2: max_box_acc(..., version=2)}`` with the default
    thresholds and IoU thresholds, from one labelling of each map and threshold (V1's
    sweep 0.01..0.99 is V2's without 0): the same numbers in about half the time."""
    maps, gts, structure = _sweep_inputs(maps, gt_boxes, image_size, connectivity)
    sweep = threshold_sweep_iou(maps, gts, DEFAULT_THRESHOLDS_V2, ("largest", "all"), structure)
    largest = sweep["largest"][:, 1:].contiguous()
    return {
        1: _box_accuracy(largest, DEFAULT_THRESHOLDS, (0.5,), 1),
        2: _box_accuracy(sweep["all"], DEFAULT_THRESHOLDS_V2, (0.3, 0.5, 0.7), 2),
    }


def _sweep_inputs(maps, gt_boxes, image_size, connectivity):
    """Checked ``(maps Tensor[N, H, W], ground-truth boxes per map, scipy structure)``."""
    maps = check_maps(maps)
    size = check_image_size(maps, image_size)
    structure = connectivity_structure(connectivity)
    gts = [
        check_boxes(g, image_size=size, name=f"ground-truth boxes of image {n}")
        for n, g in enumerate(as_box_list(gt_boxes, len(maps), "gt_boxes"))
    ]
    if any(len(g) == 0 for g in gts):
        raise MetricError("every image needs at least one ground-truth box")
    return maps, gts, structure


def _box_accuracy(best_iou: torch.Tensor, taus: torch.Tensor, deltas: tuple, version: int):
    """The result dict of `max_box_acc` from the best IoU per map and threshold."""
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
    modes: Sequence[str],
    structure: np.ndarray,
) -> dict[str, torch.Tensor]:
    """Per mode of ``modes`` (``"largest"``, ``"all"``), ``Tensor[N, T]``: per map and
    threshold, the best IoU between the boxes of the thresholded map (its largest
    component's, or every component's; see `mask_to_boxes`) and the map's ground-truth
    boxes (validated ``Tensor[k, 4]``); 0 for a constant map or an empty mask.

    The masks of several maps at every threshold are labelled in one scipy call
    (`stacked_component_boxes` with the ``structure`` of `connectivity_structure`), about
    `SWEEP_PIXELS` mask pixels at a time."""
    normalized = normalize_maps(maps).cpu().numpy()
    levels = taus.cpu().numpy().astype(np.float32)
    varying = np.flatnonzero(~constant_maps(maps).cpu().numpy())
    ground = _padded_boxes(gts)
    best = {mode: np.zeros((len(maps), len(taus))) for mode in modes}
    per_call = max(1, SWEEP_PIXELS // (len(levels) * normalized[0].size))
    for start in range(0, len(varying), per_call):
        chunk = varying[start : start + per_call]
        masks = normalized[chunk][:, None] >= levels[None, :, None, None]
        boxes, areas, which = stacked_component_boxes(
            masks.reshape(-1, *normalized.shape[1:]), structure
        )
        owner, tau_index = chunk[which // len(levels)], which % len(levels)
        ious = _best_ious(boxes, ground[owner])
        for mode in modes:
            pick = largest_per_mask(areas, which) if mode == "largest" else slice(None)
            np.maximum.at(best[mode], (owner[pick], tau_index[pick]), ious[pick])
    return {mode: torch.from_numpy(values).float() for mode, values in best.items()}


def _padded_boxes(gts: list[torch.Tensor]) -> np.ndarray:
    """``float64[N, M, 4]``: each map's ground-truth boxes, padded with the empty box
    ``(0, 0, 0, 0)`` (IoU 0 with any box) to the largest count ``M``."""
    padded = np.zeros((len(gts), max(len(g) for g in gts), 4))
    for n, gt in enumerate(gts):
        padded[n, : len(gt)] = gt.cpu().double().numpy()
    return padded


def _best_ious(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``float64[K]``: for each box ``boxes[k]`` (``float64[K, 4]``), its highest IoU with
    its own ground-truth boxes ``gt[k]`` (``float64[K, M, 4]``), by the arithmetic of
    `iou_matrix` in numpy."""
    top_left = np.maximum(boxes[:, None, :2], gt[:, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], gt[:, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None)
    intersection = overlap[..., 0] * overlap[..., 1]
    area_a = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_b = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    iou = intersection / (area_a[:, None] + area_b - intersection)
    return iou.max(axis=1) if len(boxes) else np.zeros(0)


def pointing_points(maps: torch.Tensor) -> torch.Tensor:
    """The pixel each map points at, ``Tensor[N, 2]`` as (row, column): its maximum. When
    several pixels share the maximum, the one nearest the centroid of those pixels (then the
    first in raster order), so a plateau points at its middle and a constant map at the
    image centre (Zhang et al.'s centre baseline)."""
    maps = check_maps(maps)
    flat = maps.flatten(1)
    top = flat.argmax(dim=1)
    width = maps.shape[-1]
    points = torch.stack([top // width, top % width], dim=1)
    shared = (flat == flat.gather(1, top[:, None])).sum(1, dtype=torch.int32) > 1
    for n in shared.nonzero()[:, 0].tolist():
        points[n] = _plateau_point(maps[n])
    return points


def _plateau_point(single: torch.Tensor) -> torch.Tensor:
    """``Tensor[2]``: of the pixels of ``Tensor[H, W]`` that share its maximum, the one
    nearest their centroid (then the first in raster order)."""
    rows, cols = torch.nonzero(single == single.max(), as_tuple=True)
    centre_r, centre_c = rows.float().mean(), cols.float().mean()
    distance = (rows.float() - centre_r) ** 2 + (cols.float() - centre_c) ** 2
    pick = int(torch.argmin(distance))
    return torch.stack([rows[pick], cols[pick]])


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
    points = pointing_points(maps).tolist()
    hits = torch.zeros(len(maps), dtype=torch.bool)
    for n, mask in enumerate(masks.cpu().numpy()):
        hits[n] = bool(_distance_to_mask(mask, *points[n]) <= tolerance + 1e-9)
    return hits


def _distance_to_mask(mask: np.ndarray, row: int, col: int) -> float:
    """Euclidean distance in pixels from ``(row, col)`` to the nearest pixel of the bool
    ``[H, W]`` mask (not empty): 0 inside it; the value ``distance_transform_edt(~mask)``
    has there, without transforming the whole image."""
    rows, cols = np.nonzero(mask)
    return float(np.sqrt(float(((rows - row) ** 2 + (cols - col) ** 2).min())))


__all__ = [
    "best_box_iou",
    "localization_accuracy",
    "localization_hits",
    "max_box_acc",
    "max_box_acc_v1_v2",
    "pointing_game",
    "pointing_points",
    "threshold_sweep_iou",
]
