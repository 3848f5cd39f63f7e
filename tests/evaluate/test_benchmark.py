"""The ground-truth benchmark runner, annotation loading, and `convlens evaluate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import assert_same_state, model_state

from convlens.cli import main
from convlens.data.ground_truth import load_annotations
from convlens.data.synthetic import SyntheticShapes, make_batch
from convlens.errors import ConvlensError, MethodError
from convlens.evaluate.benchmark import METRIC_KEYS, evaluate_methods
from convlens.models import Preprocess, load_model


@pytest.fixture(autouse=True)
def _one_thread():
    # Small tensors: one intra-op thread is faster, and far faster on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shapes_model():
    return load_model("synthetic-shapes")


def test_scores_have_the_documented_keys_and_ranges_and_model_is_unchanged(shapes_model):
    before = model_state(shapes_model.module)
    board = evaluate_methods(
        shapes_model,
        SyntheticShapes(4, seed=1),
        ["cam", "saliency"],
        limit=4,
        curve_steps=4,
        sanity_images=2,
    )
    assert_same_state(before, model_state(shapes_model.module))
    assert set(board.scores) == {"cam", "saliency"}
    for scores in board.scores.values():
        assert tuple(scores) == METRIC_KEYS
        for key in METRIC_KEYS[:6]:
            assert 0.0 <= scores[key] <= 1.0, key
        assert -1.0 <= scores["sanity_spearman"] <= 1.0
    assert board.curves["cam"]["deletion"].shape == (5,)
    # loc_acc needs the right class AND a good box, so it never exceeds top-1 accuracy
    assert board.scores["cam"]["loc_acc"] <= board.accuracy


def test_results_do_not_depend_on_batch_size(shapes_model):
    data = SyntheticShapes(3, seed=1)
    runs = [
        evaluate_methods(
            shapes_model,
            data,
            ["gradcam"],
            limit=3,
            batch_size=size,
            curve_steps=2,
            sanity_images=1,
        ).scores["gradcam"]
        for size in (2, 3)
    ]
    for key in METRIC_KEYS[:-1]:
        assert runs[0][key] == pytest.approx(runs[1][key], abs=1e-6), key


def test_unknown_method_is_a_clear_error(shapes_model):
    with pytest.raises(MethodError, match="unknown method"):
        evaluate_methods(shapes_model, SyntheticShapes(2, seed=1), ["gradcamm"], limit=2)


def _write_rectangle_image(folder, name, size, rect):
    """An RGB image with a white rectangle (x0, y0, x1, y1, x1/y1 exclusive) and its mask."""
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    x0, y0, x1, y1 = rect
    pixels[y0:y1, x0:x1] = 255
    Image.fromarray(pixels).save(folder / name)
    Image.fromarray(pixels[..., 0]).save(folder / f"mask_{name}")


@pytest.mark.parametrize("mode", ["stretch", "center_crop"])
def test_boxes_and_masks_follow_the_models_resize_and_crop(tmp_path, mode):
    _write_rectangle_image(tmp_path, "a.png", (120, 80), (40, 20, 100, 60))
    (tmp_path / "gt.json").write_text(
        json.dumps(
            {
                "images": [
                    {
                        "file": "a.png",
                        "class": 2,
                        "boxes": [[40, 20, 100, 60]],
                        "mask": "mask_a.png",
                    }
                ]
            }
        )
    )
    preprocess = Preprocess(size=40, mode=mode, crop_pct=1.0, interpolation="nearest")
    truth = load_annotations(tmp_path / "gt.json", preprocess)
    # the transformed box is the box of the white pixels the model actually sees
    white = torch.from_numpy(truth.display[0, ..., 0] > 127)
    rows, cols = torch.nonzero(white, as_tuple=True)
    seen = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    assert truth.boxes[0][0].tolist() == pytest.approx([float(v) for v in seen], abs=1.0)
    assert torch.equal(truth.masks[0], white)
    assert truth.labels.tolist() == [2]


def test_coco_boxes_become_corner_boxes_and_categories_map_by_name(tmp_path):
    _write_rectangle_image(tmp_path, "b.png", (64, 64), (8, 16, 40, 48))
    coco = {
        "images": [{"id": 7, "file_name": "b.png", "width": 64, "height": 64}],
        "annotations": [
            {"image_id": 7, "category_id": 11, "bbox": [8, 16, 32, 32]},
            {"image_id": 7, "category_id": 12, "bbox": [0, 0, 4, 4]},
        ],
        "categories": [{"id": 11, "name": "square"}, {"id": 12, "name": "star"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    labels = ("circle", "square", "triangle", "star")
    truth = load_annotations(
        tmp_path / "coco.json", Preprocess(size=64, mode="stretch"), labels=labels
    )
    assert truth.labels.tolist() == [1]  # the largest annotation's class, by name
    assert truth.boxes[0].tolist() == [[8.0, 16.0, 40.0, 48.0]]
    assert truth.masks is None
    assert truth.point_masks[0].sum() == 32 * 32


def test_bad_annotation_files_raise(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"images": [{"file": "a.png"}]}))
    with pytest.raises(ConvlensError, match="'class'"):
        load_annotations(tmp_path / "x.json", Preprocess(size=32))
    (tmp_path / "y.json").write_text("[1, 2]")
    with pytest.raises(ConvlensError, match="COCO"):
        load_annotations(tmp_path / "y.json", Preprocess(size=32))


def test_cli_json_has_exactly_the_documented_keys(tmp_path, capsys):
    code = main(["evaluate", "--methods", "cam", "--limit", "2", "--json", "--out", str(tmp_path)])
    assert code == 0
    scores = json.loads(capsys.readouterr().out)
    assert list(scores) == ["cam"]
    assert tuple(scores["cam"]) == METRIC_KEYS
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert json.loads((tmp_path / "leaderboard.json").read_text()) == scores


def test_cli_runs_a_user_model_on_a_user_annotation_file(tmp_path, capsys):
    batch = make_batch(2, seed=1)
    records = []
    for i in range(2):
        pixels = (batch.images[i] * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        records.append(
            {"file": f"{i}.png", "class": int(batch.labels[i]), "boxes": [batch.boxes[i].tolist()]}
        )
    (tmp_path / "gt.json").write_text(json.dumps({"images": records}))
    code = main(
        [
            "evaluate",
            "--model",
            "synthetic-shapes",
            "--methods",
            "gradcam",
            "--data",
            str(tmp_path / "gt.json"),
            "--json",
        ]
    )
    assert code == 0
    scores = json.loads(capsys.readouterr().out)["gradcam"]
    assert scores["mask_iou"] is None  # no masks given
    assert 0.0 <= scores["maxboxacc"] <= 1.0


def test_leaderboard_table_ranks_by_maxboxacc_and_marks_missing_values():
    from convlens.evaluate.benchmark import Leaderboard
    from convlens.render.leaderboard import leaderboard_table

    row = dict.fromkeys(METRIC_KEYS, 0.5)
    board = Leaderboard(
        "m", 2, 1.0, scores={"low": row | {"maxboxacc": 0.1}, "high": row | {"mask_iou": None}}
    )
    lines = leaderboard_table(board, markdown=True).splitlines()
    assert lines[0].startswith("| method | MaxBoxAcc")
    assert lines[2].startswith("| high | 0.500") and "| - |" in lines[2]
    assert lines[3].startswith("| low | 0.100")
