"""Concept masks of the synthetic scenes: the image is the scene's, the shape map is its
label map, every pixel has a fill and a colour band, and the bands follow hue."""

from __future__ import annotations

import numpy as np
import torch

from convlens.data.concept_masks import (
    COLOUR_BANDS,
    colour_bands,
    concept_data,
    scene_concept_maps,
    scene_concepts,
)
from convlens.data.scenes import FILLS, SCENE_CLASSES, render_scene


def test_scene_maps_match_the_rendered_scene():
    pixels, maps = scene_concept_maps(1, 5, 64)
    scene = render_scene(1, 5, 64)
    assert np.array_equal(pixels, (scene.image * 255).round().byte().permute(1, 2, 0).numpy())
    assert torch.equal(maps[0] + 1, scene.label_map)  # shape -1 on the background
    assert 0 <= int(maps[1].min()) and int(maps[1].max()) < len(FILLS)
    assert 0 <= int(maps[2].min()) and int(maps[2].max()) < len(COLOUR_BANDS)
    names = [c.name for c in scene_concepts()]
    assert names == [*SCENE_CLASSES, *FILLS, *COLOUR_BANDS] and len(set(names)) == 17
    assert concept_data("scenes-test:3").name == "scenes-test:3"


def test_colour_bands_follow_hue_and_grey():
    colours = np.array(
        [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1], [1, 0, 0.4]]
    )
    assert colour_bands(colours).tolist() == [0, 1, 2, 3, 4, 5, 0]  # 336 degrees is red
    greys = np.array([[0.5, 0.5, 0.5], [0.1, 0.0, 0.2], [1.0, 0.9, 0.85]])  # grey, dark, pale
    assert colour_bands(greys).tolist() == [COLOUR_BANDS.index("grey")] * 3
