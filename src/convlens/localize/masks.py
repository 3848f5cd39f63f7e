"""Maps to masks, connected components, and mask metrics (pixel accuracy, mask IoU).

Thresholding rule (used everywhere in `convlens.localize`): each map is first min-max
normalised to [0, 1] (`convlens.normalize_maps`: its minimum becomes 0, its maximum 1, a
constant map becomes all zeros), then pixels with value ``>= fraction`` are kept. For a map
whose minimum is 0 (a CAM after ReLU, ``|gradient|``) this is exactly "pixels at least
``fraction`` of the map's maximum" (Zhou et al. 2016 use ``fraction = 0.2``); for a signed
map it is a fraction of the way from its minimum to its maximum. A constant map (all zeros
included) gives an empty mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from convlens.errors import MetricError
from convlens.maps import normalize_maps


def check_maps(maps: torch.Tensor, name: str = "maps") -> torch.Tensor:
    """``maps`` as a float ``Tensor[N, H, W]`` (a single ``[H, W]`` map gains N = 1);
    raises `MetricError` for other shapes, NaN or infinite values."""
    if not isinstance(maps, torch.Tensor) or maps.dim() not in (2, 3):
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise MetricError(
            f"{name} must be a Tensor[N, H, W] (or one [H, W] map), got {shape}; "
            "pass the maps of an Explanation (explanation.maps)"
        )
    maps = maps.detach().float()
    if maps.dim() == 2:
        maps = maps[None]
    if maps.shape[-1] == 0 or maps.shape[-2] == 0:
        raise MetricError(f"{name} has an empty spatial size {tuple(maps.shape[-2:])}")
    if not bool(torch.isfinite(maps).all()):
        raise MetricError(
            f"{name} contains NaN or infinite values; check the method's output for these "
            "images (for example a division by a zero score)"
        )
    return maps


def check_masks(masks: torch.Tensor, name: str = "masks", allow_empty: bool = True) -> torch.Tensor:
    """``masks`` as a bool ``Tensor[N, H, W]`` (``[H, W]`` gains N = 1). Accepts bool or
    0/1 integer/float tensors. With ``allow_empty=False`` an all-False mask raises."""
    if not isinstance(masks, torch.Tensor) or masks.dim() not in (2, 3):
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise MetricError(f"{name} must be a bool Tensor[N, H, W] (or [H, W]), got {shape}")
    masks = masks.detach()
    if masks.dtype != torch.bool:
        if not bool(((masks == 0) | (masks == 1)).all()):
            raise MetricError(f"{name} must hold only 0/1 (or True/False) values")
        masks = masks != 0
    if masks.dim() == 2:
        masks = masks[None]
    if not allow_empty:
        empty = ~masks.flatten(1).any(dim=1)
        if bool(empty.any()):
            raise MetricError(
                f"{name} {int(empty.nonzero()[0])} is empty (no object pixel); every "
                "ground-truth mask must mark at least one pixel of the object"
            )
    return masks


def check_same_size(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    """Raise `MetricError` unless ``a`` and ``b`` have the same ``[N, H, W]`` shape."""
    if a.shape[-2:] != b.shape[-2:]:
        raise MetricError(
            f"{a_name} are {tuple(a.shape[-2:])} pixels but {b_name} are "
            f"{tuple(b.shape[-2:])}; resize the maps to the image size first "
            "(convlens.maps.resize_maps, or maps_to_boxes(..., upsample_to=))"
        )
    if a.shape[0] != b.shape[0]:
        raise MetricError(
            f"got {a.shape[0]} {a_name} but {b.shape[0]} {b_name}; pass one per image"
        )


def check_image_size(
    maps: torch.Tensor, image_size: tuple[int, int], what: str = "the ground-truth boxes"
) -> tuple[int, int]:
    """``image_size`` as ``(H, W)``; raises `MetricError` unless the maps ``Tensor[N, h, w]``
    are at that resolution (``h, w == H, W``). Boxes are in image pixels, so a map at feature
    resolution would be scored in the wrong coordinates."""
    size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) < 1:
        raise MetricError(f"image_size must be (H, W) in pixels, got {image_size!r}")
    if tuple(maps.shape[-2:]) != size:
        raise MetricError(
            f"maps are {tuple(maps.shape[-2:])} pixels but {what} refer to a "
            f"{size[0]}x{size[1]} image; resize the maps to the image size first "
            "(convlens.maps.resize_maps, or maps_to_boxes(..., upsample_to=))"
        )
    return size


def check_fraction(fraction: float) -> float:
    if not 0.0 < float(fraction) <= 1.0:
        raise MetricError(
            f"threshold fraction must be in (0, 1], got {fraction}; 0.2 is the CAM paper's value"
        )
    return float(fraction)


def threshold_maps(maps: torch.Tensor, fraction: float = 0.2) -> torch.Tensor:
    """Binary masks ``Tensor[N, H, W]`` (bool): pixels whose min-max normalised value is
    ``>= fraction`` (see the module docstring). ``maps``: finite ``Tensor[N, H, W]``;
    ``fraction`` in (0, 1]. A constant map (e.g. all zeros) gives an empty mask."""
    maps = check_maps(maps)
    fraction = check_fraction(fraction)
    return (normalize_maps(maps) >= fraction) & ~constant_maps(maps)[:, None, None]


def mask_iou_sweep(
    maps: torch.Tensor, masks: torch.Tensor, fractions: Sequence[float]
) -> torch.Tensor:
    """``Tensor[T, N]``: `mask_iou` of ``threshold_maps(maps, fraction)`` with ``masks``
    (bool ``Tensor[N, H, W]``, none empty) for each of the ``T`` ``fractions``, the maps
    checked and normalised once."""
    maps = check_maps(maps)
    gt = check_masks(masks, "ground-truth masks", allow_empty=False)
    check_same_size(maps, gt, "maps", "ground-truth masks")
    normalized = normalize_maps(maps).flatten(1)
    varying = ~constant_maps(maps)[:, None]
    gt = gt.flatten(1)
    rows = []
    for fraction in fractions:
        pred = (normalized >= check_fraction(fraction)) & varying
        # int32 counts (exact below 2**31 pixels): summing bools to int64 is far slower
        intersection = (pred & gt).sum(1, dtype=torch.int32).float()
        rows.append(intersection / (pred | gt).sum(1, dtype=torch.int32).float())
    return torch.stack(rows)


def constant_maps(maps: torch.Tensor) -> torch.Tensor:
    """``Tensor[N]`` bool: which maps of ``Tensor[N, H, W]`` have one value everywhere (all
    zeros included). Such a map points nowhere: it thresholds to an empty mask and has no
    ranking of its pixels."""
    flat = maps.flatten(1)
    return flat.amax(dim=1) == flat.amin(dim=1)


def connectivity_structure(connectivity: int) -> np.ndarray:
    """The ``scipy.ndimage`` 3x3 structuring element of 4- or 8-connectivity; any other
    value raises `MetricError` (the one place connectivity is validated)."""
    if connectivity not in (4, 8):
        raise MetricError(
            f"connectivity must be 4 (edge neighbours) or 8 (edges and corners), got "
            f"{connectivity!r}"
        )
    return ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)


def connected_components(mask: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """Label the connected components of a bool ``Tensor[H, W]``: ``Tensor[H, W]`` (int64),
    0 for background and 1..k for the components, numbered in raster order of their first
    pixel. ``connectivity``: 4 (edge neighbours) or 8 (edges and corners)."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise MetricError(f"connected_components needs one bool mask [H, W], got {shape}")
    structure = connectivity_structure(connectivity)
    labels, _ = ndimage.label(mask.detach().cpu().numpy().astype(bool), structure=structure)
    return torch.from_numpy(labels.astype(np.int64))


def pixel_accuracy(mask_pred: torch.Tensor, mask_gt: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels where the predicted mask equals the ground truth, ``Tensor[N]`` in
    [0, 1]: ``|P == G| / (H W)``. Masks: bool ``Tensor[N, H, W]`` of the same size."""
    pred = check_masks(mask_pred, "predicted masks")
    gt = check_masks(mask_gt, "ground-truth masks", allow_empty=False)
    check_same_size(pred, gt, "predicted masks", "ground-truth masks")
    return (pred == gt).flatten(1).float().mean(dim=1)


def mask_iou(mask_pred: torch.Tensor, mask_gt: torch.Tensor) -> torch.Tensor:
    """Intersection over union ``|P & G| / |P | G|`` per image, ``Tensor[N]`` in [0, 1].
    Masks: bool ``Tensor[N, H, W]``; an empty ground-truth mask raises `MetricError`."""
    pred = check_masks(mask_pred, "predicted masks")
    gt = check_masks(mask_gt, "ground-truth masks", allow_empty=False)
    check_same_size(pred, gt, "predicted masks", "ground-truth masks")
    intersection = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    return intersection / union
