"""The planted-shortcut benchmark's scores: exact values on hand-made maps, and on the shipped
rate-1.0 model a map equal to the cue mask beats every floor and the object mask."""

import pytest
import torch

from convlens.data.shortcuts import SHORTCUT_CLASS, ShortcutScenes
from convlens.evaluate.floors import FLOORS, floor_maps
from convlens.evaluate.shortcut import (
    ShortcutModel,
    cue_share,
    evaluate_shortcut,
    pearson,
    rank_correlation,
    shortcut_models,
    shortcut_scores,
    slope,
)


def test_cue_share_pearson_and_slope_exact_values():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    maps = torch.ones(2, 4, 4)
    maps[1, 0, 0] = 13.0  # 16 inside of 28 total positive mass
    maps[1, 3, 3] = -5.0  # negative mass does not count
    assert torch.allclose(cue_share(maps, masks), torch.tensor([4 / 16, 16 / 27]))
    assert cue_share(torch.zeros(1, 4, 4), masks[:1]).item() == 0.0  # no positive mass
    x = torch.tensor([0.0, 1.0, 2.0, 4.0])
    assert pearson(x, 3 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert pearson(x, torch.ones(4)) is None and pearson(x[:1], x[:1]) is None
    assert rank_correlation(x, x**3) == pytest.approx(1.0)  # ranks: any increasing function
    # ties get their average rank: ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4)
    assert rank_correlation(torch.tensor([0.0, 0.0, 1.0, 5.0]), x) == pytest.approx(
        pearson(torch.tensor([1.5, 1.5, 3.0, 4.0]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    )
    assert slope([0.0, 1.0, 2.0], [1.0, 3.0, 5.0]) == pytest.approx(2.0)
    assert slope([1.0, 1.0], [0.0, 1.0]) is None


def test_slope_follows_reliance_and_is_zero_for_a_map_that_ignores_the_model():
    batch = ShortcutScenes(6, seed=2, rate=0.0, size=32, cue_size=4).batch()
    cued = batch.has_cue.float()
    models = [
        ShortcutModel(rate, None, reliance, cued * reliance, torch.zeros(6, 6))
        for rate, reliance in ((0.0, 0.0), (0.5, 1.0), (1.0, 3.0))
    ]
    cue_map = batch.cue_masks.float()
    same = shortcut_scores({m.rate: cue_map for m in models}, batch, models)
    assert same["shortcut_slope"] == 0.0
    # mass on the cue in proportion to reliance: share = r / (r + 1) with background weight
    scaled = {m.rate: cue_map * m.reliance + (~batch.cue_masks) / 28 for m in models}
    scores = shortcut_scores(scaled, batch, models)
    assert scores["shortcut_slope"] > 0
    assert scores["cue_share_0.0"] == 0.0 and scores["cue_share_1.0"] > scores["cue_share_0.5"]


def test_a_map_equal_to_the_cue_mask_scores_the_highest_shortcut_corr_on_the_rate_one_model():
    batch = ShortcutScenes(60, seed=1, rate=0.0).batch()
    (model,) = shortcut_models(batch, rates=(1.0,))
    assert batch.has_cue.any() and (~batch.has_cue).any()
    assert model.effects[batch.has_cue].mean() > 0.5  # the model uses the cue

    def corr(maps):
        return shortcut_scores({1.0: maps}, batch, [model])["shortcut_corr"]

    cue_map = (batch.cue_masks & batch.has_cue[:, None, None]).float()
    best = corr(cue_map)
    others = {name: corr(floor_maps(name, batch.images)) for name in FLOORS}
    others["object mask"] = corr(batch.scenes.masks[:, SHORTCUT_CLASS].float())
    others["uniform"] = corr(torch.ones_like(cue_map))
    assert best > 0.5
    assert all(value is None or value < best for value in others.values()), others


@pytest.mark.slow
def test_evaluate_shortcut_end_to_end():
    board = evaluate_shortcut(["gradcam"], limit=4)
    assert board.headline == "shortcut_corr"
    assert set(board.scores) == {"gradcam", *FLOORS}
    assert set(board.settings["reliance"]) == {"0.0", "0.5", "0.9", "1.0"}
    for name in FLOORS:  # a floor's maps do not depend on the model
        assert board.scores[name]["shortcut_slope"] == pytest.approx(0.0, abs=1e-12)
    assert board.margins()["gradcam"] is not None
