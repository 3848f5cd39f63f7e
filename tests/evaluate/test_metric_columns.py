"""Metric-zoo columns on the box leaderboards (``evaluate_methods(metrics=...)``,
``convlens evaluate --metrics``): each column equals `run_metric` called directly on the same
maps, for a method and for a floor; the margins point the documented way; bad requests fail
before any work."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from convlens.cli import main
from convlens.data.synthetic import SyntheticShapes
from convlens.errors import MetricError
from convlens.evaluate.benchmark import METRIC_KEYS, evaluate_methods
from convlens.evaluate.floors import FLOORS, floor_maps
from convlens.evaluate.ground_truth import as_ground_truth
from convlens.evaluate.leaderboard import _method_options, explain_all
from convlens.evaluate.metric_columns import floor_function, method_function
from convlens.evaluate.metrics_zoo import run_metric
from convlens.models import load_model
from convlens.render.leaderboard import leaderboard_note, leaderboard_table

pytestmark = pytest.mark.usefixtures("one_thread")

CHOSEN = ["complexity", "relevance_mass_accuracy", "random_logit", "mprt"]


@pytest.fixture(scope="module")
def run():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: the one_thread fixture is not active yet
    model = load_model("synthetic-shapes")
    data = SyntheticShapes(3, seed=1)
    board = evaluate_methods(
        model, data, ["cam"], limit=3, sanity_images=1, faithfulness=False, metrics=CHOSEN
    )
    torch.set_num_threads(threads)
    return model, as_ground_truth(data, model.preprocess, 3), board


def _direct(model, truth, name, maps, method) -> float:
    values = run_metric(
        name, model, truth.tensor, maps, truth.labels, masks=truth.masks, method=method
    )
    return float(values[~torch.isnan(values)].mean())


def test_columns_equal_run_metric_on_the_same_maps_for_a_method_and_a_floor(run, unchanged):
    model, truth, board = run
    options = _method_options("cam", 64, None)
    maps, _ = explain_all(model, truth, "cam", options, 8)
    pixels = torch.from_numpy(truth.display).permute(0, 3, 1, 2).float() / 255
    rows = {
        "cam": (maps, method_function("cam", options)),
        "floor:edges": (
            floor_maps("floor:edges", pixels),
            floor_function("floor:edges", model.preprocess),
        ),
    }
    with unchanged(model.module, truth.tensor):
        for row, (row_maps, method) in rows.items():
            for name in CHOSEN:
                expected = _direct(model, truth, name, row_maps, method)
                assert board.scores[row][name] == pytest.approx(expected, abs=1e-9), (row, name)
    # a floor never looks at the model: its map on the randomised model is its map (MPRT 1),
    # and the class does not change it (the centre floor's map is the same: random logit 1)
    assert board.scores["floor:center"]["mprt"] == pytest.approx(1.0)
    assert board.scores["floor:center"]["random_logit"] == pytest.approx(1.0)


def test_keys_margins_and_settings_are_as_documented(run):
    _, _, board = run
    margins = tuple(f"{name}_margin" for name in CHOSEN)
    for name, row in board.scores.items():
        assert tuple(row) == METRIC_KEYS + tuple(CHOSEN) + margins, name
    floors = [board.scores[f] for f in FLOORS]
    cam = board.scores["cam"]
    # higher is better: score minus the best (largest) floor; lower: smallest floor minus score
    best_mass = max(f["relevance_mass_accuracy"] for f in floors)
    assert cam["relevance_mass_accuracy_margin"] == pytest.approx(
        cam["relevance_mass_accuracy"] - best_mass
    )
    best_complexity = min(f["complexity"] for f in floors)
    assert cam["complexity_margin"] == pytest.approx(best_complexity - cam["complexity"])
    assert all(f[f"{name}_margin"] is None for f in floors for name in CHOSEN)
    assert board.settings["metrics"]["complexity"]["higher_is_better"] is False
    assert set(board.settings["metric_seconds"]) == set(CHOSEN)
    header, *rows = leaderboard_table(board, markdown=True).splitlines()
    assert "| complexity(lower) | relevance_mass_accuracy(higher) |" in header
    assert "<metric>_margin" in leaderboard_note(board)


def test_a_mask_metric_without_masks_and_unknown_metrics_fail_before_any_work(run):
    model, truth, _ = run
    with pytest.raises(MetricError, match="relevance_rank_accuracy need ground-truth masks"):
        evaluate_methods(
            model,
            dataclasses.replace(truth, masks=None),
            ["cam"],
            metrics=["sparseness", "relevance_rank_accuracy"],
        )
    with pytest.raises(MetricError, match="unknown metric"):
        evaluate_methods(model, truth, ["cam"], metrics=["gini"])


def test_cli_metrics_option(capsys):
    assert main(["evaluate", "--metrics", "gini", "--limit", "1"]) == 2
    assert "unknown metric 'gini'" in capsys.readouterr().err
    assert main(["evaluate", "-b", "counterfactual", "--metrics", "sparseness"]) == 2
    assert "box benchmarks" in capsys.readouterr().err
    code = main(
        ["evaluate", "-b", "shapes", "--method", "cam", "--limit", "1", "--no-faithfulness"]
        + ["--metrics", "sparseness", "--json"]
    )
    assert code == 0
    scores = json.loads(capsys.readouterr().out)
    assert tuple(scores["cam"]) == METRIC_KEYS + ("sparseness", "sparseness_margin")
    assert scores["floor:random"]["sparseness_margin"] is None
    assert 0.0 <= scores["cam"]["sparseness"] < 1.0
