"""Masks to boxes, and box IoU.

Box convention (everywhere in convlens): float ``(x0, y0, x1, y1)`` in pixels, ``x`` the
column and ``y`` the row, with ``x1``/``y1`` EXCLUSIVE. A component covering columns 3..5
and rows 2..2 has the box ``(3, 2, 6, 3)``: width ``x1 - x0 = 3``, height ``y1 - y0 = 1``,
area ``(x1 - x0) * (y1 - y0)``. A box inside an ``H x W`` image has
``0 <= x0 < x1 <= W`` and ``0 <= y0 < y1 <= H``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from convlens.errors import MetricError
from convlens.localize.masks import (
    check_maps,
    check_masks,
    connectivity_structure,
    threshold_maps,
)
from convlens.maps import resize_maps

BOX_MODES = ("largest", "all")


def check_boxes(
    boxes: torch.Tensor, image_size: tuple[int, int] | None = None, name: str = "boxes"
) -> torch.Tensor:
    """``boxes`` as a float ``Tensor[k, 4]`` (a single ``[4]`` box gains k = 1). Raises
    `MetricError` for NaN, ``x1 <= x0`` or ``y1 <= y0``, and, when ``image_size = (H, W)``
    is given, for boxes reaching outside ``[0, W] x [0, H]``."""
    if not isinstance(boxes, torch.Tensor):
        boxes = torch.as_tensor(boxes, dtype=torch.float32)
    boxes = boxes.detach().float()
    if boxes.dim() == 1 and boxes.numel() == 4:
        boxes = boxes[None]
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise MetricError(
            f"{name} must be a Tensor[k, 4] of (x0, y0, x1, y1), got {tuple(boxes.shape)}"
        )
    if not bool(torch.isfinite(boxes).all()):
        raise MetricError(f"{name} contain NaN or infinite coordinates")
    flat = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bool(flat.any()):
        bad = boxes[int(flat.nonzero()[0])].tolist()
        raise MetricError(
            f"{name} need x1 > x0 and y1 > y0 (x1, y1 exclusive), got {bad}; a box covering "
            "only column c has x0 = c, x1 = c + 1"
        )
    if image_size is not None:
        height, width = image_size
        outside = (boxes[:, :2] < 0).any(1) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
        if bool(outside.any()):
            bad = boxes[int(outside.nonzero()[0])].tolist()
            raise MetricError(
                f"{name} {bad} reaches outside the {height}x{width} image; boxes must lie "
                f"within 0 <= x <= {width}, 0 <= y <= {height} (x1, y1 exclusive)"
            )
    return boxes


def check_box_mode(mode: str) -> str:
    if mode not in BOX_MODES:
        raise MetricError(f"mode must be one of {BOX_MODES}, got {mode!r}")
    return mode


def mask_to_boxes(mask: torch.Tensor, mode: str = "largest", connectivity: int = 8) -> torch.Tensor:
    """Boxes ``Tensor[k, 4]`` of the connected components of a bool ``Tensor[H, W]``.

    ``mode="largest"``: the box of the component with the most pixels (ties: the first in
    raster order), k = 1, or k = 0 for an empty mask. ``mode="all"``: one box per component,
    largest first (ties in raster order). Coordinates ``(x0, y0, x1, y1)``, x1/y1 exclusive.
    ``connectivity``: 4 or 8.
    """
    check_box_mode(mode)
    structure = connectivity_structure(connectivity)
    return torch.from_numpy(
        component_boxes(_one_mask(mask, "mask_to_boxes"), mode, structure)
    ).float()


def _one_mask(mask: torch.Tensor, what: str, allow_empty: bool = True) -> np.ndarray:
    """One mask (`check_masks`: bool or 0/1 ``[H, W]`` or ``[1, H, W]``) as numpy bool
    ``[H, W]``; `MetricError` for a stack of several."""
    masks = check_masks(mask, "mask", allow_empty=allow_empty)
    if len(masks) != 1:
        raise MetricError(f"{what} takes one mask [H, W], got {tuple(mask.shape)}")
    return masks[0].cpu().numpy()


def component_boxes(mask: np.ndarray, mode: str, structure: np.ndarray) -> np.ndarray:
    """`mask_to_boxes` on a numpy bool ``[H, W]`` mask with a scipy ``structure`` (from
    `connectivity_structure`): ``float64[k, 4]``, largest first (ties in raster order)."""
    boxes, areas, _ = stacked_component_boxes(mask[None], structure)
    return ordered_boxes(boxes, areas, mode)


def ordered_boxes(boxes: np.ndarray, areas: np.ndarray, mode: str) -> np.ndarray:
    """The boxes ``float64[k, 4]`` of one mask's components (in label order, as
    `stacked_component_boxes` gives them), largest first (ties in label order, i.e. raster
    order); only the largest with ``mode="largest"``."""
    if len(boxes) == 0:
        return boxes
    order = [int(np.argmax(areas))] if mode == "largest" else np.argsort(-areas, kind="stable")
    return boxes[order]


def stacked_component_boxes(
    masks: np.ndarray, structure: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every connected component of every mask of a stack, labelled in one scipy call.

    ``masks``: numpy bool ``[S, H, W]``; ``structure``: the 2-D scipy element of
    `connectivity_structure` (components never cross from one mask to the next). Returns
    ``(boxes, areas, mask_index)``: tight boxes ``float64[K, 4]`` (x1/y1 exclusive), pixel
    counts ``int64[K]`` and the mask each component belongs to ``intp[K]``, in label order:
    by mask, then by the raster order of each component's first pixel (the numbering of
    `scipy.ndimage.label` on one mask).

    The boxes come from the runs of each image row (adjacent pixels of a row are in one
    component), so the reductions run over runs rather than pixels.
    """
    masks = np.asarray(masks, dtype=bool)
    count_masks, height, width = masks.shape
    labels, count = ndimage.label(masks, structure=_planar(structure))
    if count == 0:
        return np.zeros((0, 4)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.intp)
    rows = masks.reshape(count_masks * height, width)
    starts, ends = rows.copy(), rows.copy()
    starts[:, 1:] &= ~rows[:, :-1]
    ends[:, :-1] &= ~rows[:, 1:]
    start_at, end_at = np.flatnonzero(starts), np.flatnonzero(ends)  # the same runs, in order
    run_row = start_at // width
    first_col, last_col = start_at - run_row * width, end_at - run_row * width
    run_label = labels.ravel()[start_at] - 1
    mask_of_run = run_row // height
    row_of_run = run_row - mask_of_run * height
    boxes = np.empty((count, 4), dtype=np.int64)
    boxes[:, :2] = (width, height)
    boxes[:, 2:] = 0
    np.minimum.at(boxes[:, 0], run_label, first_col)
    np.minimum.at(boxes[:, 1], run_label, row_of_run)
    np.maximum.at(boxes[:, 2], run_label, last_col + 1)
    np.maximum.at(boxes[:, 3], run_label, row_of_run + 1)
    areas = np.bincount(run_label, weights=last_col + 1 - first_col, minlength=count)
    mask_index = np.empty(count, dtype=np.intp)
    mask_index[run_label] = mask_of_run  # every run of a component lies in one mask
    return boxes.astype(np.float64), areas.astype(np.int64), mask_index


def largest_per_mask(areas: np.ndarray, mask_index: np.ndarray) -> np.ndarray:
    """Indices into the components of `stacked_component_boxes` of each mask's largest
    component (ties: the first in label order, as `ordered_boxes`), one per non-empty mask,
    in mask order."""
    most = np.zeros(int(mask_index.max()) + 1 if len(mask_index) else 0, dtype=areas.dtype)
    np.maximum.at(most, mask_index, areas)
    candidates = np.flatnonzero(areas == most[mask_index])
    owners = mask_index[candidates]
    first = np.ones(len(candidates), dtype=bool)
    first[1:] = owners[1:] != owners[:-1]  # components are grouped by mask, in label order
    return candidates[first]


def _planar(structure: np.ndarray) -> np.ndarray:
    """The 3-D scipy element that connects like ``structure`` within each ``[H, W]`` plane
    of a stack and never across planes."""
    planar = np.zeros((3, *structure.shape), dtype=bool)
    planar[1] = structure
    return planar


def maps_to_boxes(
    maps: torch.Tensor,
    fraction: float = 0.2,
    mode: str = "largest",
    upsample_to: tuple[int, int] | None = None,
    interpolation: str = "bilinear",
    connectivity: int = 8,
) -> list[torch.Tensor]:
    """Boxes from maps, as in CAM (Zhou et al. 2016): threshold each map at ``fraction``
    of its range (see `threshold_maps`), label connected components, box them.

    Args:
        maps: finite ``Tensor[N, h, w]`` (or one ``[h, w]`` map).
        fraction: threshold in (0, 1]; the CAM paper uses 0.2.
        mode: ``"largest"`` (one box per map, from the largest component) or ``"all"``
            (one box per component, largest first).
        upsample_to: ``(H, W)`` to resize the maps to before thresholding (boxes are then
            in those pixels); ``None`` keeps the maps' own size.
        interpolation: ``"bilinear"`` or ``"nearest"``, used only with ``upsample_to``.

    Returns one float ``Tensor[k, 4]`` of ``(x0, y0, x1, y1)`` per map, x1/y1 EXCLUSIVE;
    ``k = 0`` when the mask is empty (a constant map).
    """
    maps = check_maps(maps)
    structure = connectivity_structure(connectivity)
    check_box_mode(mode)
    if upsample_to is not None:
        maps = resize_maps(maps, upsample_to, interpolation)
    masks = threshold_maps(maps, fraction).cpu().numpy()
    boxes, areas, owner = stacked_component_boxes(masks, structure)
    bounds = np.searchsorted(owner, np.arange(len(masks) + 1))
    return [
        torch.from_numpy(ordered_boxes(boxes[a:b], areas[a:b], mode)).float()
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """``(x1 - x0) * (y1 - y0)`` of ``Tensor[k, 4]`` boxes (x1, y1 exclusive): ``Tensor[k]``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise intersection over union ``Tensor[N, M]`` in [0, 1] of boxes ``a``
    (``Tensor[N, 4]``) and ``b`` (``Tensor[M, 4]``), ``(x0, y0, x1, y1)`` with x1/y1
    exclusive: ``IoU = |A & B| / (|A| + |B| - |A & B|)``."""
    return iou_matrix(check_boxes(a, name="boxes a"), check_boxes(b, name="boxes b"))


def iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`box_iou` without its input checks, for boxes already validated (any float dtype,
    e.g. float64 in the MaxBoxAcc sweep): ``Tensor[N, M]``."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = (bottom_right - top_left).clamp(min=0)
    intersection = overlap[..., 0] * overlap[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - intersection
    return intersection / union


def as_box_list(boxes: torch.Tensor | Sequence[torch.Tensor], count: int, name: str) -> list:
    """Per-image boxes as a list of ``Tensor[k, 4]``: from a ``Tensor[N, 4]`` (one box per
    image) or a sequence of ``N`` tensors (several per image allowed)."""
    if isinstance(boxes, torch.Tensor) and boxes.dim() == 2:
        boxes = list(boxes[:, None, :])
    if isinstance(boxes, torch.Tensor) or len(boxes) != count:
        got = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else len(boxes)
        raise MetricError(
            f"{name}: expected {count} entries (one Tensor[k, 4] per image, or a "
            f"Tensor[{count}, 4]), got {got}"
        )
    return list(boxes)
