"""Tensor math on maps that every folder shares: resize, normalise, blur, curve areas and
the box around a mask. A leaf: it imports nothing from convlens but `errors`.

Maps are ``Tensor[N, H, W]``; images ``Tensor[B, C, H, W]``; boxes ``(x0, y0, x1, y1)`` in
pixels with x1/y1 exclusive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convlens.errors import ConvlensError, MetricError


def full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` widened to float32 when it is float16 or bfloat16 (their few mantissa bits
    and, for float16, narrow range lose small map values and differences of close
    scores); any other tensor is returned as it is."""
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    return tensor


INTERPOLATIONS = ("bilinear", "nearest")


def resize_maps(
    maps: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear"
) -> torch.Tensor:
    """``Tensor[N, h, w]`` to ``Tensor[N, H, W]`` (up or down): ``"bilinear"`` (pixel centres
    aligned, ``align_corners=False``, so a map cell covers exactly its share of the input) or
    ``"nearest"`` (each map cell becomes a block of equal pixels). The one resize of maps:
    attribution upsampling, box extraction and overlays all use it."""
    if interpolation not in INTERPOLATIONS:
        raise MetricError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps
    corners = {"align_corners": False} if interpolation == "bilinear" else {}
    return F.interpolate(maps[:, None], size=size, mode=interpolation, **corners)[:, 0]


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of ``Tensor[N, H, W]`` (or one ``Tensor[H, W]``) to [0, 1] by its own
    min and max; a constant map becomes zeros (never NaN). Integer maps come back as
    float32. NaN or an infinite value in the input raises."""
    if not isinstance(maps, torch.Tensor) or maps.dim() not in (2, 3):
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ConvlensError(f"maps must be a Tensor[N, H, W] or one Tensor[H, W], got {shape}")
    if not maps.is_floating_point():
        maps = maps.float()
    if not bool(torch.isfinite(maps).all()):
        raise ConvlensError(
            "map contains NaN or an infinite value; check the model output for this input"
        )
    flat = maps.reshape(1, -1) if maps.dim() == 2 else maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0)
    return scaled.view_as(maps)


def gaussian_blur(images: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Each channel of ``Tensor[B, C, H, W]`` convolved with a normalised Gaussian
    (``kernel_size`` x ``kernel_size``, std ``sigma`` pixels; RISE uses 11 and 5), with
    reflected borders so the image edge keeps its brightness."""
    offsets = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    weights = (weights / weights.sum()).to(images)
    channels = images.shape[1]
    pad = kernel_size // 2
    mode = "reflect" if min(images.shape[-2:]) > pad else "replicate"
    padded = F.pad(images, (pad, pad, pad, pad), mode=mode)
    rows = F.conv2d(padded, weights.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, weights.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def auc(curve: torch.Tensor) -> torch.Tensor:
    """Area under each curve of ``Tensor[N, S + 1]`` sampled at ``x = 0, 1/S, ..., 1``, by
    the trapezoid rule: ``sum_k (c_k + c_{k+1}) / (2 S)``. ``Tensor[N]``; for probability
    curves it lies in [0, 1]."""
    if not isinstance(curve, torch.Tensor) or curve.dim() != 2 or curve.shape[1] < 2:
        raise MetricError("auc needs curves Tensor[N, S + 1] with at least two points each")
    return torch.trapezoid(curve.float(), dx=1.0 / (curve.shape[1] - 1), dim=1)


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    """Tight box ``Tensor[4]`` ``(x0, y0, x1, y1)`` (x1/y1 exclusive) around every True pixel
    of a bool ``Tensor[H, W]`` (or ``[1, H, W]``), connected or not; an empty mask raises
    `MetricError`."""
    if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3):
        raise MetricError("mask_box needs one mask Tensor[H, W] (bool or 0/1)")
    if mask.dim() == 3:
        if len(mask) != 1:
            raise MetricError(f"mask_box takes one mask, got a stack of {len(mask)}")
        mask = mask[0]
    if mask.dtype != torch.bool:
        if bool(((mask != 0) & (mask != 1)).any()):
            raise MetricError("mask_box needs a bool or 0/1 mask")
        mask = mask != 0
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        raise MetricError("mask_box got an empty mask: it has no box")
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float().cpu()


def channel_peaks(relevance: torch.Tensor, window: int = 3) -> torch.Tensor:
    """Each channel's largest windowed relevance: ``Tensor[N, K, h, w]`` to ``Tensor[N, K]``,
    the largest mean absolute value over the ``window x window`` windows that lie inside the
    map (the window shrinks to the map's side when the map is smaller). Where a pattern lies
    does not matter as long as its window is inside the map, and a small, strong pattern
    keeps its value however large the map is (a sum over space would average it away)."""
    if relevance.dim() != 4:
        raise ConvlensError(
            f"channel peaks take a layer's relevance Tensor[N, K, h, w], got "
            f"{tuple(relevance.shape)}"
        )
    if window < 1:
        raise ConvlensError(f"the window must be at least 1 position, got {window}")
    side = min(window, relevance.shape[2], relevance.shape[3])
    pooled = F.avg_pool2d(relevance.abs(), side, stride=1)
    return pooled.flatten(2).amax(2)
