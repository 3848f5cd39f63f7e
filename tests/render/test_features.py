"""The pictures of `convlens.render.features`: what each tile shows is checked pixel by
pixel against the tensor it draws (colour maps computed here with matplotlib directly)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from convlens.features.activations import FeatureMaps, feature_maps, layer_activation
from convlens.features.filters import filter_tiles
from convlens.render.features import (
    feature_map_grid,
    filter_caption,
    filter_grid,
    gram_heatmap,
    layer_means_grid,
    mask_overlay,
    projection_image,
)

PAD, TITLE = 4, 14  # the grid layout of render.images.image_grid with title_height=14


def tile_at(grid: np.ndarray, index: int, tile: int, columns: int, count: int) -> np.ndarray:
    """Tile ``index`` of a captioned grid of ``count`` square tiles."""
    rows = -(-count // columns)
    caption = grid.shape[0] - (rows * (tile + TITLE + PAD) + PAD)
    assert caption > 0  # every figure here has a caption strip on top
    row, col = divmod(index, columns)
    y = caption + PAD + row * (tile + TITLE + PAD) + TITLE
    x = PAD + col * (tile + PAD)
    return grid[y : y + tile, x : x + tile]


def cmap(name: str, values: torch.Tensor) -> np.ndarray:
    rgba = matplotlib.colormaps[name](np.clip(values.double().numpy(), 0, 1))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def test_feature_map_grid_tiles_are_the_captured_activation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 10, 3, padding=1), nn.ReLU())
    image = torch.randn(3, 8, 8)
    maps = feature_maps(net, image, "1", top=10)
    grid = feature_map_grid(maps, tile=8)
    activation = layer_activation(net, image[None], "1")[0]
    for k in (0, 3, 9):  # 8 columns: 9 is on the second row
        channel = activation[maps.channels[k]]
        expected = cmap("viridis", channel / channel.max())  # 0 -> dark, own max -> yellow
        np.testing.assert_array_equal(tile_at(grid, k, 8, 8, 10), expected)


def test_feature_map_grid_keeps_negative_values_visible_and_enlarges_exactly():
    values = torch.tensor([[[-2.0, 0.0], [1.0, 2.0]], [[0.5, 0.0], [0.0, 0.25]]])
    maps = FeatureMaps("x", values, torch.tensor([4, 7]), values.mean((1, 2)))
    grid = feature_map_grid(maps, tile=4)
    first = tile_at(grid, 0, 4, 2, 2)
    # Signed layer: RdBu_r over [-max|a|, max|a|] per tile, white at 0; no clipping.
    expected = cmap("RdBu_r", (values[0] / 2 + 1) / 2)
    np.testing.assert_array_equal(first[::2, ::2], expected)  # 2x2 blocks, nearest
    np.testing.assert_array_equal(first[1::2, 1::2], expected)
    assert not np.array_equal(expected[0, 0], expected[0, 1])  # -2 is not drawn as 0
    second = tile_at(grid, 1, 4, 2, 2)
    np.testing.assert_array_equal(second[::2, ::2], cmap("RdBu_r", (values[1] / 0.5 + 1) / 2))


def test_filter_grid_tiles_are_the_weights_and_the_caption_states_the_scaling():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3))
    weights = net[0].weight.detach()
    for scaling, peak in (("per_filter", weights[3].abs().max()), ("shared", weights.abs().max())):
        tiles = filter_tiles(net, scaling=scaling)
        grid = filter_grid(tiles, tile=30)  # 10 pixels per weight
        drawn = tile_at(grid, 3, 30, 5, 5)[5::10, 5::10]  # one pixel per weight
        expected = ((0.5 + weights[3] / (2 * peak)).permute(1, 2, 0) * 255).round()
        np.testing.assert_array_equal(drawn, expected.byte().numpy())
        text = filter_caption(tiles)
        assert text.startswith("0: 5 RGB filters;")
        assert ("per-filter scaling" in text) == (scaling == "per_filter")
        assert ("shared scaling" in text) == (scaling == "shared")
    caption = grid[: grid.shape[0] - (30 + TITLE + 2 * PAD)]
    assert caption.min() < 100  # text is drawn on the white strip


def test_layer_means_grid_min_max_per_layer():
    maps = [("a", torch.tensor([[1.0, 3.0], [2.0, 5.0]])), ("b", torch.full((3, 3), 7.0))]
    grid = layer_means_grid(maps, tile=6)
    first = tile_at(grid, 0, 6, 2, 2)
    np.testing.assert_array_equal(first[::3, ::3], cmap("jet", (maps[0][1] - 1) / 4))
    np.testing.assert_array_equal(tile_at(grid, 1, 6, 2, 2), cmap("jet", torch.zeros(6, 6)))


def test_projection_mask_and_gram_pictures():
    projection = torch.zeros(3, 4, 4)
    projection[0, 1, 2], projection[2, 3, 3] = 2.0, -1.0
    picture = projection_image(projection)
    assert picture.shape == (4, 4, 3)
    assert tuple(picture[0, 0]) == (128, 128, 128)  # 0 is mid-grey
    # own range: s = 99th percentile of the reached |p| {1, 2} = 1.99; 0.5 -/+ v / (2 s)
    assert picture[1, 2, 0] == 255 and picture[3, 3, 2] == round(255 * (0.5 - 1 / 3.98))
    assert projection_image(projection, box=(1, 2, 3, 3)).shape == (3, 2, 3)
    # one spike does not grey out the rest: 399 pixels of 1 and one of 1000 -> 1 shows white
    spiky = torch.ones(3, 20, 20)
    spiky[:, 0, 0] = 1000.0
    assert projection_image(spiky)[5, 5, 0] == 255
    shrunk = projection_image(torch.ones(3, 8, 8), size=4)
    assert shrunk.shape == (4, 4, 3) and (shrunk == 255).all()
    display = np.full((2, 2, 3), 200, dtype=np.uint8)
    mask = torch.tensor([[True, False], [False, True]])
    shaded = mask_overlay(display, mask, alpha=0.5)
    assert shaded[0, 0, 0] == 200 and shaded[0, 1, 0] == 100
    heat = gram_heatmap(torch.tensor([[4.0, -2.0], [-2.0, 1.0]]), size=2)
    np.testing.assert_array_equal(heat, cmap("RdBu_r", torch.tensor([[1.0, 0.25], [0.25, 0.625]])))


@pytest.mark.parametrize("reduce", ["mean", "slices"])
def test_grey_filter_tiles_are_drawn_grey(reduce):
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Conv2d(2, 2, 3))
    grid = filter_grid(filter_tiles(net, "1", reduce=reduce), tile=3)
    tile = tile_at(grid, 0, 3, 2 if reduce == "mean" else 4, 2 if reduce == "mean" else 4)
    assert (tile[..., 0] == tile[..., 1]).all() and (tile[..., 1] == tile[..., 2]).all()


def test_image_border_is_marked_where_it_cuts_a_field():
    from convlens.render.features import mark_image_border
    from convlens.scan.patches import inside_part

    # a 10 px field at x0=-3, y0=2 of an 8 x 8 image: columns 3.. and rows ..5 are inside
    assert inside_part((-3, 2, 7, 12), 8, 8) == (3, 0, 10, 6)
    tile = np.zeros((10, 10, 3), np.uint8)
    marked = mark_image_border(tile, (3, 0, 10, 6))
    lines = (marked == (255, 0, 255)).all(-1)
    assert lines[:6, 2].all() and lines[6, 3:].all()  # left edge and bottom edge
    assert lines.sum() == 6 + 7 and not tile.any()  # nothing else; the input is untouched
