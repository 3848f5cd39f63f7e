"""Tensors to pictures: colormaps, overlays, labelled grids, PNG files. Nothing here computes
an attribution; everything takes plain arrays or tensors."""

from __future__ import annotations

import base64
import functools
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from convlens.errors import ConvlensError
from convlens.files import MARK, atomic_file
from convlens.maps import resize_maps


def _as_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def colorize(values, cmap: str = "jet", vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """A map ``[H, W]`` to ``uint8[H, W, 3]`` with a matplotlib colormap over [vmin, vmax]."""
    values = _as_numpy(values).astype(np.float64)
    if values.ndim != 2:
        raise ConvlensError(f"colorize takes a 2-D map, got shape {values.shape}")
    span = vmax - vmin if vmax > vmin else 1.0
    scaled = np.clip((values - vmin) / span, 0.0, 1.0)
    table, bad = _colour_table(cmap)
    # matplotlib's own lookup: index floor(x * N), with x == 1 in the last entry, NaN "bad".
    index = np.minimum(scaled * len(table), len(table) - 1)
    nan = np.isnan(index)
    has_nan = bool(nan.any())
    if has_nan:
        index[nan] = 0
    pixels = np.take(table, index.astype(np.intp), axis=0)
    if has_nan:
        pixels[nan] = bad
    return pixels


@functools.lru_cache(maxsize=32)
def _colour_table(cmap: str) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8[N, 3], uint8[3])``: the ``N`` entries of matplotlib colormap ``cmap`` and
    its "bad" (NaN) colour, each rounded to 8 bits; `colorize` looks values up in it, which
    gives the pixels matplotlib's float lookup gives, without its float RGBA array."""
    import matplotlib

    colormap = matplotlib.colormaps[cmap]
    table = (colormap(np.arange(colormap.N))[:, :3] * 255).round().astype(np.uint8)
    bad = (np.asarray(colormap.get_bad())[:3] * 255).round().astype(np.uint8)
    table.flags.writeable = False
    return table, bad


def overlay(image, values, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] map over an RGB image ``uint8[H, W, 3]``; a map of another size is
    resized to the image first (exact for non-square images: rows to rows, columns to
    columns). Returns ``uint8[H, W, 3]``."""
    image = _as_numpy(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ConvlensError(f"overlay needs an RGB image [H, W, 3], got shape {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ConvlensError(f"alpha must be in [0, 1], got {alpha}")
    values = torch.as_tensor(_as_numpy(values), dtype=torch.float32)
    heat = colorize(resize_maps(values[None], image.shape[:2])[0].numpy(), cmap)
    blended = (1 - alpha) * image.astype(np.float64) + alpha * heat.astype(np.float64)
    return blended.round().astype(np.uint8)


SEQUENTIAL_CMAP = "jet"
DIVERGING_CMAP = "bwr"
DISPLAY_QUANTILE = 0.99


def map_display(values) -> tuple[torch.Tensor, bool]:
    """The one rule for drawing a raw map ``[H, W]`` (any range): ``([0, 1] values, signed)``.

    Magnitudes above the map's 99th percentile (a value of the map; the maximum for maps of
    up to 100 pixels) saturate: a few extreme pixels, as in guided backprop, would otherwise
    leave the rest near 0. When that percentile is 0 or the map's minimum (a sparse map),
    the maximum is used instead. A map with a negative value
    is *signed*: it is then scaled symmetrically about 0 (``-s -> 0``, ``0 -> 0.5``,
    ``s -> 1``) for a diverging colormap, so the sign stays visible (occlusion, input x
    gradient, Integrated Gradients). Any other map is min-max scaled (a constant map
    becomes zeros). The scaling is `normalize_maps` in both cases.
    """
    from convlens.maps import normalize_maps

    maps = _map_to_draw(values)
    low, top, signed = display_range(maps)
    if not signed:
        return normalize_maps(maps.clamp(max=top)[None])[0], False
    # [-top, top] -> [0, 1] with 0 at 0.5 (top > 0: a signed map has a non-zero value).
    return (maps.clamp(-top, top) / top + 1) / 2, True


def display_range(values) -> tuple[float, float, bool]:
    """``(low, high, signed)``: the raw values that `map_display` draws at the two ends of
    the colormap (``low = -high`` for a signed map; for a constant map ``low == high``)."""
    maps = _map_to_draw(values)
    signed = bool((maps < 0).any())
    magnitude = maps.abs() if signed else maps
    floor = 0.0 if signed else float(maps.min())
    top = float(np.quantile(magnitude.numpy(), DISPLAY_QUANTILE, method="higher"))
    if top <= floor:
        top = float(magnitude.max())
    return (-top if signed else floor), top, signed


def _map_to_draw(values) -> torch.Tensor:
    maps = torch.as_tensor(_as_numpy(values)).detach().double()
    if maps.dim() != 2:
        raise ConvlensError(f"a map to draw must be 2-D [H, W], got shape {tuple(maps.shape)}")
    return maps


def overlay_map(image, values, alpha: float = 0.5, cmap: str | None = None) -> np.ndarray:
    """Blend a raw map (any range, any size) over ``uint8[H, W, 3]`` by the rule of
    `map_display`: non-negative maps in ``"jet"`` (min-max), signed maps in ``"bwr"``
    (blue < 0 < red, white at 0). ``cmap`` overrides the colormap, not the scaling.
    Returns ``uint8[H, W, 3]``."""
    unit, signed = map_display(values)
    chosen = cmap or (DIVERGING_CMAP if signed else SEQUENTIAL_CMAP)
    return overlay(image, unit, alpha=alpha, cmap=chosen)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def image_grid(
    images: Sequence,
    titles: Sequence[str] | None = None,
    columns: int | None = None,
    padding: int = 4,
    title_height: int = 18,
    background: int = 255,
) -> np.ndarray:
    """Tile ``uint8[H, W, 3]`` (or ``[H, W]``) images of one size into a grid with a title
    above each tile. Returns ``uint8[rows * (H + title + pad), ...]``."""
    if len(images) == 0:
        raise ConvlensError("image_grid needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ConvlensError(f"image_grid got {len(titles)} titles for {len(images)} images")
    if columns is not None and columns < 1:
        raise ConvlensError(f"image_grid needs columns >= 1, got {columns}")
    tiles = [_as_rgb_tile(_as_numpy(image)) for image in images]
    height, width = tiles[0].shape[:2]
    if any(tile.shape[:2] != (height, width) for tile in tiles):
        raise ConvlensError("image_grid tiles must share one size; resize them first")
    columns = columns or min(len(tiles), 8)
    rows = -(-len(tiles) // columns)
    top = title_height if titles else 0
    cell_h, cell_w = height + top + padding, width + padding
    canvas = Image.new(
        "RGB", (columns * cell_w + padding, rows * cell_h + padding), (background,) * 3
    )
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, title_height - 6))
    for index, tile in enumerate(tiles):
        row, col = divmod(index, columns)
        x, y = padding + col * cell_w, padding + row * cell_h
        canvas.paste(Image.fromarray(tile), (x, y + top))
        if titles:
            draw.text((x, y + 1), _fit(draw, titles[index], font, width), fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def stacked(pictures: Sequence, gap: int = 8, background: int = 255) -> np.ndarray:
    """``uint8[H, W, 3]`` pictures of any sizes, top to bottom, left-aligned, ``gap``
    pixels apart, padded with ``background`` to the widest."""
    if len(pictures) == 0:
        raise ConvlensError("stacked needs at least one picture")
    tiles = [_as_rgb_tile(_as_numpy(picture)) for picture in pictures]
    width = max(tile.shape[1] for tile in tiles)
    height = sum(tile.shape[0] for tile in tiles) + gap * (len(tiles) - 1)
    canvas = np.full((height, width, 3), background, np.uint8)
    top = 0
    for tile in tiles:
        canvas[top : top + tile.shape[0], : tile.shape[1]] = tile
        top += tile.shape[0] + gap
    return canvas


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def _as_rgb_tile(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.dtype != np.uint8:
        raise ConvlensError("image_grid takes uint8 images; use colorize() for maps")
    return image


_PNG_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)


def png_bytes(image, compress_level: int = 1) -> bytes:
    """``uint8[H, W, 3]`` (or ``[H, W]``, ``[H, W, 4]``) encoded as PNG, lossless.

    Every row uses PNG's "Up" filter (the byte-wise difference from the row above, computed
    in numpy) and is deflated with zlib's run-length strategy (``compress_level`` 0 stores
    the rows uncompressed; 1 to 9 give the same bytes, as that strategy has no levels). For
    a 224-pixel map over a photo this takes about a third of the time of Pillow's encoder
    at level 1 (which tries five filters on every row), for a file of about the same size."""
    array = np.ascontiguousarray(_as_numpy(image))
    if array.dtype != np.uint8:
        raise ConvlensError(f"PNG encoding takes uint8 pixels, got {array.dtype}")
    channels = 1 if array.ndim == 2 else (array.shape[2] if array.ndim == 3 else 0)
    if channels not in _PNG_COLOUR_TYPES or array.shape[0] == 0 or array.shape[1] == 0:
        raise ConvlensError(
            f"PNG encoding takes a non-empty [H, W], [H, W, 3] or [H, W, 4] image, got "
            f"shape {array.shape}"
        )
    height, width = array.shape[:2]
    rows = array.reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), np.uint8)
    filtered[:, 0] = 2  # filter type Up; the row above the first counts as zeros
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as PNG defines
    packer = zlib.compressobj(compress_level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = packer.compress(filtered.data) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    return b"".join(
        (b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header), _chunk(b"IDAT", data), _chunk(b"IEND", b""))
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_data_uri(image) -> str:
    """``uint8[H, W, 3]`` as a ``data:image/png;base64,...`` URI (for self-contained pages
    and web answers), encoded by `png_bytes`."""
    data = png_bytes(image)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def save_png(image, path: str | Path, force: bool | None = None) -> Path:
    """Write ``uint8[H, W, 3]`` (or ``[H, W]``) as a PNG, creating parent folders, all or
    nothing and never over a file convlens did not write unless ``force``
    (`convlens.files.atomic_file`)."""
    path = Path(path)
    array = _as_numpy(image)
    if array.dtype != np.uint8:
        raise ConvlensError(f"save_png takes uint8 pixels, got {array.dtype}")
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", MARK)  # how --out tells our pictures from the user's files
    with atomic_file(path, force=force) as handle:
        Image.fromarray(array).save(handle, format="PNG", pnginfo=info)
    return path
