"""The synthetic-scenes detector's output convention and its `convlens explain` panel."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.cli import main
from convlens.data.scenes import make_scenes
from convlens.models import load_model
from convlens.models.detector import SceneDetector


def test_random_detector_outputs_sorted_detections_with_class_vectors():
    torch.manual_seed(0)
    model = SceneDetector(score_threshold=0.0).eval()
    found = model(torch.rand(2, 3, 64, 64))
    assert len(found) == 2
    for item in found:
        count = len(item["boxes"])
        assert 0 < count <= model.max_detections
        assert item["class_scores"].shape == (count, 6)
        assert torch.equal(
            item["scores"], item["class_scores"][torch.arange(count), item["labels"]]
        )
        assert bool((item["scores"][:-1] >= item["scores"][1:]).all())
        assert bool((item["boxes"][:, 2:] > item["boxes"][:, :2]).all())


@pytest.mark.slow
def test_explain_cli_det_target_writes_panel_with_the_box(tmp_path, capsys):
    scene = make_scenes(1, seed=1, start=7)
    image = tmp_path / "scene.png"
    Image.fromarray(scene.display[0]).save(image)
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            str(image),
            "--model",
            "synthetic-detector",
            "--target",
            "det:0",
            "--method",
            "gradcam,drise",
            "--option",
            "n_masks=40",
            "-o",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "scene.json").read_text())
    assert record["target"] == "det:0"
    boxes = [m["box"] for m in record["methods"]]
    assert boxes[0] == boxes[1] and record["predictions"][0]["box"] == pytest.approx(boxes[0])
    label = record["methods"][0]["class_id"]
    assert record["methods"][0]["class_name"] == load_model("synthetic-detector").labels[label]
    truth = scene.boxes[0, label]
    assert bool(scene.present[0, label]) and abs(torch.tensor(boxes[0]) - truth).max() < 8
    panel = np.asarray(Image.open(out / "scene.png"))
    assert panel.ndim == 3 and panel.shape[1] > 2 * 64
