"""Pictures of what a network learned: filter grids, feature-map grids, masks, projections,
visualisations and Gram heat maps. Takes the results of `convlens.features`; computes nothing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from convlens.maps import normalize_maps
from convlens.render.images import _font, colorize, image_grid

SCALING_TEXT = {
    "per_filter": "per-filter scaling (each tile by its own max |w|)",
    "shared": "shared scaling (every tile by the layer's max |w|)",
}
KIND_TEXT = {
    "rgb": "RGB filters",
    "mean": "filters (mean over input channels)",
    "norm": "filters (L2 norm over input channels)",
    "slices": "filter slices (one per input channel)",
}


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``Tensor[..., 3, H, W]`` in [0, 1] to ``uint8[..., H, W, 3]``."""
    return (images.detach().cpu().clamp(0, 1).movedim(-3, -1) * 255).round().byte().numpy()


def _enlarge(tiles: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(tiles, size=(size, size), mode="nearest")


def captioned(grid: np.ndarray, text: str, size: int = 13) -> np.ndarray:
    """``grid`` ``uint8[H, W, 3]`` with ``text`` written above it on white, wrapped to the
    grid's width; returns ``uint8[H + caption, W, 3]``."""
    font = _font(size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and measure.textlength(trial, font=font) > grid.shape[1] - 8:
            lines.append(line)
            trial = word
        line = trial
    lines.append(line)
    strip = Image.new("RGB", (grid.shape[1], 6 + (size + 4) * len(lines)), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for row, words in enumerate(lines):
        draw.text((4, 4 + row * (size + 4)), words, fill=(0, 0, 0), font=font)
    return np.concatenate([np.asarray(strip), grid], axis=0)


def filter_caption(result) -> str:
    """What a filter figure shows: layer, tile count and kind, and its scaling."""
    return (
        f"{result.layer}: {len(result.labels)} {KIND_TEXT[result.reduce]}; "
        f"{SCALING_TEXT[result.scaling]}; grey = 0, bright > 0, dark < 0"
    )


def filter_grid(result, tile: int = 44, columns: int | None = None) -> np.ndarray:
    """`FilterTiles` as a grid of enlarged tiles (nearest neighbour: every weight visible),
    under a caption that names the layer and states the scaling (`filter_caption`)."""
    tiles = _enlarge(result.tiles, tile)
    if tiles.shape[1] == 1:
        tiles = tiles.expand(-1, 3, -1, -1)
    columns = columns or min(len(result.labels), 16)
    grid = image_grid(list(to_uint8(tiles)), list(result.labels), columns, title_height=14)
    return captioned(grid, filter_caption(result))


def feature_map_tiles(maps: torch.Tensor, tile: int = 64) -> tuple[list[np.ndarray], bool]:
    """Feature maps ``Tensor[K, h, w]`` as colour tiles ``uint8[tile, tile, 3]`` (nearest
    neighbour enlargement), each scaled by its own largest magnitude ``m``.

    Non-negative maps (after a rectifier): viridis over ``[0, m]`` (0 -> dark). When any
    map has a negative value (a layer before its activation, a linear bottleneck), every
    tile is signed instead: RdBu_r over ``[-m, m]``, white at 0, so negative responses stay
    visible rather than being clipped. Returns ``(tiles, signed)``."""
    maps = maps.detach().cpu().float()
    signed = bool((maps < 0).any())
    peak = maps.abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    scaled = _enlarge((maps / peak)[:, None], tile)[:, 0]
    if signed:
        return [colorize(m, "RdBu_r", vmin=-1.0, vmax=1.0) for m in scaled], True
    return [colorize(m, "viridis") for m in scaled], False


def feature_map_grid(result, tile: int = 64, columns: int | None = None) -> np.ndarray:
    """`FeatureMaps` as colour tiles (`feature_map_tiles`), titled ``c{channel} {mean}``,
    under a caption that names the layer and states the scaling."""
    tiles, signed = feature_map_tiles(result.maps, tile)
    titles = [
        f"c{int(c)} {float(m):.2g}" for c, m in zip(result.channels, result.means, strict=True)
    ]
    grid = image_grid(tiles, titles, columns or min(len(tiles), 8), title_height=14)
    colours = "blue < 0 < red, white = 0" if signed else "dark = 0, yellow = max"
    return captioned(
        grid,
        f"{result.layer}: {len(tiles)} channels (title: channel, mean activation); each "
        f"tile scaled by its own max |a|; {colours}",
    )


def layer_means_grid(maps: list[tuple[str, torch.Tensor]], tile: int = 96) -> np.ndarray:
    """Channel-mean maps ``(name, Tensor[h, w])`` of many layers, each min-max scaled to
    jet (blue = its min, red = its max) and enlarged to ``tile`` pixels (nearest),
    titled ``name hxw``, under a caption saying so."""
    tiles, titles = [], []
    for name, values in maps:
        scaled = normalize_maps(values.detach().cpu().float()[None])
        tiles.append(colorize(_enlarge(scaled[None], tile)[0, 0]))
        titles.append(f"{name} {values.shape[0]}x{values.shape[1]}")
    grid = image_grid(tiles, titles, min(len(tiles), 10), title_height=14)
    return captioned(
        grid, "channel mean of each layer's output, each map min-max scaled (blue = min, red = max)"
    )


def mask_overlay(display: np.ndarray, mask, alpha: float = 0.6) -> np.ndarray:
    """Darken ``uint8[H, W, 3]`` outside a boolean mask ``[H, W]``."""
    keep = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)[..., None]
    shaded = display.astype(np.float64) * np.where(keep, 1.0, 1.0 - alpha)
    return shaded.round().astype(np.uint8)


PROJECTION_PERCENTILE = 0.99  # this quantile of a projection's |p| is drawn white / black


def projection_image(projection: torch.Tensor, box=None, size: int | None = None) -> np.ndarray:
    """A projection ``Tensor[3, H, W]`` normalised to its own range, as Zeiler & Fergus
    drew them: ``0.5 + p / (2 s)`` clipped to [0, 1] (grey = 0), ``s`` the
    `PROJECTION_PERCENTILE` quantile of ``max_c |p|`` over the pixels the projection
    reaches (non-zero ones; all pixels when none is). Scaling by the single largest
    ``|p|`` instead left almost every pixel grey, since a unit's gradient is spiky.
    ``box`` (top, left, bottom, right) crops first; ``size`` then area-averages to
    ``size`` x ``size`` before scaling, so a large field keeps its structure when shrunk.
    Returns ``uint8[h, w, 3]``."""
    values = projection.detach().cpu().float()
    if box is not None:
        top, left, bottom, right = box
        values = values[:, top : bottom + 1, left : right + 1]
    if size is not None:
        values = F.interpolate(values[None], size=(size, size), mode="area")[0]
    magnitudes = values.abs().amax(0).flatten()
    reached = magnitudes[magnitudes > 0]
    scale = torch.quantile(reached, PROJECTION_PERCENTILE) if reached.numel() else torch.tensor(1.0)
    return to_uint8(0.5 + values / (2 * scale))


def mark_image_border(
    tile: np.ndarray, inside: tuple[int, int, int, int], colour=(255, 0, 255)
) -> np.ndarray:
    """``tile`` ``uint8[h, w, 3]`` (a copy) with the image's border drawn where a receptive
    field is cut by it: a 1-pixel line of ``colour`` along each side of ``inside`` ``(x0,
    y0, x1, y1)`` (the part of the field within the image, x1/y1 exclusive, in the tile's
    pixels) that lies inside the tile."""
    marked = tile.copy()
    height, width = tile.shape[:2]
    x0, y0, x1, y1 = inside
    rows = slice(max(y0, 0), min(y1, height))
    cols = slice(max(x0, 0), min(x1, width))
    if 0 < x0 < width:
        marked[rows, x0 - 1] = colour
    if 0 < x1 < width:
        marked[rows, x1] = colour
    if 0 < y0 < height:
        marked[y0 - 1, cols] = colour
    if 0 < y1 < height:
        marked[y1, cols] = colour
    return marked


def importance_panel(image: torch.Tensor, importance: torch.Tensor) -> np.ndarray:
    """A MACO picture ``Tensor[3, H, W]`` in [0, 1] beside its importance map
    ``Tensor[H, W]`` (min-max scaled, inferno: dark = least) and the picture shown through
    it as transparency (over white: ``w x + (1 - w)``, ``w`` the scaled importance).
    ``uint8[H, 3 W + 8, 3]``."""
    weight = normalize_maps(importance.detach().cpu().float()[None])[0]
    picture = image.detach().cpu().float()
    faded = weight * picture + (1 - weight)
    gap = np.full((picture.shape[-2], 4, 3), 255, np.uint8)
    parts = [to_uint8(picture), gap, colorize(weight, "inferno"), gap, to_uint8(faded)]
    return np.concatenate(parts, axis=1)


def gram_heatmap(gram: torch.Tensor, size: int = 256) -> np.ndarray:
    """A Gram matrix ``Tensor[C, C]`` as a heat map, scaled by its largest magnitude."""
    values = gram.detach().cpu().float()
    values = values / values.abs().max().clamp_min(1e-12)
    big = _enlarge(values[None, None], size)[0, 0]
    return colorize(big, "RdBu_r", vmin=-1.0, vmax=1.0)
