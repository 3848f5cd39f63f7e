"""The explain panel: the input picture beside one overlay per explained map, each titled
with the method, the class and its probability (or score). Draws only; computes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from convlens.render.images import image_grid, overlay


@dataclass(frozen=True)
class PanelTile:
    """One overlay tile: a raw map ``Tensor[H, W]`` (any range) and its title."""

    values: torch.Tensor
    title: str


def tile_title(method: str, class_name: str | None, score: float, probability: float | None) -> str:
    """``"gradcam: tabby p=0.62"`` (``score=`` when there is no probability)."""
    what = f" {class_name}" if class_name else ""
    value = f"p={probability:.2f}" if probability is not None else f"score={score:.3g}"
    return f"{method}:{what} {value}"


def display_values(values: torch.Tensor) -> torch.Tensor:
    """A map made ready to colour: signed maps (with negative values) are shown by
    magnitude, then scaled to [0, 1] by min and max (a constant map becomes zeros)."""
    values = values.detach().double()
    if bool((values < 0).any()):
        values = values.abs()
    low, high = values.min(), values.max()
    if float(high - low) <= 0:
        return torch.zeros_like(values)
    return (values - low) / (high - low)


def explanation_panel(
    image: np.ndarray,
    tiles: Sequence[PanelTile],
    input_title: str = "input",
    columns: int = 6,
    alpha: float = 0.5,
) -> np.ndarray:
    """``uint8`` grid: ``image`` (``uint8[H, W, 3]``) first, then each tile's map overlaid on
    it (jet colormap, ``alpha`` opacity). At most ``columns`` tiles per row."""
    pictures = [image] + [overlay(image, display_values(t.values), alpha=alpha) for t in tiles]
    titles = [input_title] + [t.title for t in tiles]
    return image_grid(pictures, titles, columns=min(columns, len(pictures)))
