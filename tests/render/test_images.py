"""Render basics: exact map alignment, colour range, the map display rule, grid layout, PNG
round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.errors import ConvlensError
from convlens.maps import resize_maps
from convlens.render import colorize, image_grid, overlay, save_png
from convlens.render.images import map_display, overlay_map


def test_overlay_aligns_map_cells_on_non_square_image():
    image = np.zeros((40, 60, 3), np.uint8)  # 3:2, height 40, width 60: cells are 10 x 10
    # Bilinear with pixel centres aligned: a hot map row is above 0.5 exactly on its own 10
    # image rows (source coordinate (y + 0.5) / 10 - 0.5 within 0.5 of map row 1).
    hot_row, hot_col = np.zeros((4, 6)), np.zeros((4, 6))
    hot_row[1, :] = 1.0
    hot_col[:, 4] = 1.0
    rows = overlay(image, hot_row, alpha=1.0, cmap="gray")[..., 0] > 127
    cols = overlay(image, hot_col, alpha=1.0, cmap="gray")[..., 0] > 127
    expected_rows, expected_cols = np.zeros((40, 60), bool), np.zeros((40, 60), bool)
    expected_rows[10:20, :] = True
    expected_cols[:, 40:50] = True
    assert np.array_equal(rows, expected_rows) and np.array_equal(cols, expected_cols)
    # one hot cell: its upsampled mass is centred on the cell's 10 x 10 block
    cell = np.zeros((4, 6))
    cell[1, 4] = 1.0
    up = resize_maps(torch.from_numpy(cell)[None], (40, 60))[0].numpy()
    ys, xs = np.mgrid[0:40, 0:60]
    centre = ((up * ys).sum() / up.sum(), (up * xs).sum() / up.sum())
    assert np.allclose(centre, (14.5, 44.5))
    assert np.unravel_index(up.argmax(), up.shape)[0] in (14, 15)
    # a 2:3 image takes the transposed map onto the transposed block
    tall = overlay(np.zeros((60, 40, 3), np.uint8), hot_row.T, alpha=1.0, cmap="gray")
    assert np.array_equal(tall[..., 0] > 127, expected_rows.T)


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


def test_grid_titles_sit_above_their_tiles():
    tiles = [np.full((10, 12, 3), value, np.uint8) for value in (10, 20)]
    grid = image_grid(tiles, titles=["a", "b"], columns=1, padding=2, title_height=14)
    assert grid.shape == (2 * (10 + 14 + 2) + 2, 12 + 2 * 2, 3)
    assert grid[2 + 14, 2, 0] == 10 and grid[2 + 14 + 9, 2 + 11, 0] == 10
    assert grid[2 + 26 + 14, 2, 0] == 20
    assert (grid[2 : 2 + 14, 2:14] != 255).any()  # a title was drawn in the title band
    with pytest.raises(ConvlensError, match="2 titles for 3 images"):
        image_grid(tiles + tiles[:1], titles=["a", "b"])


def test_colorize_jet_ends_and_save_png_refuses_floats(tmp_path):
    ends = colorize(np.array([[0.0, 1.0]]), cmap="jet")
    assert ends[0, 0].tolist() == [0, 0, 128] and ends[0, 1].tolist() == [128, 0, 0]
    shifted = colorize(np.array([[10.0, 20.0]]), cmap="gray", vmin=10, vmax=20)
    assert shifted[0, :, 0].tolist() == [0, 255]
    with pytest.raises(ConvlensError, match="uint8"):
        save_png(np.zeros((2, 2)), tmp_path / "x.png")


def test_map_display_min_max_for_non_negative_and_centred_for_signed_maps():
    unit, signed = map_display(np.array([[0.0, 1.0], [2.0, 4.0]]))
    assert not signed and unit.tolist() == [[0.0, 0.25], [0.5, 1.0]]
    unit, signed = map_display(np.array([[-1.0, 0.0], [4.0, 2.0]]))  # symmetric about 0
    assert signed and unit.tolist() == [[0.375, 0.5], [1.0, 0.75]]
    unit, _ = map_display(np.full((3, 5), 7.0))
    assert unit.tolist() == np.zeros((3, 5)).tolist()  # constant: zeros, never NaN
    with pytest.raises(ConvlensError, match="NaN"):
        map_display(np.array([[0.0, np.nan]]))
    with pytest.raises(ConvlensError, match="2-D"):
        map_display(np.zeros((1, 2, 2)))


def test_map_display_saturates_outliers_but_keeps_sparse_maps():
    ramp = np.linspace(0.0, 1.0, 199)
    unit, _ = map_display(np.append(ramp, 1000.0)[None])  # one extreme pixel in 200
    assert np.allclose(unit[0, :199].numpy(), ramp) and float(unit[0, 199]) == 1.0
    unit, _ = map_display(-np.append(ramp, 1000.0)[None])  # the same, signed
    assert np.allclose(unit[0, :199].numpy(), 0.5 - ramp / 2) and float(unit[0, 199]) == 0.0
    hot = np.zeros((20, 20))
    hot[3, 4] = 0.1  # one pixel in 400: its 99th percentile is 0, so the max scales
    unit, signed = map_display(hot)
    assert not signed and float(unit[3, 4]) == 1.0 and float(unit.sum()) == 1.0


def test_overlay_map_colours_signed_maps_with_a_diverging_colormap():
    image = np.zeros((1, 3, 3), np.uint8)
    signed = overlay_map(image, np.array([[-2.0, 0.0, 2.0]]), alpha=1.0)
    assert signed.tolist() == colorize(np.array([[0.0, 0.5, 1.0]]), cmap="bwr").tolist()
    assert signed[0, 0, 2] > signed[0, 0, 0] and signed[0, 2, 0] > signed[0, 2, 2]  # blue, red
    plain = overlay_map(image, np.array([[1.0, 2.0, 3.0]]), alpha=1.0)
    assert plain.tolist() == colorize(np.array([[0.0, 0.5, 1.0]]), cmap="jet").tolist()
    gray = overlay_map(image, np.array([[-2.0, 0.0, 2.0]]), alpha=1.0, cmap="gray")
    assert gray[0, :, 0].tolist() == [0, 128, 255]  # cmap overrides the colours only


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (5, 7, 4), (1, 1, 3), (3, 200, 3)])
def test_png_bytes_decode_to_the_same_pixels(shape):
    import io

    from convlens.render.images import png_bytes

    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    pixels[-1] = pixels[0]  # a repeated row (Up filters it to zeros) when H > 1
    for level in (0, 1):
        decoded = np.asarray(Image.open(io.BytesIO(png_bytes(pixels, level))))
        assert decoded.shape == pixels.shape and np.array_equal(decoded, pixels)
    with pytest.raises(ConvlensError, match="uint8"):
        png_bytes(pixels.astype(np.float32))
    with pytest.raises(ConvlensError, match=r"\[H, W, 3\]"):
        png_bytes(np.zeros((4, 4, 2), np.uint8))


@pytest.mark.parametrize("cmap", ["jet", "bwr", "gray", "tab10"])
def test_colorize_gives_matplotlibs_pixels(cmap):
    import matplotlib

    edges = np.arange(257) / 256  # every bin boundary, 0 and 1 included
    values = np.concatenate([np.random.default_rng(1).random(2000), edges, [np.nan, -2.0, 3.0]])
    reference = matplotlib.colormaps[cmap](np.clip(values, 0, 1))[:, :3]
    expected = (reference * 255).round().astype(np.uint8)
    assert np.array_equal(colorize(values[None], cmap)[0], expected)
