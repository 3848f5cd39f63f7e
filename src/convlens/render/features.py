"""Pictures of what a network learned: filter grids, feature-map grids, masks, projections,
visualisations and Gram heat maps. Takes the results of `convlens.features`; computes nothing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from convlens.render.images import colorize, image_grid


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``Tensor[..., 3, H, W]`` in [0, 1] to ``uint8[..., H, W, 3]``."""
    return (images.detach().cpu().clamp(0, 1).movedim(-3, -1) * 255).round().byte().numpy()


def _enlarge(tiles: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(tiles, size=(size, size), mode="nearest")


def filter_grid(result, tile: int = 44, columns: int | None = None) -> np.ndarray:
    """`FilterTiles` as a grid of enlarged tiles (nearest neighbour: every weight visible)."""
    tiles = _enlarge(result.tiles, tile)
    if tiles.shape[1] == 1:
        tiles = tiles.expand(-1, 3, -1, -1)
    titles = [f"{label}" for label in result.labels]
    columns = columns or min(len(titles), 16)
    grid = image_grid(list(to_uint8(tiles)), titles, columns, title_height=14)
    return grid


def feature_map_grid(result, tile: int = 64, columns: int | None = None) -> np.ndarray:
    """`FeatureMaps` as colour-mapped tiles, each scaled by its own maximum (0 -> dark)."""
    maps = result.maps.detach().cpu()
    peak = maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    scaled = _enlarge((maps.clamp_min(0) / peak)[:, None], tile)[:, 0]
    tiles = [colorize(m, "viridis") for m in scaled]
    titles = [
        f"c{int(c)} {float(m):.2g}" for c, m in zip(result.channels, result.means, strict=True)
    ]
    return image_grid(tiles, titles, columns or min(len(tiles), 8), title_height=14)


def layer_means_grid(maps: list[tuple[str, torch.Tensor]], tile: int = 64) -> np.ndarray:
    """Channel-mean maps of many layers, each min-max scaled, titled by layer name."""
    tiles = []
    for _, values in maps:
        values = values.detach().cpu().float()
        span = (values.max() - values.min()).clamp_min(1e-12)
        tiles.append(colorize(_enlarge(((values - values.min()) / span)[None, None], tile)[0, 0]))
    return image_grid(tiles, [name for name, _ in maps], 10, title_height=14)


def mask_overlay(display: np.ndarray, mask, alpha: float = 0.6) -> np.ndarray:
    """Darken ``uint8[H, W, 3]`` outside a boolean mask ``[H, W]``."""
    keep = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)[..., None]
    shaded = display.astype(np.float64) * np.where(keep, 1.0, 1.0 - alpha)
    return shaded.round().astype(np.uint8)


def projection_image(projection: torch.Tensor, box=None) -> np.ndarray:
    """A projection ``Tensor[3, H, W]`` as ``0.5 + p / (2 max|p|)`` (grey = 0), cropped to
    ``box`` (top, left, bottom, right) when given."""
    values = projection.detach().cpu()
    if box is not None:
        top, left, bottom, right = box
        values = values[:, top : bottom + 1, left : right + 1]
    shown = 0.5 + values / (2 * values.abs().max().clamp_min(1e-12))
    return to_uint8(shown)


def gram_heatmap(gram: torch.Tensor, size: int = 256) -> np.ndarray:
    """A Gram matrix ``Tensor[C, C]`` as a heat map, scaled by its largest magnitude."""
    values = gram.detach().cpu().float()
    values = values / values.abs().max().clamp_min(1e-12)
    big = _enlarge(values[None, None], size)[0, 0]
    return colorize(big, "RdBu_r", vmin=-1.0, vmax=1.0)
