"""Explain panels say what they show: titles wrapped to their tile, a note instead of a
colourbar of no range on a constant map, the explained region outlined (issue 20, item 5)."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.patches import Rectangle

from convlens.render.panel import (
    PanelTile,
    constant_note,
    explanation_figure,
    tile_title,
    wrapped_title,
)

IMAGE = np.full((32, 32, 3), 128, np.uint8)
LONG = tile_title(
    "integrated_gradients", "Egyptian cat", 4.142, None, "features.12", "tiger cat"
)


def test_wrapped_title_keeps_every_word_and_the_width():
    wrapped = wrapped_title(LONG, 20)
    assert wrapped.split() == LONG.split()
    assert max(len(line) for line in wrapped.splitlines()) <= 20


def test_constant_note_names_zero_and_constant_maps_only():
    assert constant_note(torch.zeros(4, 4)) == "map is 0 everywhere"
    assert constant_note(torch.full((4, 4), 2.5)) == "map is constant (2.5)"
    assert constant_note(torch.arange(16.0).view(4, 4)) == ""


def _title_boxes(figure):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    return [
        axes.title.get_window_extent(renderer)
        for axes in figure.axes
        if axes.get_title()  # colourbars have none
    ]


def test_long_titles_of_neighbouring_tiles_do_not_overlap():
    generator = torch.Generator().manual_seed(0)
    tiles = [PanelTile(torch.rand(32, 32, generator=generator), LONG, "m") for _ in range(3)]
    boxes = _title_boxes(explanation_figure(IMAGE, tiles, columns=4, width=6.0))
    for left, right in zip(boxes, boxes[1:], strict=False):
        assert left.x1 <= right.x0 + 1  # one pixel of anti-aliasing


def test_a_zero_map_gets_a_note_and_no_colourbar():
    tiles = [PanelTile(torch.zeros(32, 32), "region", "m"), PanelTile(torch.rand(32, 32), "b")]
    figure = explanation_figure(IMAGE, tiles)
    assert len(figure.axes) == 3 + 1  # input, two tiles, one colourbar (the varied map's)
    texts = [text.get_text() for axes in figure.axes for text in axes.texts]
    assert "map is 0 everywhere" in texts


def test_the_region_is_outlined_on_the_input_and_every_tile():
    tiles = [PanelTile(torch.rand(32, 32), "a"), PanelTile(torch.zeros(32, 32), "b")]
    figure = explanation_figure(IMAGE, tiles, region=(4, 6, 20, 30))
    outlined = [a for a in figure.axes if any(isinstance(p, Rectangle) for p in a.patches)]
    assert len(outlined) == 3
    (box,) = [p for p in outlined[0].patches if isinstance(p, Rectangle)]
    assert (box.get_x(), box.get_y(), box.get_width(), box.get_height()) == (3.5, 5.5, 16, 24)


def test_run_limits_share_one_range_per_method_across_panels():
    from convlens.render.panel import run_limits

    small = [PanelTile(torch.full((4, 4), 0.5) * torch.eye(4), "a", "gradcam")]
    large = [
        PanelTile(torch.eye(4) * 3.0, "a", "gradcam"),
        PanelTile(-torch.eye(4), "b", "saliency"),
    ]
    (first,), (second, other) = run_limits([small, large], "absolute")
    assert first == second == (0.0, 3.0)  # the run's largest gradcam value, both panels
    assert other == (-1.0, 1.0)
    per_map = run_limits([small, large], "per-map")
    assert per_map[0][0] != per_map[1][0]
