"""Boxes drawn over pictures, and the colour bar that says what a map's colours mean."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from convlens.errors import ConvlensError
from convlens.render.images import _as_numpy, _font, colorize


def draw_boxes(
    image, boxes, colour: tuple[int, int, int] = (0, 255, 0), width: int = 2
) -> np.ndarray:
    """``uint8[H, W, 3]`` with each box of ``boxes`` (``Tensor[k, 4]`` of ``(x0, y0, x1,
    y1)`` pixels, x1/y1 exclusive, as `convlens.localize.maps_to_boxes` gives) outlined in
    ``colour``. The input is not modified."""
    pixels = _as_numpy(image)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ConvlensError(f"draw_boxes needs uint8[H, W, 3], got {pixels.dtype} {pixels.shape}")
    canvas = Image.fromarray(pixels.copy())
    draw = ImageDraw.Draw(canvas)
    for x0, y0, x1, y1 in torch.as_tensor(boxes).reshape(-1, 4).tolist():
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=colour, width=width)
    return np.asarray(canvas)


def colour_bar(
    cmap: str, low: str, high: str, middle: str | None = None, width: int = 256, height: int = 14
) -> np.ndarray:
    """A horizontal ``uint8[height + 14, width, 3]`` strip of ``cmap`` from 0 to 1, with
    ``low``, ``middle`` (when given) and ``high`` written under its left, centre and right."""
    ramp = colorize(np.tile(np.linspace(0.0, 1.0, width), (height, 1)), cmap)
    canvas = Image.new("RGB", (width, height + 14), (255, 255, 255))
    canvas.paste(Image.fromarray(ramp), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(11)
    labels = [(low, 1.0), (high, width - 1.0 - draw.textlength(high, font=font))]
    if middle is not None:
        labels.append((middle, (width - draw.textlength(middle, font=font)) / 2))
    for text, left in labels:
        draw.text((left, height + 1), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)
