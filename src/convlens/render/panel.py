"""The explain panel: the input picture beside one overlay per explained map, each titled
with the method, the class and its probability (or score). Draws only; computes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from convlens.render.images import image_grid, overlay_map


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


def explanation_panel(
    image: np.ndarray,
    tiles: Sequence[PanelTile],
    input_title: str = "input",
    columns: int = 6,
    alpha: float = 0.5,
) -> np.ndarray:
    """``uint8`` grid: ``image`` (``uint8[H, W, 3]``) first, then each tile's map overlaid on
    it with ``alpha`` opacity by the rule of `overlay_map` (non-negative maps min-max in jet,
    signed maps centred at 0 in blue-white-red). At most ``columns`` tiles per row."""
    pictures = [image] + [overlay_map(image, t.values, alpha=alpha) for t in tiles]
    titles = [input_title] + [t.title for t in tiles]
    return image_grid(pictures, titles, columns=min(columns, len(pictures)))
