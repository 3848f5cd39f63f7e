"""The explain panel: the input picture beside one tile per explained map, each titled with
the method, the layer and the explained class (``A rather than B`` for a contrast) and
carrying a colourbar in the map's own units. Draws only; computes nothing.

Colour scale (``scale``) of overlay tiles:

- ``"per-map"``: each map by the rule of `convlens.render.images.map_display` (its minimum
  to its 99th percentile, or symmetric about 0 for signed maps);
- ``"shared"``: one such range for every tile of the same method (``PanelTile.group``), the
  widest of theirs, so the rows of one method (top-k classes, a contrast) compare; across
  the panels of one run with `run_limits`, so the images compare too;
- ``"absolute"``: one range per method from 0 (or symmetric about 0) to the largest
  magnitude, nothing clipped: colours are raw values measured from zero.

Tiles with ``rgb`` pixels (guided backprop and deconvnet drawn as gradient images, as in
their papers) are shown as they are, with the gradient's range written under them.

Titles are wrapped to their tile's width. A map that is constant (zero everywhere, say)
gets a note saying so instead of a colourbar of no range. A ``region`` box (the pixels a
segmentation target summed over) is outlined on the input and on every tile.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from convlens.errors import ConvlensError
from convlens.render.images import (
    DIVERGING_CMAP,
    SEQUENTIAL_CMAP,
    _as_numpy,
    display_range,
    overlay,
)

SCALES = ("per-map", "shared", "absolute")


@dataclass(frozen=True)
class PanelTile:
    """One tile: a raw map ``Tensor[H, W]`` (any range), its title, the group whose tiles
    share a colour scale (the method), and optional ``rgb`` pixels ``uint8[H, W, 3]`` drawn
    instead of an overlay (with ``note`` under them)."""

    values: torch.Tensor
    title: str
    group: str = ""
    rgb: np.ndarray | None = None
    note: str = ""


def tile_title(
    method: str,
    class_name: str | None,
    score: float,
    probability: float | None,
    layer: str | None = None,
    rather_than: str | None = None,
) -> str:
    """``"gradcam @ blocks.6\\ntabby p=0.62"``, ``"... tabby rather than espresso"`` for a
    contrast (then the score, the logit difference, instead of a probability)."""
    head = f"{method} @ {layer}" if layer else method
    what = class_name or "target"
    if rather_than is not None:
        return f"{head}\n{what} rather than {rather_than}, logit diff {score:.3g}"
    value = f"p={probability:.2f}" if probability is not None else f"score={score:.3g}"
    return f"{head}\n{what} {value}"


def wrapped_title(title: str, characters: int) -> str:
    """``title`` with each of its lines wrapped at ``characters`` (at least 8) per line, at
    spaces, so a long title stays above its own tile."""
    width = max(8, characters)
    return "\n".join(textwrap.fill(line, width) or line for line in title.split("\n"))


def constant_note(values) -> str:
    """``"map is 0 everywhere"`` / ``"map is constant (v)"`` when ``values`` holds one value
    (nothing to colour: a fresh model's region target, a dead unit), else ``""``."""
    array = _as_numpy(values)
    if array.size == 0:
        return ""
    low, high = float(np.min(array)), float(np.max(array))
    if high > low:
        return ""
    return "map is 0 everywhere" if high == 0 else f"map is constant ({high:.3g})"


def tile_limits(tiles: Sequence[PanelTile], scale: str = "per-map") -> list[tuple[float, float]]:
    """The ``(low, high)`` raw values drawn at the colormap's two ends, per tile."""
    if scale not in SCALES:
        raise ConvlensError(f"unknown scale {scale!r}; use one of {', '.join(SCALES)}")
    own = [display_range(t.values) for t in tiles]
    if scale == "per-map":
        return [(low, high) for low, high, _ in own]
    limits = []
    for tile, (_, _, signed) in zip(tiles, own, strict=True):
        group = [i for i, other in enumerate(tiles) if other.group == tile.group]
        any_signed = any(own[i][2] for i in group) or signed
        if scale == "shared":
            high = max(own[i][1] for i in group)
            low = -high if any_signed else min(own[i][0] for i in group)
        else:
            high = max(float(_as_numpy(tiles[i].values).__abs__().max()) for i in group)
            low = -high if any_signed else 0.0
        limits.append((low, high))
    return limits


def run_limits(
    panels: Sequence[Sequence[PanelTile]], scale: str = "per-map"
) -> list[list[tuple[float, float]]]:
    """`tile_limits` across the panels of one run (one list of tiles per image): with
    ``shared`` or ``absolute``, every tile of a method gets the same range in all panels,
    so the images of a run compare. Returns the limits per panel, per tile."""
    flat = tile_limits([tile for tiles in panels for tile in tiles], scale)
    limits, start = [], 0
    for tiles in panels:
        limits.append(flat[start : start + len(tiles)])
        start += len(tiles)
    return limits


def tile_pixels(image: np.ndarray, values, limits: tuple[float, float], alpha: float = 0.5):
    """``uint8[H, W, 3]``: ``values`` over ``image`` with ``limits`` at the colormap's ends
    (signed limits, ``low < 0``, in blue-white-red; else jet). With `map_display`'s limits
    this is exactly `convlens.render.images.overlay_map`."""
    low, high = limits
    array = _as_numpy(values).astype(np.float64)
    span = high - low
    unit = np.clip((array - low) / span, 0, 1) if span > 0 else np.zeros_like(array)
    return overlay(image, unit, alpha=alpha, cmap=DIVERGING_CMAP if low < 0 else SEQUENTIAL_CMAP)


def gradient_image(gradient) -> np.ndarray:
    """An input gradient ``Tensor[3, H, W]`` as an RGB picture ``uint8[H, W, 3]``: grey at 0,
    ``0.5 + g / (2 s)`` with ``s`` the 99th percentile of ``|g|`` (clipped beyond), the
    normalised gradient image of the deconvnet and guided-backprop papers."""
    values = torch.as_tensor(_as_numpy(gradient)).double()
    if values.dim() != 3 or values.shape[0] != 3:
        raise ConvlensError(f"a gradient image is Tensor[3, H, W], got {tuple(values.shape)}")
    top = float(torch.quantile(values.abs().flatten(), 0.99)) if values.numel() else 0.0
    top = top if top > 0 else float(values.abs().max())
    shown = 0.5 + values / (2 * top) if top > 0 else torch.full_like(values, 0.5)
    return (shown.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy()


def explanation_figure(
    image: np.ndarray,
    tiles: Sequence[PanelTile],
    input_title: str = "input",
    scale: str = "per-map",
    columns: int = 4,
    width: float | None = None,
    alpha: float = 0.5,
    region: tuple[int, int, int, int] | None = None,
    limits: Sequence[tuple[float, float]] | None = None,
):
    """A matplotlib Figure: ``image`` (``uint8[H, W, 3]``) first, then each tile (an overlay
    with a colourbar in the map's units, or its ``rgb`` pixels; a constant map: the image
    with a note), ``columns`` per row, ``width`` inches wide (default 2.4 per column).
    ``region``: a box ``(x0, y0, x1, y1)`` in image pixels (x1, y1 exclusive), outlined.
    ``limits``: each tile's colour range, when the scale spans more than this panel
    (`run_limits`); default: `tile_limits` of these tiles."""
    from matplotlib import colors
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure

    limits = tile_limits(tiles, scale) if limits is None else limits
    count = len(tiles) + 1
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    width = width or 2.4 * columns
    cell = width / columns
    size = max(5.0, min(8.0, cell * 3.2))
    characters = int(cell * 72 / (size * 0.6))  # a title line's room: tile width / glyph
    titles = [wrapped_title(input_title, characters)]
    titles += [wrapped_title(tile.title, characters) for tile in tiles]
    notes = [""] + [wrapped_title(_tile_note(tile), int(characters / 0.9)) for tile in tiles]
    height_ratio = image.shape[0] / image.shape[1]
    # a row's image height: the cell's width less a colourbar's where the row has one
    barred = [False] + [_has_colourbar(tile) for tile in tiles]
    height = sum(
        cell * height_ratio * (0.86 if any(barred[start : start + columns]) else 0.97)
        + 0.3
        + _text_height(titles[start : start + columns], size)
        + _text_height(notes[start : start + columns], size * 0.9)
        for start in range(0, count, columns)
    )
    figure = Figure(figsize=(width, height), layout="constrained")
    grid = figure.add_gridspec(rows, columns)
    axes = figure.add_subplot(grid[0, 0])
    axes.imshow(image)
    axes.set_title(titles[0], fontsize=size)
    axes.set_axis_off()
    _outline(axes, region)
    for index, (tile, (low, high)) in enumerate(zip(tiles, limits, strict=True), start=1):
        axes = figure.add_subplot(grid[index // columns, index % columns])
        axes.set_axis_off()
        axes.set_title(titles[index], fontsize=size)
        if not _has_colourbar(tile):
            axes.imshow(tile.rgb if tile.rgb is not None else image)
            _outline(axes, region)
            if notes[index]:
                _caption(axes, notes[index], size * 0.9)
            continue
        axes.imshow(tile_pixels(image, tile.values, (low, high), alpha))
        _outline(axes, region)
        cmap = DIVERGING_CMAP if low < 0 else SEQUENTIAL_CMAP
        norm = colors.Normalize(vmin=low, vmax=high if high > low else low + 1e-12)
        bar = figure.colorbar(
            ScalarMappable(norm=norm, cmap=cmap), ax=axes, fraction=0.046, pad=0.02
        )
        bar.ax.tick_params(labelsize=size * 0.8)
        bar.formatter.set_powerlimits((-2, 3))
        bar.ax.yaxis.get_offset_text().set_fontsize(size * 0.8)
    return figure


def _tile_note(tile: PanelTile) -> str:
    """What is written under a tile drawn as pixels or a constant map (instead of an
    overlay with a colourbar): its note and, for a constant map, that it is constant."""
    flat = constant_note(tile.values) if tile.rgb is None else ""
    return "; ".join(text for text in (tile.note, flat) if text)


def _has_colourbar(tile: PanelTile) -> bool:
    """Whether ``tile`` is drawn as an overlay with a colourbar: a map that is not constant
    (a constant one gets a note, ``rgb`` pixels are drawn as they are)."""
    return tile.rgb is None and not constant_note(tile.values)


def _text_height(texts: Sequence[str], size: float) -> float:
    """Inches taken by the tallest of ``texts`` (lines of ``size`` points; 0 for none)."""
    lines = max((text.count("\n") + 1 for text in texts if text), default=0)
    return lines * size * 1.3 / 72


def _caption(axes, text: str, size: float) -> None:
    """``text`` under the image of ``axes``, as its x label: the constrained layout then
    keeps it inside the figure (text placed below the axes by hand was cut off)."""
    axes.set_axis_on()
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_visible(False)
    axes.set_xlabel(text, fontsize=size)


def _outline(axes, region: tuple[int, int, int, int] | None) -> None:
    """Outline the box ``(x0, y0, x1, y1)`` (pixels, x1/y1 exclusive) on ``axes``."""
    if region is None:
        return
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = region
    box = Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.2, ec="white")
    axes.add_patch(box)


def explanation_panel(
    image: np.ndarray,
    tiles: Sequence[PanelTile],
    input_title: str = "input",
    columns: int = 4,
    alpha: float = 0.5,
    scale: str = "per-map",
) -> np.ndarray:
    """`explanation_figure` rendered to ``uint8[H, W, 3]`` at 100 dpi."""
    from convlens.render.figures import to_array

    figure = explanation_figure(image, tiles, input_title, scale, columns, alpha=alpha)
    figure.set_dpi(100)
    return to_array(figure)
