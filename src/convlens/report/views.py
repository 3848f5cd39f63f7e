"""One explained map as something to look at: the overlay, the box the map implies, and the
colour scale of the raw values. Shared by the HTML report and the web view."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convlens.attribution.explain import Explanation
from convlens.localize import maps_to_boxes
from convlens.render.boxes import colour_bar
from convlens.render.images import (
    DIVERGING_CMAP,
    SEQUENTIAL_CMAP,
    display_range,
    png_data_uri,
)

BOX_FRACTION = 0.2  # the CAM paper's threshold (Zhou et al. 2016), as in maps_to_boxes


@dataclass(frozen=True)
class ColourScale:
    """The raw map values drawn at the two ends of ``cmap`` (``low = -high`` when signed)."""

    cmap: str
    low: float
    high: float
    signed: bool

    def bar(self) -> np.ndarray:
        """``uint8[28, 256, 3]``: the colormap with its end values (and 0 when signed)."""
        return colour_bar(
            self.cmap, f"{self.low:.3g}", f"{self.high:.3g}", "0" if self.signed else None
        )

    def text(self) -> str:
        """The raw values at the ends in words, e.g. ``"raw values -0.5 (blue) .. 0.5 (red),
        white = 0"``."""
        if self.low == self.high:
            return f"constant map: every raw value is {self.low:.3g}"
        middle = ", white = 0" if self.signed else ""
        return f"raw values {self.low:.3g} (blue) .. {self.high:.3g} (red){middle}"

    def record(self) -> dict:
        """JSON-ready: cmap, low, high, signed and the bar as a PNG data URI."""
        return {
            "cmap": self.cmap,
            "low": self.low,
            "high": self.high,
            "signed": self.signed,
            "bar": png_data_uri(self.bar()),
        }


@dataclass(frozen=True)
class MapView:
    """Row ``row`` of an `Explanation`: ``overlay`` ``uint8[H, W, 3]`` (the map over the
    image the model saw), ``box`` ``(x0, y0, x1, y1)`` pixels of the largest region above
    20% of the map's range (None for a constant map), and the map's `ColourScale`."""

    explanation: Explanation
    row: int
    overlay: np.ndarray
    box: tuple[float, float, float, float] | None
    scale: ColourScale

    @property
    def class_id(self) -> int | None:
        ids = self.explanation.class_ids
        return None if ids is None else int(ids[self.row])

    @property
    def class_name(self) -> str | None:
        names = self.explanation.class_names
        return None if names is None else names[self.row]

    @property
    def score(self) -> float:
        return float(self.explanation.scores[self.row])

    @property
    def probability(self) -> float | None:
        values = self.explanation.probabilities
        return None if values is None else float(values[self.row])

    @property
    def rather_than_id(self) -> int | None:
        """The class a contrast row is explained against (None without a contrast)."""
        ids = self.explanation.rather_than_ids
        return None if ids is None else int(ids[self.row])

    @property
    def rather_than_name(self) -> str | None:
        names = self.explanation.rather_than_names
        return None if names is None else names[self.row]

    @property
    def rather_than_probability(self) -> float | None:
        values = self.explanation.rather_than_probabilities
        return None if values is None else float(values[self.row])

    @property
    def title(self) -> str | None:
        """``"A"``, or ``"A rather than B"`` for a contrast row (None without a class)."""
        if self.class_name is None:
            return None
        if self.rather_than_id is None:
            return self.class_name
        return f"{self.class_name} rather than {self.rather_than_name}"


def map_view(explanation: Explanation, row: int = 0, alpha: float = 0.5) -> MapView:
    """The `MapView` of ``explanation``'s row ``row`` (it must know its display image)."""
    values = explanation.maps[row]
    low, high, signed = display_range(values)
    scale = ColourScale(DIVERGING_CMAP if signed else SEQUENTIAL_CMAP, low, high, signed)
    return MapView(explanation, row, explanation.overlay(row, alpha=alpha), map_box(values), scale)


def map_box(values) -> tuple[float, float, float, float] | None:
    """The box of the largest connected region of a map ``Tensor[H, W]`` above 20% of its
    range (`maps_to_boxes`); None when the map is constant. A signed map is boxed on its
    positive part (where the evidence is *for* the class)."""
    positive = values.clamp(min=0) if bool((values < 0).any()) else values
    boxes = maps_to_boxes(positive[None].float(), fraction=BOX_FRACTION)[0]
    if len(boxes) == 0:
        return None
    return tuple(float(v) for v in boxes[0])
