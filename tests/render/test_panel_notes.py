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
LONG = tile_title("integrated_gradients", "Egyptian cat", 4.142, None, "features.12", "tiger cat")


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
    captions = [axes.get_xlabel() for axes in figure.axes]
    assert "map is 0 everywhere" in captions


def _inside_the_picture(figure) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure.set_dpi(100)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)  # the constrained layout runs on drawing
    bounds = figure.bbox
    texts = [text for axes in figure.axes for text in (axes.title, axes.xaxis.label, *axes.texts)]
    shown = [text for text in texts if text.get_text() and text.get_visible()]
    assert shown
    for text in shown:
        box = text.get_window_extent(renderer)
        assert box.x0 >= bounds.x0 - 1 and box.x1 <= bounds.x1 + 1, text.get_text()
        assert box.y0 >= bounds.y0 - 1 and box.y1 <= bounds.y1 + 1, text.get_text()


def test_titles_and_notes_stay_inside_the_picture_when_no_tile_has_a_colourbar():
    # every map constant: no colourbar takes width, so the images are taller than usual
    image, zeros = np.full((224, 224, 3), 128, np.uint8), torch.zeros(224, 224)
    title = "gradcam for tabby rather than espresso (logit difference 4.14)"  # two lines
    note = "deconvnet on this network gives an image-independent pattern"
    tiles = [PanelTile(zeros, title, "m"), PanelTile(zeros, "saliency", note=note)]
    _inside_the_picture(explanation_figure(image, tiles, input_title="cat.jpg"))
    mixed = [*tiles, PanelTile(torch.rand(224, 224), LONG, "m")] * 2
    _inside_the_picture(explanation_figure(image, mixed, input_title=LONG, columns=3))


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
