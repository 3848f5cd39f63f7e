"""Pictures of dataset scans: Zeiler & Fergus's top-9 panel (projections beside patches),
a 2-D map of thumbnails coloured by label, and a strip of nearest neighbours. Takes arrays
and tensors; computes nothing."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw

from convlens.errors import ConvlensError
from convlens.render.features import captioned, mark_image_border, projection_image
from convlens.render.images import _font, image_grid


def _resized(tile: np.ndarray, size: int) -> np.ndarray:
    """``uint8[h, w, 3]`` scaled to ``size`` x ``size`` (nearest when enlarging, so small
    receptive fields keep their pixels; area average when shrinking)."""
    image = Image.fromarray(tile)
    enlarge = size >= max(tile.shape[:2])
    method = Image.Resampling.NEAREST if enlarge else Image.Resampling.BOX
    return np.asarray(image.resize((size, size), method))


def _square_grid(tiles: list[np.ndarray], columns: int, size: int) -> np.ndarray:
    blank = np.full((size, size, 3), 255, np.uint8)
    padded = [t if t.shape[:2] == (size, size) else _resized(t, size) for t in tiles]
    padded += [blank] * (columns * columns - len(tiles))
    return image_grid(padded, columns=columns, padding=2)


def _scaled_inside(inside, shape, size: int) -> tuple[int, int, int, int]:
    """``inside`` ``(x0, y0, x1, y1)`` of a patch ``shape`` in the pixels of a ``size`` tile."""
    x0, y0, x1, y1 = inside
    fy, fx = size / shape[0], size / shape[1]
    return round(x0 * fx), round(y0 * fy), round(x1 * fx), round(y1 * fy)


def top_units_panel(
    patches: Sequence[np.ndarray],
    projections: Sequence[torch.Tensor] | None,
    title: str,
    tile: int = 64,
    inside: Sequence[tuple[int, int, int, int]] | None = None,
) -> np.ndarray:
    """Zeiler & Fergus's layout for one channel: a square grid of projections (each
    normalised to its own range, grey = 0: `projection_image`) beside the grid of the same
    units' patches ``uint8[h, w, 3]`` (the whole receptive field), best first, row by row,
    with ``title`` above. ``inside``: per unit, the part ``(x0, y0, x1, y1)`` of its patch
    within the image; where the image's border cuts a field it is drawn as a magenta line
    on both tiles. ``uint8[H, W, 3]``."""
    if not patches:
        raise ConvlensError("top_units_panel needs at least one patch")
    columns = max(1, int(np.ceil(np.sqrt(len(patches)))))
    cuts = [None] * len(patches) if inside is None else list(inside)
    shown_patches = []
    for patch, cut in zip(patches, cuts, strict=True):
        picture = _resized(patch, tile)
        if cut is not None:
            picture = mark_image_border(picture, _scaled_inside(cut, patch.shape, tile))
        shown_patches.append(picture)
    parts = [_square_grid(shown_patches, columns, tile)]
    if projections:
        shown = []
        for projection, cut in zip(projections, cuts, strict=True):
            picture = projection_image(projection, size=tile)
            if cut is not None:
                picture = mark_image_border(
                    picture, _scaled_inside(cut, projection.shape[-2:], tile)
                )
            shown.append(picture)
        parts.insert(0, _square_grid(shown, columns, tile))
    gap = np.full((parts[0].shape[0], 8, 3), 255, np.uint8)
    joined = parts[0] if len(parts) == 1 else np.concatenate([parts[0], gap, parts[1]], axis=1)
    return captioned(joined, title)


def label_colours(count: int) -> np.ndarray:
    """``uint8[count, 3]``: one distinct colour per label (tab10/tab20)."""
    cmap = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
    return (np.array([cmap(i % cmap.N)[:3] for i in range(count)]) * 255).round().astype(np.uint8)


def thumbnail_map(
    points: np.ndarray,
    thumbnails: Sequence[np.ndarray],
    labels: Sequence[int] | None = None,
    classes: Sequence[str] | None = None,
    size: int = 1200,
    thumb: int | None = None,
) -> np.ndarray:
    """A 2-D map ``float[N, 2]`` drawn as thumbnails ``uint8[h, w, 3]`` at their points,
    each framed in its label's colour (grey without labels), with a legend of ``classes``.
    Later points are drawn over earlier ones. ``thumb`` (pixels) defaults to
    ``0.6 * size / sqrt(N)`` within [24, 96]. Returns ``uint8[size + legend, size, 3]``."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(thumbnails):
        raise ConvlensError("thumbnail_map needs points float[N, 2] and N thumbnails")
    if thumb is None:
        thumb = int(np.clip(0.6 * size / np.sqrt(len(points)), 24, 96))
    low, high = points.min(axis=0), points.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    where = ((points - low) / span * (size - thumb - 8) + 4).round().astype(int)
    labelled = labels is not None and any(label >= 0 for label in labels)
    count = max(len(classes or ()), (max(labels) + 1) if labelled else 0)
    colours = label_colours(max(count, 1))
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    for (x, y), tile, label in zip(where, thumbnails, labels or [-1] * len(where), strict=True):
        frame = tuple(int(v) for v in colours[label]) if label >= 0 else (128, 128, 128)
        canvas.paste(frame, (x, y, x + thumb, y + thumb))
        canvas.paste(Image.fromarray(_resized(tile, thumb - 4)), (x + 2, y + 2))
    legend = _legend(classes, colours, size) if labelled else None
    picture = np.asarray(canvas)
    return picture if legend is None else np.concatenate([legend, picture], axis=0)


def _legend(classes, colours: np.ndarray, width: int) -> np.ndarray:
    names = list(classes) if classes else [f"class {i}" for i in range(len(colours))]
    strip = Image.new("RGB", (width, 24), (255, 255, 255))
    draw, font, x = ImageDraw.Draw(strip), _font(13), 6
    for name, colour in zip(names, colours, strict=False):
        draw.rectangle((x, 6, x + 12, 18), fill=tuple(int(v) for v in colour))
        draw.text((x + 16, 5), name, fill=(0, 0, 0), font=font)
        x += 28 + int(draw.textlength(name, font=font))
    return np.asarray(strip)


def neighbours_strip(
    query: np.ndarray, images: Sequence[np.ndarray], captions: Sequence[str], tile: int = 128
) -> np.ndarray:
    """The query image then its nearest images, left to right, each with a caption."""
    tiles = [_resized(image, tile) for image in [query, *images]]
    return image_grid(tiles, titles=["query", *captions], columns=len(tiles))


def neighbours_html(
    query: str, sources: Sequence[str], distances: Sequence[float], metric: str
) -> str:
    """An HTML table of a query's nearest items: rank, source, ``metric`` distance."""
    from html import escape

    rows = "".join(
        f"<tr><td>{rank}</td><td>{escape(str(source))}</td>"
        f'<td style="text-align:right">{distance:.4f}</td></tr>'
        for rank, (source, distance) in enumerate(zip(sources, distances, strict=True), 1)
    )
    return (
        f"<table><caption>nearest to {escape(str(query))}</caption><thead><tr><th>#</th>"
        f"<th>source</th><th>{escape(metric)} distance</th></tr></thead><tbody>{rows}"
        "</tbody></table>"
    )


def embeddings_html(stored) -> str:
    """An HTML summary of `Embeddings`: items, dimension, model and layer, skipped items,
    and the items per class when labels are known."""
    from collections import Counter
    from html import escape

    count, dim = stored.vectors.shape
    where = f"input of {stored.layer}" if stored.inputs else f"pooled output of {stored.layer}"
    facts = [
        ("items", str(count)),
        ("dimension", str(dim)),
        ("model", str(stored.model)),
        ("features", where),
        ("data", str(stored.data)),
        ("skipped", str(len(stored.errors))),
    ]
    labels = Counter(label for label in stored.labels if label >= 0)
    for label, number in sorted(labels.items()):
        name = stored.classes[label] if stored.classes else f"class {label}"
        facts.append((name, f"{number} items"))
    rows = "".join(
        f"<tr><th style='text-align:left'>{escape(k)}</th><td>{escape(v)}</td></tr>"
        for k, v in facts
    )
    return f"<table><caption>embeddings</caption><tbody>{rows}</tbody></table>"
