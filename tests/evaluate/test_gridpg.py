"""The grid pointing game: cell geometry, the two scores on hand-made maps, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.helpers.networks import small_convnet

from convlens.data.photos import Photo
from convlens.errors import ConvlensError, DataError
from convlens.evaluate.gridpg import (
    Disconnected,
    GridSet,
    cell_bounds,
    difull_scores,
    grid_side,
    gridpg_scores,
    make_grids,
)
from convlens.models import LoadedModel, Preprocess


def _grid_set(n: int = 2, side: int = 8) -> GridSet:
    bounds = cell_bounds(side, n)
    cells = [
        [bounds[r], bounds[r + 1], bounds[c], bounds[c + 1]] for r in range(n) for c in range(n)
    ]
    rows = n * n
    return GridSet(
        tensor=torch.zeros(rows, 3, side, side),
        display=np.zeros((rows, side, side, 3), np.uint8),
        labels=torch.arange(rows),
        cells=torch.tensor(cells),
        grid_size=torch.full((rows,), n),
        photos=[f"p{k}" for k in range(rows)],
    )


def test_cell_bounds_split_the_side_into_near_equal_cells():
    assert cell_bounds(224, 2) == [0, 112, 224]
    assert cell_bounds(224, 3) == [0, 75, 149, 224]


def test_gridpg_is_the_positive_mass_share_in_the_cell_and_pointing_its_maximum():
    grids = _grid_set()
    masks = grids.cell_masks()
    assert torch.equal(masks.sum(0), torch.ones(8, 8, dtype=torch.long))  # cells tile the grid
    perfect = gridpg_scores(masks.float(), grids)
    assert perfect["gridpg"] == 1.0 and perfect["pointing"] == 1.0
    uniform = gridpg_scores(torch.ones(4, 8, 8), grids)
    assert uniform["gridpg"] == pytest.approx(0.25) and uniform["gridpg_2x2"] == pytest.approx(0.25)
    # negative values do not count; a map with no positive mass scores 0
    signed = masks.float() - 5 * (~masks).float()
    assert gridpg_scores(signed, grids)["gridpg"] == 1.0
    assert gridpg_scores(-torch.ones(4, 8, 8), grids)["gridpg"] == 0.0
    # all mass in cell 0: right for row 0 only
    first = masks[0].float().expand(4, 8, 8)
    scores = gridpg_scores(first, grids)
    assert scores["gridpg"] == 0.25 and scores["pointing"] == 0.25


def test_make_grids_tiles_distinct_photos_into_their_cells():
    model = LoadedModel(torch.nn.Identity(), "id", Preprocess(size=12, mode="stretch"))
    pool = [
        (Photo(f"p{k}", None, k, "test"), k, 0.9, np.full((12, 12, 3), 20 * k, np.uint8))
        for k in range(6)
    ]
    grids, members = make_grids(model, pool, 2, count=3, seed=0, scale="shrunk")
    bounds = cell_bounds(12, 2)
    for grid, chosen in zip(grids, members, strict=True):
        assert len({entry[1] for entry in chosen}) == 4  # distinct classes
        for k, entry in enumerate(chosen):
            r, c = divmod(k, 2)
            cell = grid[bounds[r] : bounds[r + 1], bounds[c] : bounds[c + 1]]
            assert (cell == 20 * entry[1]).all()
    again, _ = make_grids(model, pool, 2, count=3, seed=0, scale="shrunk")
    assert all(np.array_equal(a, b) for a, b in zip(grids, again, strict=True))
    with pytest.raises(DataError, match="needs 9 photos"):
        make_grids(model, pool, 3, count=1)


@pytest.mark.slow
def test_cli_gridpg_reports_gridpg_and_pointing_per_method_and_floor(capsys):
    from convlens.cli import main

    # shrunk grids (224 px) keep this end-to-end case as cheap as before the full-size default
    args = ["evaluate", "--benchmark", "gridpg", "--methods", "gradcam", "-n", "1", "--json"]
    code = main([*args, "--grid-scale", "shrunk"])
    assert code == 0
    scores = json.loads(capsys.readouterr().out)
    assert list(scores) == [
        "gradcam",
        "floor:center",
        "floor:edges",
        "floor:contrast",
        "floor:random",
    ]
    for values in scores.values():
        assert {"gridpg", "pointing"} <= set(values)
        assert 0.0 <= values["gridpg"] <= 1.0 and 0.0 <= values["pointing"] <= 1.0
    # a class-discriminative map on the embedded model beats the model-free floors
    best_floor = max(v["gridpg"] for k, v in scores.items() if k.startswith("floor:"))
    assert scores["gradcam"]["gridpg"] > best_floor
    # DiFull: Grad-CAM's grid-wide channel weights leak onto the other cells' activations
    assert 0.0 < scores["gradcam"]["difull"] < 1.0
    assert scores["floor:center"]["difull"] is None


def test_full_size_grids_keep_every_photo_at_the_input_size_and_shrunk_grids_squeeze_it():
    model = LoadedModel(torch.nn.Identity(), "id", Preprocess(size=12, mode="stretch"))
    rng = np.random.default_rng(0)
    pool = [
        (Photo(f"p{k}", None, k, "test"), k, 0.9, rng.integers(0, 256, (12, 12, 3), np.uint8))
        for k in range(9)
    ]
    for n in (2, 3):
        assert grid_side(model, n) == 12 * n and grid_side(model, n, "shrunk") == 12
        grids, members = make_grids(model, pool, n, count=1, seed=0)
        assert grids[0].shape == (12 * n, 12 * n, 3)
        for k, entry in enumerate(members[0]):  # each cell is the photo, pixel for pixel
            r, c = divmod(k, n)
            assert np.array_equal(grids[0][12 * r : 12 * r + 12, 12 * c : 12 * c + 12], entry[3])
        shrunk, _ = make_grids(model, pool, n, count=1, seed=0, scale="shrunk")
        assert shrunk[0].shape == (12, 12, 3)
    with pytest.raises(DataError, match="grid scale"):
        grid_side(model, 2, "tiny")


def test_scores_of_several_grid_sizes_average_over_all_cells():
    two, three = _grid_set(2, 8), _grid_set(3, 9)
    assert two.cell_index().tolist() == [0, 1, 2, 3]
    assert three.cell_index().tolist() == list(range(9))
    scores = gridpg_scores(
        [two.cell_masks().float(), torch.ones(9, 9, 9)], [two, three]
    )  # perfect on 2x2, uniform on 3x3
    assert scores["gridpg_2x2"] == 1.0 and scores["gridpg_3x3"] == pytest.approx(1 / 9)
    assert scores["gridpg"] == pytest.approx((4 + 1) / 13)


class _SplitNet(torch.nn.Module):
    """`small_convnet` with timm's feature/head split (conv layers; GAP + linear)."""

    def __init__(self) -> None:
        super().__init__()
        net = small_convnet()
        self.features, self.head = net[:5], net[5:]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def test_difull_runs_each_cell_alone_so_a_gradient_map_stays_in_its_cell(unchanged):
    net = _SplitNet().eval()
    model = LoadedModel(net, "split", Preprocess(size=8, mode="stretch"))
    grid = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # cell k's logits are the net's on cell k alone
        out = Disconnected(net, 2)(grid)
        for k in range(4):
            r, c = divmod(k, 2)
            alone = net(grid[:, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8])
            assert torch.allclose(out[:, 3 * k : 3 * k + 3], alone, atol=1e-6)
    bounds = cell_bounds(16, 2)
    grids = GridSet(
        tensor=grid.expand(4, -1, -1, -1),
        display=np.zeros((4, 16, 16, 3), np.uint8),
        labels=torch.tensor([0, 1, 2, 0]),
        cells=torch.tensor(
            [[bounds[r], bounds[r + 1], bounds[c], bounds[c + 1]] for r in (0, 1) for c in (0, 1)]
        ),
        grid_size=torch.full((4,), 2),
        photos=["a", "b", "c", "d"],
    )
    with unchanged(net, grid):
        # the input gradient of cell k's output is exactly zero outside cell k
        assert difull_scores(model, "saliency", grids, {}) == 1.0
        # Grad-CAM weighs every position of the tiled features by channel weights averaged
        # over the grid: positive activations of the other cells get mass (Rao et al.)
        assert difull_scores(model, "gradcam", grids, {}) < 0.99
        assert difull_scores(model, "cam", grids, {}) is None  # no plain GAP + linear head
    with pytest.raises(ConvlensError, match="forward_features"):
        Disconnected(small_convnet(), 2)
