"""Results show themselves in a notebook: `_repr_png_` is PNG bytes of the result's own
picture, `_repr_html_` a table (the leaderboard's with its floor rows)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from tests.helpers.networks import embedding_net, small_convnet

from convlens import explain, explain_pair
from convlens.evaluate.leaderboard import Leaderboard
from convlens.features.activations import feature_maps
from convlens.features.filters import filter_tiles
from convlens.render.features import feature_map_grid, filter_grid
from convlens.render.images import stacked
from convlens.scan.embed import Embeddings

pytestmark = pytest.mark.usefixtures("one_thread")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decoded(data: bytes) -> np.ndarray:
    assert data[:8] == PNG_SIGNATURE
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_explanation_repr_png_is_its_panel():
    model, images = small_convnet(), torch.randn(2, 3, 16, 16)
    both = explain(model, images, "saliency", target=1)
    picture = both.picture()
    np.testing.assert_array_equal(_decoded(both._repr_png_()), picture)
    # one panel per image, stacked (batch and single maps differ in float rounding, which
    # can move a colourbar tick's pixels, so the layout is compared, not every pixel)
    single = [explain(model, images[i : i + 1], "saliency", target=1).picture() for i in (0, 1)]
    assert picture.shape == stacked(single).shape
    assert np.mean(picture == stacked(single)) > 0.99


def test_pair_picture_shows_both_images():
    model = embedding_net()
    pair = explain_pair(model, torch.randn(3, 16, 16), torch.randn(3, 16, 16), "saliency")
    alone = explain(model, torch.randn(1, 3, 16, 16), "saliency", target=0).picture()
    picture = _decoded(pair._repr_png_())
    assert picture.shape[1] == alone.shape[1] and picture.shape[0] > 2 * alone.shape[0] - 1


def test_feature_results_repr_png_are_their_grids():
    model = small_convnet()
    filters = filter_tiles(model)
    np.testing.assert_array_equal(_decoded(filters._repr_png_()), filter_grid(filters))
    maps = feature_maps(model, torch.randn(3, 16, 16), "3")
    np.testing.assert_array_equal(_decoded(maps._repr_png_()), feature_map_grid(maps))


def test_leaderboard_repr_html_has_the_floor_rows():
    board = Leaderboard(model="tiny", images=8, accuracy=0.75)
    board.scores = {
        "floor:random": {"maxboxacc_v2": 0.2},
        "gradcam": {"maxboxacc_v2": 0.6},
        "floor:center": {"maxboxacc_v2": 0.4},
    }
    html = board._repr_html_()
    rows = html.split("<tr")[2:]  # after the header row
    assert [row.split("<td")[1].split(">")[1].split("<")[0] for row in rows] == [
        "gradcam",
        "floor:center",
        "floor:random",
    ]
    assert rows[0].startswith(' class="method"') and all('class="floor"' in r for r in rows[1:])
    assert "+0.200" in rows[0]  # margin over the best floor
    assert "tiny: 8 images" in html and "floor:*" in html


def test_embeddings_and_neighbours_repr_html():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [1.0, 0.5]])
    stored = Embeddings(
        vectors, ["a", "b", "c", "d"], [0, 1, 0, -1], ("cat", "dog"), "fc", True, "tiny"
    )
    found = stored.neighbours("a", k=2)
    assert found.sources == ["c", "d"] and found.distances[0] < found.distances[1]
    html = found._repr_html_()
    assert html.index(">c<") < html.index(">d<") and "cosine distance" in html
    summary = stored._repr_html_()
    assert "cat</th><td>2 items" in summary and "dog</th><td>1 items" in summary
