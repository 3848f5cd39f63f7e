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
import torch.nn.functional as F
from scipy import ndimage

from convlens.errors import MetricError
from convlens.localize.masks import (
    check_maps,
    check_masks,
    connectivity_structure,
    threshold_maps,
)
from convlens.maps import upsample

BOX_MODES = ("largest", "all")
INTERPOLATIONS = ("bilinear", "nearest")


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
    `connectivity_structure`; the fast path for threshold sweeps): ``float64[k, 4]``."""
    labels, _ = ndimage.label(mask, structure=structure)
    return labelled_boxes(labels, mode)


def labelled_boxes(labels: np.ndarray, mode: str) -> np.ndarray:
    """Tight boxes ``float64[k, 4]`` of the components of a label image (0 = background,
    components 1..k in raster order), largest first (ties in raster order); only the largest
    with ``mode="largest"``."""
    count = int(labels.max())
    if count == 0:
        return np.zeros((0, 4))
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = [int(np.argmax(areas))] if mode == "largest" else np.argsort(-areas, kind="stable")
    objects = ndimage.find_objects(labels)
    slices = [objects[i] for i in order]
    return np.array(
        [[cols.start, rows.start, cols.stop, rows.stop] for rows, cols in slices],
        dtype=np.float64,
    )


def resize_maps(
    maps: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear"
) -> torch.Tensor:
    """``Tensor[N, h, w]`` to ``Tensor[N, H, W]``: ``"bilinear"`` (pixel centres aligned,
    ``align_corners=False``, as `convlens.attribution.upsample`) or ``"nearest"`` (each map
    cell becomes a block of equal pixels)."""
    if interpolation not in INTERPOLATIONS:
        raise MetricError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    size = (int(size[0]), int(size[1]))
    if interpolation == "bilinear":
        return upsample(maps, size)
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps[:, None], size=size, mode="nearest")[:, 0]


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
    return [torch.from_numpy(component_boxes(mask, mode, structure)).float() for mask in masks]


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
