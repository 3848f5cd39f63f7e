"""The explain panel's colour scales and gradient images; figure files by extension."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convlens.errors import ConvlensError
from convlens.files import owned
from convlens.render.figures import check_writable, output_path, save_image
from convlens.render.images import overlay_map
from convlens.render.panel import (
    PanelTile,
    explanation_panel,
    gradient_image,
    tile_limits,
    tile_pixels,
    tile_title,
)


def _tiles():
    weak = torch.linspace(0, 1, 100).view(10, 10)
    return [
        PanelTile(weak, "a", "gradcam"),
        PanelTile(weak * 10, "b", "gradcam"),
        PanelTile(weak - 0.5, "c", "occlusion"),
    ]


def test_per_map_tiles_are_drawn_exactly_like_overlay_map():
    image = np.random.default_rng(0).integers(0, 256, (10, 10, 3), np.uint8)
    for tile, limits in zip(_tiles(), tile_limits(_tiles(), "per-map"), strict=True):
        assert np.array_equal(
            tile_pixels(image, tile.values, limits), overlay_map(image, tile.values)
        )


def test_shared_and_absolute_scales_are_one_range_per_method():
    per_map = tile_limits(_tiles(), "per-map")
    shared = tile_limits(_tiles(), "shared")
    absolute = tile_limits(_tiles(), "absolute")
    assert per_map[0][1] < per_map[1][1]  # each map its own top
    assert shared[0] == shared[1] == (0.0, per_map[1][1])  # one range for gradcam
    assert absolute[0] == absolute[1] == (0.0, 10.0)  # from 0 to the largest value
    assert shared[2] == per_map[2] and shared[2][0] == -shared[2][1]  # signed: symmetric
    assert absolute[2] == (-0.5, 0.5)
    with pytest.raises(ConvlensError, match="per-map, shared, absolute"):
        tile_limits(_tiles(), "global")


def test_gradient_image_is_grey_at_zero_and_keeps_the_sign_per_colour():
    gradient = torch.zeros(3, 4, 4)
    gradient[0, 0, 0], gradient[2, 1, 1] = 1.0, -1.0
    pixels = gradient_image(gradient)
    assert pixels.shape == (4, 4, 3) and pixels.dtype == np.uint8
    assert tuple(pixels[3, 3]) == (128, 128, 128)
    assert pixels[0, 0, 0] == 255 and pixels[0, 0, 1] == 128
    assert pixels[1, 1, 2] == 0
    assert tuple(gradient_image(torch.zeros(3, 2, 2))[0, 0]) == (128, 128, 128)


def test_titles_name_method_layer_class_and_contrast():
    assert tile_title("gradcam", "tabby", 3.0, 0.62, layer="bn2") == "gradcam @ bn2\ntabby p=0.62"
    contrast = tile_title("gradcam", "tabby", 8.4, 0.1, layer="bn2", rather_than="espresso")
    assert "tabby rather than espresso" in contrast and "8.4" in contrast


def test_panel_has_a_colourbar_beside_each_overlay_tile():
    image = np.full((32, 32, 3), 200, np.uint8)
    one = explanation_panel(image, _tiles()[:1], columns=2)
    plain = explanation_panel(
        image, [PanelTile(torch.zeros(32, 32), "z", "g", image, "")], columns=2
    )

    # The colourbar (jet, from dark blue to dark red) appears only beside the overlay tile.
    def reddish(panel):
        return int(((panel[..., 0] > 120) & (panel[..., 1] < 40) & (panel[..., 2] < 40)).sum())

    assert reddish(one) > 20 and reddish(plain) == 0


@pytest.mark.parametrize(
    ("suffix", "magic"), [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")]
)
def test_pictures_are_written_in_the_format_their_extension_names(tmp_path, suffix, magic):
    path = save_image(np.zeros((6, 8, 3), np.uint8), tmp_path / f"x{suffix}")
    data = path.read_bytes()
    assert data.startswith(magic) and owned(path)
    if suffix == ".svg":
        assert b"<svg" in data[:2000]
    check_writable(path)  # ours: may be overwritten


def test_output_path_folders_and_refusals(tmp_path):
    (tmp_path / "dir").mkdir()
    assert output_path(str(tmp_path / "dir"), "f.png") == tmp_path / "dir" / "f.png"
    assert output_path(str(tmp_path / "new") + "/", "f.png") == tmp_path / "new" / "f.png"
    theirs = tmp_path / "photo.png"
    theirs.write_bytes(b"\x89PNG not ours")
    with pytest.raises(ConvlensError, match="convlens did not write it.*--force"):
        output_path(str(theirs), "f.png")
    assert output_path(str(theirs), "f.png", force=True) == theirs
    with pytest.raises(ConvlensError, match=r"\.png, \.pdf or \.svg"):
        output_path(str(tmp_path / "notes.txt"), "f.png")
    assert theirs.read_bytes() == b"\x89PNG not ours"
