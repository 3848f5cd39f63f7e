"""Perturbation methods: occlusion (Zeiler & Fergus 2014).

Slide a patch over the input, replace the pixels under it with a fill value, and record how
much the target score drops. The occluded copies are evaluated in batches without autograd;
the clean input costs one more forward pass (which also pins the explained class and is the
output the method hands back, `MethodResult`). A callable target sees one row per image
(`convlens.targets.CopyTargets`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from convlens.attribution.common import (
    SharedRows,
    chunk_size,
    clean_pass,
    forward_copies,
    in_chunks,
    prepare,
)
from convlens.attribution.registry import MethodResult, register_method
from convlens.data.progress import progress_bar
from convlens.errors import MethodError
from convlens.layers.borrow import borrowed_model
from convlens.maps import full_precision
from convlens.models.loading import LoadedModel


def _pair(name: str, value: object) -> tuple[int, int]:
    pair = value if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair
    ):
        raise MethodError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def patch_starts(size: int, patch: int, stride: int) -> list[int]:
    """Top (or left) edges of the patches along one axis: ``0, stride, 2 stride, ...`` and,
    when the stride does not land on it, a last patch flush with the far edge, so that every
    pixel is covered. A stride larger than the patch would skip the pixels between patches
    (their map would be undefined), so it raises `MethodError`."""
    if patch > size:
        raise MethodError(f"patch size {patch} is larger than the image ({size} pixels)")
    if stride > patch:
        raise MethodError(
            f"stride {stride} is larger than the patch ({patch} pixels), so the pixels between "
            f"patches would never be occluded; use a stride of at most the patch size "
            f"(stride <= {patch}) or a patch of at least the stride (patch >= {stride})"
        )
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def fill_values(images: torch.Tensor, fill: object) -> torch.Tensor:
    """``Tensor[N, C, 1, 1]``: a number for every pixel, or each image's channel mean."""
    if fill == "mean":
        return images.mean(dim=(2, 3), keepdim=True)
    if isinstance(fill, (int, float)) and not isinstance(fill, bool) and math.isfinite(fill):
        return torch.full_like(images[:, :, :1, :1], float(fill))
    raise MethodError(f"fill must be a finite number or 'mean', got {fill!r}")


@register_method("occlusion", "perturbation", slow=True)
def occlusion(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    patch: int | tuple[int, int] = 32,
    stride: int | tuple[int, int] = 16,
    fill: float | str = 0.0,
    batch_size: int | None = None,
    progress: bool = False,
) -> MethodResult:
    """Occlusion map: the mean drop of the target score over the patches covering a pixel.

    For patch positions ``p`` with region ``P_p`` and occluded input ``x_p`` (``x`` with
    ``P_p`` set to ``fill``): ``M(i, j) = mean_{p : (i, j) in P_p} (S(x) - S(x_p))``.
    Positions step by ``stride`` plus a last one flush with each edge, so every pixel is
    covered; a ``stride`` larger than ``patch`` (on either axis) would leave pixels between
    patches uncovered and raises `MethodError`. ``fill``: a number (0 is the normalised
    mid-grey for mean-0.5 inputs) or "mean" (each image's per-channel mean).
    ``batch_size``: occluded copies built at a time (default: see `chunk_size`; never changes
    results). Costs ``U * positions + N`` forward passes without autograd, ``U`` the
    distinct images (rows holding the same image, such as one image explained for several
    classes, share each copy: `SharedRows`). Returns ``Tensor[N, H, W]`` (positive where
    occluding hurts the score).
    """
    patch_hw, stride_hw = _pair("patch", patch), _pair("stride", stride)
    prepared = prepare(model, images, target)
    x = prepared.images
    height, width = x.shape[2:]
    tops = patch_starts(height, patch_hw[0], stride_hw[0])
    lefts = patch_starts(width, patch_hw[1], stride_hw[1])
    positions = [(top, left) for top in tops for left in lefts]
    fills = fill_values(x, fill)
    rows = len(x)
    # Score drops in at least float32: a half-precision difference of close scores is noise.
    drops = torch.empty(rows, len(positions), dtype=full_precision(x[:0]).dtype, device=x.device)
    with borrowed_model(prepared.module), torch.no_grad():
        output, pinned = clean_pass(prepared, laid_out=True)
        clean = full_precision(pinned.score(output))
        # rows holding the same image share each occluded copy (`SharedRows`)
        shared = SharedRows.of(x, share=isinstance(output, torch.Tensor))
        # Flat work item k = group * positions + position.
        group_of = torch.arange(len(shared)).repeat_interleave(len(positions))
        position_of = torch.arange(len(positions)).repeat(len(shared))
        size = chunk_size(batch_size, len(shared), height * width)
        chunks = list(in_chunks(len(group_of), size))
        for chunk in progress_bar(chunks, disable=not progress, desc="occlusion", leave=False):
            group, position = group_of[chunk], position_of[chunk]
            first = shared.first[group]
            copies = x[first.to(x.device)]  # advanced indexing copies
            for k, (r, p) in enumerate(zip(first.tolist(), position.tolist(), strict=True)):
                top, left = positions[p]
                copies[k, :, top : top + patch_hw[0], left : left + patch_hw[1]] = fills[r]
            copy, row, scores = shared.scores(
                pinned, output, forward_copies(prepared.module, copies), group
            )
            row, at = row.to(x.device), position[copy].to(x.device)
            drops[row, at] = clean[row] - full_precision(scores)
    maps = _average_over_patches(drops, positions, patch_hw, (height, width))
    return MethodResult(maps, output)


def _average_over_patches(
    drops: torch.Tensor,
    positions: list[tuple[int, int]],
    patch_hw: tuple[int, int],
    size: tuple[int, int],
) -> torch.Tensor:
    """``Tensor[N, H, W]``: each pixel's mean of ``drops[:, p]`` over the patches covering it."""
    total = drops.new_zeros(len(drops), *size)
    count = drops.new_zeros(size)
    for p, (top, left) in enumerate(positions):
        region = (slice(top, top + patch_hw[0]), slice(left, left + patch_hw[1]))
        total[:, region[0], region[1]] += drops[:, p, None, None]
        count[region] += 1
    return total / count
