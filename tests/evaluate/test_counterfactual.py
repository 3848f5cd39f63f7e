"""The counterfactual benchmark: effects are logit changes of re-rendered scenes (batched
equals one at a time), the scores on hand-made and oracle maps, model-free floors near 0 on
a model whose reliance is independent of where and how large an element is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convlens.data.scenes import SCENE_CLASSES, render_scene, scene_elements
from convlens.errors import MetricError
from convlens.evaluate.counterfactual import (
    CF_KEYS,
    CounterfactualSet,
    cf_row_scores,
    cf_scores,
    counterfactual_set,
    element_effects,
    element_mass,
    evaluate_counterfactual,
)
from convlens.evaluate.floors import FLOORS, floor_maps
from convlens.models import LoadedModel
from convlens.models.shapes import shapes_preprocess

SIZE = 32


def _conv_model() -> LoadedModel:
    """A seeded conv -> ReLU -> conv -> GAP -> linear net with one output per scene class."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, len(SCENE_CLASSES)),
    )
    return LoadedModel(net.eval(), "tiny", shapes_preprocess(SIZE), SCENE_CLASSES)


def _linear_model() -> LoadedModel:
    """logit_c = mean over pixels of w_c . x + b_c: an element's effect is its visible area
    times a colour difference of random sign, so neither area nor position predicts it."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, len(SCENE_CLASSES), 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return LoadedModel(net.eval(), "linear", shapes_preprocess(SIZE), SCENE_CLASSES)


def test_batched_effects_equal_one_scene_variant_at_a_time(unchanged):
    """Tolerance 1e-5: the same convolutions in a batch of 20 and alone may round
    differently in the last float32 bits."""
    model = _conv_model()
    with unchanged(model.module):
        batched = element_effects(model, 2, [0, 1, 2], SIZE, batch_size=64)
    for index, effects in zip([0, 1, 2], batched, strict=True):
        count = len(scene_elements(2, index, SIZE))
        assert effects.shape == (count, len(SCENE_CLASSES))

        def logits(scene):
            display = (scene.image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            with torch.no_grad():
                return model.module(model.preprocess.normalize(display[None]))[0]

        full = logits(render_scene(2, index, SIZE))
        for e in range(count):
            alone = full - logits(render_scene(2, index, SIZE, leave_out=[e]))
            assert torch.allclose(effects[e], alone, atol=1e-5), (index, e)


def _hand_set() -> CounterfactualSet:
    """One 4x4 row with three elements on its rows 0, 1 and 2-3; effects 1, 3, 2."""
    regions = torch.zeros(3, 4, 4, dtype=torch.bool)
    regions[0, 0], regions[1, 1], regions[2, 2:] = True, True, True
    return CounterfactualSet(
        tensor=torch.zeros(1, 3, 4, 4),
        display=np.zeros((1, 4, 4, 3), np.uint8),
        labels=torch.tensor([0]),
        regions=[regions],
        effects=[torch.tensor([1.0, 3.0, 2.0])],
        kinds=[("clutter", "target", "object")],
        elements=[torch.tensor([0, 1, 2])],
        detected=torch.tensor([True]),
        sources=["hand"],
    )


def test_scores_on_hand_made_maps():
    cf = _hand_set()
    rows = torch.arange(4, dtype=torch.float32)[:, None].expand(4, 4)
    faithful = torch.tensor([1.0, 3.0, 1.0, 1.0])[:, None].expand(4, 4)[None]
    assert element_mass(faithful, cf)[0].tolist() == [4.0, 12.0, 8.0]
    assert cf_scores(faithful, cf) == {"cf_spearman": 1.0, "cf_top1": 1.0}
    # masses 0, 4, 20: the order of the rows, not of the effects
    rho, top1 = cf_row_scores(rows[None], cf)
    assert float(rho[0]) == pytest.approx(0.5) and float(top1[0]) == 0.0
    # negative values carry no mass; an all-zero map ranks nothing and ties every element
    assert cf_scores(-faithful, cf) == {"cf_spearman": 0.0, "cf_top1": pytest.approx(1 / 3)}
    with pytest.raises(MetricError, match="one map per row"):
        cf_scores(torch.ones(2, 4, 4), cf)


@pytest.fixture(scope="module")
def linear_set():
    return counterfactual_set(_linear_model(), 40, seed=1)


def test_rows_are_present_classes_with_their_visible_elements(linear_set):
    cf = linear_set
    assert len(cf) > 80 and cf.tensor.shape[1:] == (3, SIZE, SIZE)
    for r in range(0, len(cf), 9):
        _, seed, index, k = cf.sources[r].split(":")
        elements = scene_elements(int(seed), int(index), SIZE)
        assert int(cf.labels[r]) == int(k) and cf.kinds[r].count("target") == 1
        for position, e in enumerate(cf.elements[r].tolist()):
            assert torch.equal(cf.regions[r][position], elements[e].visible)
            assert bool(elements[e].visible.any())


def test_an_oracle_map_scores_one_and_floors_score_about_zero(linear_set):
    """The oracle spreads rank(effect) over each element's visible pixels. On the linear
    model no map computed from pixels alone can know the sign of an element's effect: over
    ~100 rows (per-row Spearman std about 0.5, so the mean's about 0.05) every floor stays
    within 0.15 of 0."""
    cf = linear_set
    oracle = torch.zeros(len(cf), SIZE, SIZE)
    for r, (regions, effects) in enumerate(zip(cf.regions, cf.effects, strict=True)):
        ranks = effects.argsort().argsort().float() + 1
        oracle[r] = (ranks[:, None, None] * regions / regions.flatten(1).sum(1)[:, None, None]).sum(
            0
        )
    scores = cf_scores(oracle, cf)
    assert scores["cf_spearman"] == pytest.approx(1.0) and scores["cf_top1"] == 1.0
    pixels = torch.from_numpy(cf.display).permute(0, 3, 1, 2).float() / 255
    for name in FLOORS:
        assert abs(cf_scores(floor_maps(name, pixels), cf)["cf_spearman"]) < 0.15, name


def test_leaderboard_rows_floors_and_margins(unchanged):
    model = _conv_model()
    cf = counterfactual_set(model, 3, seed=1)
    with unchanged(model.module, cf.tensor):
        board = evaluate_counterfactual(model, ["gradcam"], cf)
    assert set(board.scores) == {"gradcam", *FLOORS}
    assert all(set(scores) == set(CF_KEYS) for scores in board.scores.values())
    assert board.headline == "cf_spearman" and board.images == len(cf)
    best = max(board.scores[name]["cf_spearman"] for name in FLOORS)
    margin = board.margins()["gradcam"]
    assert margin == pytest.approx(board.scores["gradcam"]["cf_spearman"] - best)


def test_cli_counterfactual_json_and_leaderboard_file(tmp_path, capsys):
    import json

    from convlens.cli import main

    command = ["evaluate", "--benchmark", "counterfactual", "--method", "cam", "--limit", "1"]
    assert main([*command, "--json", "--out", str(tmp_path)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert list(scores) == ["cam", *FLOORS]
    assert all(tuple(row) == CF_KEYS for row in scores.values())
    assert json.loads((tmp_path / "leaderboard.json").read_text()) == scores
    assert not (tmp_path / "curves.png").exists() and not (tmp_path / "sanity.png").exists()
