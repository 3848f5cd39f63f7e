"""Model-free floors: maps computed from the pixels alone, scored like attribution methods.

A method's localisation score means something only by its margin over the best of these: a
map that never looks at the model cannot know which class it is asked about, so on a set
with several objects per image it can be right for at most one of them.

- ``floor:center``: a centred Gaussian, std a quarter of each side (the centre bias of
  photographs and of Zhang et al.'s centre baseline).
- ``floor:edges``: Sobel gradient magnitude, summed over the colour channels.
- ``floor:contrast``: Euclidean colour distance from the median colour of the image's
  one-pixel border (what is "not background" when the border is background).
- ``floor:random``: uniform noise, seeded per image position (the same run gives the same
  maps).

All take images ``Tensor[B, 3, H, W]`` with values in [0, 1] (display pixels, not
normalised model inputs) and return maps ``Tensor[B, H, W]`` (float32, >= 0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from convlens.errors import DataError

FLOOR_PREFIX = "floor:"


def center_floor(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A Gaussian centred on the image, std ``H / 4`` down and ``W / 4`` across."""
    batch, _, height, width = _check_images(images).shape
    rows = (torch.arange(height, dtype=torch.float32) + 0.5 - height / 2) / (height / 4)
    cols = (torch.arange(width, dtype=torch.float32) + 0.5 - width / 2) / (width / 4)
    gaussian = torch.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / 2)
    return gaussian.expand(batch, height, width).clone()


def edges_floor(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``sum_c sqrt(Gx_c^2 + Gy_c^2)``: Sobel magnitude per channel (replicated borders)."""
    images = _check_images(images).float()
    kernel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([kernel_x, kernel_x.T])[:, None].to(images.device)
    channels = images.flatten(0, 1)[:, None]
    padded = F.pad(channels, (1, 1, 1, 1), mode="replicate")
    gradients = F.conv2d(padded, kernels)
    magnitude = gradients.pow(2).sum(1).sqrt()
    return magnitude.view(images.shape).sum(1).cpu()


def contrast_floor(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``||x(p) - median(border)||_2``: colour distance of each pixel from the per-channel
    median of the one-pixel border."""
    images = _check_images(images).float()
    border = torch.cat(
        [images[:, :, 0], images[:, :, -1], images[:, :, 1:-1, 0], images[:, :, 1:-1, -1]], dim=2
    )
    median = border.median(dim=2).values
    return (images - median[:, :, None, None]).pow(2).sum(1).sqrt().cpu()


def random_floor(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Uniform noise in [0, 1) from a generator seeded with ``seed``."""
    batch, _, height, width = _check_images(images).shape
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, height, width, generator=generator)


FLOORS: dict[str, Callable[..., torch.Tensor]] = {
    "floor:center": center_floor,
    "floor:edges": edges_floor,
    "floor:contrast": contrast_floor,
    "floor:random": random_floor,
}


def is_floor(name: str) -> bool:
    return name.startswith(FLOOR_PREFIX)


def floor_maps(name: str, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Maps ``Tensor[B, H, W]`` of floor ``name`` (a key of `FLOORS`) for display images
    ``Tensor[B, 3, H, W]`` in [0, 1]."""
    if name not in FLOORS:
        raise DataError(f"unknown floor {name!r}; use one of {', '.join(FLOORS)}")
    return FLOORS[name](images, seed)


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise DataError("floors take RGB images Tensor[B, 3, H, W] with values in [0, 1]")
    if min(images.shape[-2:]) < 3:
        raise DataError(f"floors need images of at least 3x3 pixels, got {tuple(images.shape)}")
    return images


def best_floor(scores: dict[str, dict], key: str) -> tuple[str, float] | None:
    """The floor with the highest ``key`` among ``scores`` (name -> metrics), or None."""
    values = [
        (name, metrics[key])
        for name, metrics in scores.items()
        if is_floor(name) and metrics.get(key) is not None
    ]
    return max(values, key=lambda item: item[1]) if values else None


__all__ = [
    "FLOORS",
    "best_floor",
    "center_floor",
    "contrast_floor",
    "edges_floor",
    "floor_maps",
    "is_floor",
    "random_floor",
]
