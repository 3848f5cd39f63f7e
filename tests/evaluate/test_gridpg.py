"""The grid pointing game: cell geometry, the two scores on hand-made maps, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from convlens.data.photos import Photo
from convlens.errors import DataError
from convlens.evaluate.gridpg import GridSet, cell_bounds, gridpg_scores, make_grids
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
    grids, members = make_grids(model, pool, 2, count=3, seed=0)
    bounds = cell_bounds(12, 2)
    for grid, chosen in zip(grids, members, strict=True):
        assert len({entry[1] for entry in chosen}) == 4  # distinct classes
        for k, entry in enumerate(chosen):
            r, c = divmod(k, 2)
            cell = grid[bounds[r] : bounds[r + 1], bounds[c] : bounds[c + 1]]
            assert (cell == 20 * entry[1]).all()
    again, _ = make_grids(model, pool, 2, count=3, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(grids, again, strict=True))
    with pytest.raises(DataError, match="needs 9 photos"):
        make_grids(model, pool, 3, count=1)


@pytest.mark.slow
def test_cli_gridpg_reports_gridpg_and_pointing_per_method_and_floor(capsys):
    from convlens.cli import main

    code = main(["evaluate", "--benchmark", "gridpg", "--methods", "gradcam", "-n", "1", "--json"])
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
