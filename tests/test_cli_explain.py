"""`convlens explain` end to end: the bundled cat photo on the default model (fast methods),
every method on tiny models saved as files, and failures that skip only what failed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tests.helpers.networks import tiny_gap_classifier
from torch import nn

from convlens.attribution.explain import method_names
from convlens.cli import main
from convlens.data.progress import is_reported_step


def test_explain_cat_writes_panel_and_record(tmp_path, capsys):
    out = tmp_path / "out"
    methods = "gradcam,cam,input_x_gradient"
    code = main(["explain", "cat", "--method", methods, "--out", str(out), "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    record = json.loads((out / "cat.json").read_text())
    assert printed["records"] == [record] and printed["errors"] == []
    assert [m["method"] for m in record["methods"]] == ["gradcam", "cam", "input_x_gradient"]
    assert record["failed_methods"] == []
    assert record["layer"] == "bn2"
    top = record["predictions"][0]
    assert 281 <= top["class_id"] <= 285
    assert all(m["class_id"] == top["class_id"] for m in record["methods"])
    assert all(m["seconds"] > 0 for m in record["methods"])
    panel = np.asarray(Image.open(out / "cat.png"))
    # input + three overlays side by side, each 224 wide
    assert panel.shape[1] >= 4 * 224 and panel.shape[0] >= 224


def test_explain_reports_bad_image_processes_the_rest_and_exits_1(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_text("not a picture")
    out = tmp_path / "out"
    code = main(
        ["explain", str(bad), "cat", "--method", "cam", "--target", "tabby", "-o", str(out)]
    )
    assert code == 1
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "broken.png" in captured.err
    assert (out / "cat.png").is_file() and not (out / "broken.png").exists()
    record = json.loads((out / "cat.json").read_text())
    assert record["methods"][0]["class_id"] == 281 and record["target"] == "tabby"


def test_explain_unknown_method_is_a_usage_error_naming_close_matches(tmp_path, capsys):
    assert main(["explain", "cat", "--method", "gradcan", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("Error: Invalid value for --method: unknown method 'gradcan'")
    assert "did you mean gradcam" in err


def _saved(tmp_path, module: nn.Module, name: str = "tiny.pt") -> str:
    path = tmp_path / name
    torch.save(module, path)
    return str(path)


# what the CLI does with every method is under test, not the methods: the two slowest
# black-box searches (extremal perturbation, RISE) run shorter (5 steps took a fifth of
# the 2 s that 20 took on the 224 px cat)
FEWER_STEPS = ["--option", "steps=5", "--option", "n_masks=50"]


@pytest.fixture
def gap_model(tmp_path) -> str:
    """A pickled conv -> global average pool -> linear classifier (every method applies)."""
    return _saved(tmp_path, tiny_gap_classifier(), "gap.pt")


@pytest.fixture
def no_gap_model(tmp_path) -> str:
    """A pickled conv -> max pool -> flatten -> linear classifier: no CAM head."""
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 4, 8, stride=8), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(196, 5)
    )
    return _saved(tmp_path, module, "no_gap.pt")


def test_all_methods_on_a_tiny_model_file_with_progress_bars(tmp_path, capsys, gap_model):
    out = tmp_path / "out"
    assert (
        main(
            ["explain", "cat", "-m", gap_model, "--trust-pickle", "--method", "all", "-o", str(out)]
            + FEWER_STEPS
        )
        == 0
    )
    err = capsys.readouterr().err
    record = json.loads((out / "cat.json").read_text())
    assert [m["method"] for m in record["methods"]] == method_names("all")
    assert record["failed_methods"] == [] and record["layer"] == "3"
    ig = next(m for m in record["methods"] if m["method"] == "integrated_gradients")
    assert ig["completeness_error"] >= 0
    # progress for each slow method; stderr is no terminal here: a few single lines
    for desc in ("smoothgrad", "integrated gradients", "scorecam", "occlusion"):
        steps = [line for line in err.splitlines() if line.startswith(f"{desc}: ")]
        total = int(steps[-1].rsplit("/", 1)[1])
        shown = [i for i in range(1, total + 1) if is_reported_step(i, total)]
        assert steps == [f"{desc}: {i}/{total}" for i in shown]
    assert "error" not in err
    panel = np.asarray(Image.open(out / "cat.png"))
    rows = -(-(1 + len(method_names("all"))) // 4)  # 4 tiles per row, each 2.4 in wide
    assert panel.shape[1] == round(4 * 2.4 * 150) and panel.shape[0] > rows * 200


def test_all_on_a_model_without_cam_head_skips_cam_with_the_reason(
    tmp_path, capsys, no_gap_model, first_tile_panels
):
    out = tmp_path / "out"
    code = main(
        ["explain", "cat", "coffee", "-m", no_gap_model, "--trust-pickle", "--method", "all"]
        + ["-o", str(out), "--json", *FEWER_STEPS]
        + ["--option", "n_samples=2", "--option", "n_steps=4"]  # which methods ran is under test
    )
    assert code == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped cam")]
    assert len(skipped) == 1  # reported once, not again for the second image
    assert "cannot apply to this model" in skipped[0] and "use gradcam" in skipped[0]
    printed = json.loads(captured.out)
    assert list(printed["skipped_methods"]) == ["cam"] and printed["errors"] == []
    expected = [name for name in method_names("all") if name != "cam"]
    for stem in ("cat", "coffee"):
        record = json.loads((out / f"{stem}.json").read_text())
        assert [m["method"] for m in record["methods"]] == expected
        assert record["panel"] == str(out / f"{stem}.png") and (out / f"{stem}.png").is_file()
    # each panel has a tile for every method but cam (drawn from its first tile here)
    assert first_tile_panels == {"cat": expected, "coffee": expected}


def test_a_named_method_that_fails_is_reported_per_image_and_the_rest_is_written(
    tmp_path, capsys, no_gap_model
):
    out = tmp_path / "out"
    args = [
        "explain",
        "cat",
        "coffee",
        "-m",
        no_gap_model,
        "--trust-pickle",
        "--method",
        "gradcam,cam",
    ]
    assert main(args + ["-o", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    for source in ("cat", "coffee"):
        line = next(x for x in err if x.startswith(f"error: cam failed on {source}: "))
        assert "use gradcam" in line  # the fix
        record = json.loads((out / f"{source}.json").read_text())
        assert [m["method"] for m in record["methods"]] == ["gradcam"]
        assert record["failed_methods"][0]["method"] == "cam"
        assert (out / f"{source}.png").is_file()


class _FailsOnBrightImages(nn.Module):
    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.mean() > self.threshold):
            raise ValueError("this model refuses bright images")
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_an_image_that_fails_does_not_stop_the_others(tmp_path, capsys):
    from convlens import load_model

    probe = load_model(_saved(tmp_path, nn.Identity(), "probe.pt"), trust_pickle=True)
    means = probe.preprocess(["cat", "coffee"]).mean(dim=(1, 2, 3))
    torch.manual_seed(0)
    path = _saved(tmp_path, _FailsOnBrightImages(float(means.mean())), "picky.pt")
    bright, dark = ("cat", "coffee") if means[0] > means[1] else ("coffee", "cat")
    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                bright,
                dark,
                "-m",
                str(path),
                "--trust-pickle",
                "--method",
                "saliency",
                "-o",
                str(out),
            ]
        )
        == 1
    )
    captured = capsys.readouterr()
    failure = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(failure) == 1 and failure[0].startswith(f"error: failed on {bright}: ")
    assert "refuses bright images" in failure[0] and "--debug" in failure[0]
    assert (out / f"{dark}.png").is_file() and not (out / f"{bright}.png").exists()
    assert captured.out.startswith(f"{dark}: ")


def test_layer_errors_stop_before_any_work(tmp_path, capsys, gap_model):
    out = tmp_path / "out"
    assert (
        main(["explain", "cat", "-m", gap_model, "--trust-pickle", "--layer", "#9", "-o", str(out)])
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("error: layer index 9") and "convlens layers" in err
    assert err.count("\n") == 1
    assert (
        main(["explain", "cat", "-m", gap_model, "--trust-pickle", "--layer", "9", "-o", str(out)])
        == 1
    )
    err = capsys.readouterr().err  # a bare number is a name, and no layer has it
    assert err.startswith("error: no layer named '9'") and "write '#9'" in err
    args = [
        "explain",
        "cat",
        "coffee",
        "-m",
        gap_model,
        "--trust-pickle",
        "--method",
        "saliency",
        "--layer",
        "1",
    ]
    assert main(args + ["-o", str(out)]) == 2  # a usage error, before the model loads
    err = capsys.readouterr().err.strip().splitlines()  # once for the run, not once per image
    assert err[-1].startswith("Error: Invalid value for --layer: saliency does not use a layer")
    assert not out.exists()
