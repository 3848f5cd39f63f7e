"""Render basics: exact map alignment, colour range, grid layout, PNG round trip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convlens.errors import ConvlensError
from convlens.render import colorize, image_grid, overlay, save_png


def test_overlay_aligns_map_cells_on_non_square_image():
    image = np.zeros((40, 60, 3), np.uint8)  # 3:2, height 40, width 60
    values = np.zeros((4, 6))
    values[1, 4] = 1.0  # one hot cell: rows 10..19, columns 40..49
    out = overlay(image, values, alpha=1.0, cmap="gray")
    hot = out[..., 0] > 127
    rows, cols = np.nonzero(hot)
    assert rows.min() >= 8 and rows.max() <= 21 and cols.min() >= 38 and cols.max() <= 51
    assert hot[15, 45] and not hot[15, 15] and not hot[35, 45]


def test_colorize_range_and_alpha_blend():
    gray = colorize(np.array([[0.0, 0.5, 1.0, 2.0]]), cmap="gray")
    assert gray[0, :, 0].tolist() == [0, 128, 255, 255]
    image = np.full((1, 4, 3), 100, np.uint8)
    assert overlay(image, np.zeros((1, 4)), alpha=0.0, cmap="gray").tolist() == image.tolist()
    with pytest.raises(ConvlensError, match="alpha"):
        overlay(image, np.zeros((1, 4)), alpha=2)


def test_grid_places_tiles_in_rows():
    tiles = [np.full((10, 12, 3), value, np.uint8) for value in (10, 20, 30)]
    grid = image_grid(tiles, columns=2, padding=2, title_height=0)
    assert grid.shape == (2 * 12 + 2, 2 * 14 + 2, 3)
    assert grid[2, 2, 0] == 10 and grid[2, 16, 0] == 20 and grid[14, 2, 0] == 30
    assert grid[14, 16, 0] == 255  # empty cell stays background
    with pytest.raises(ConvlensError, match="share one size"):
        image_grid([tiles[0], np.zeros((5, 5, 3), np.uint8)])


def test_save_png_round_trip(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (7, 9, 3), np.uint8)
    path = save_png(pixels, tmp_path / "sub" / "x.png")
    assert np.array_equal(np.asarray(Image.open(path)), pixels)
