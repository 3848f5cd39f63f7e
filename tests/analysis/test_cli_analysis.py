"""``convlens train head --keep-epochs``, ``evolution``, ``ablate``, ``invariance``, ``camcrop``."""

from __future__ import annotations

import json

import pytest
import torch
from tests.helpers.networks import tiny_gap_classifier

from convlens.cli import main
from convlens.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow  # end to end: trains 2 epochs, then scans 3 epoch files
def test_keep_epochs_then_evolution_shows_one_column_per_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "head", "cam", "--random-backbone", "--keep-epochs", "--limit", "8"]
    args += ["--test", "4", "--epochs", "2", "--batch-size", "8", "--threads", "1"]
    args += ["--out", str(out)]
    assert main(args) == 0
    files = sorted(p.name for p in (out / "epochs").glob("*.pt"))  # beside the ledger
    assert files == ["epoch-000.pt", "epoch-001.pt", "epoch-002.pt"]
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        last = load_model(str(out / "epochs" / "epoch-002.pt")).module(images)
        final = load_model(str(out / "model.pt")).module(images)
        shipped = load_model("synthetic-shapes").module.features(images)
        start = load_model(str(out / "epochs" / "epoch-000.pt")).module.backbone(images)
    assert torch.equal(last, final)  # the last epoch file is the trained model
    assert not torch.allclose(start, shipped)  # --random-backbone: not the shipped weights
    # resuming the finished run keeps every epoch file (they are the run's own)
    assert main([*args, "--resume"]) == 0
    assert sorted(p.name for p in (out / "epochs").glob("*.pt")) == files
    capsys.readouterr()
    figure = tmp_path / "evolution.png"
    args = ["evolution", "--model", str(out), "--layer", "backbone.module.features.2"]
    assert main(args + ["--data", "shapes:4", "--count", "2", "-o", str(figure), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["columns"] == ["epoch 0", "epoch 1", "epoch 2"]
    assert len(record["rows"]) == 2 and all(len(r["values"]) == 3 for r in record["rows"])
    assert figure.read_bytes().startswith(b"\x89PNG")


@pytest.fixture
def tiny(tmp_path) -> str:
    path = tmp_path / "tiny.pt"
    torch.save(tiny_gap_classifier().eval(), path)
    return str(path)


def test_ablate_invariance_and_camcrop_commands(tiny, tmp_path, capsys):
    data = [
        "--data",
        "shapes:4",
        "-m",
        tiny,
        "--trust-pickle",
        "--trust-pickle",
    ]  # shapes 0..3: class ids below the 5 outputs
    assert (
        main(["ablate", *data, "--layer", "1", "--layer", "3", "-o", str(tmp_path / "a.png")]) == 0
    )
    table = capsys.readouterr().out
    assert "| (intact) |" in table and "| 1 | identity |" in table and "| 3 | identity |" in table
    assert (tmp_path / "a.png").is_file()
    tune = ["--layer", "3", "--tune-epochs", "1", "--tune-data", "shapes:4", "--force"]
    assert main(["ablate", *data, *tune, "-o", str(tmp_path / "a.png")]) == 0
    assert "fine-tuned accuracy |" in capsys.readouterr().out
    args = ["invariance", *data, "--layer", "1", "--transform", "rotate", "--json"]
    assert main(args + ["-o", str(tmp_path / "i.png")]) == 0
    (curve,) = json.loads(capsys.readouterr().out)
    assert curve["transform"] == "rotate" and curve["mean_distance"]["1"][0] == 0.0
    assert main(["camcrop", *data, "--json"]) == 0
    crops = json.loads(capsys.readouterr().out)
    assert len(crops["images"]) == 4 and crops["method"] == "cam"
    assert main(["camcrop", *data]) == 0
    assert "| mean (4 images) |" in capsys.readouterr().out


def test_bad_input_is_one_clear_line(tiny, capsys):
    assert (
        main(["ablate", "-m", tiny, "--trust-pickle", "--data", "shapes:2", "--mode", "drop"]) == 2
    )  # usage errors (exit 2), found before the model loads
    assert "'drop'; use one of auto, identity, zero" in capsys.readouterr().err
    ablate = ["ablate", "-m", tiny, "--trust-pickle", "--data", "shapes:2"]
    for half in (["--tune-epochs", "1"], ["--tune-data", "shapes:4"]):  # usage errors
        assert main([*ablate, *half]) == 2
        assert "--tune-epochs N and --tune-data DATA go together" in capsys.readouterr().err
    assert main([*ablate, "--tune-epochs", "1", "--tune-data", "shapes:4", "--tune-lr", "-1"]) == 2
    assert "must be > 0" in capsys.readouterr().err
    assert (
        main(
            [
                "invariance",
                "-m",
                tiny,
                "--trust-pickle",
                "--data",
                "shapes:2",
                "--transform",
                "shear",
            ]
        )
        == 2
    )
    assert "'shear'; use one of translate, scale, rotate" in capsys.readouterr().err
    assert (
        main(["camcrop", "-m", tiny, "--trust-pickle", "--data", "shapes:7"]) == 1
    )  # label 5 of 5 classes
    assert "pass images labelled with the model's classes" in capsys.readouterr().err
    assert main(["evolution", "--model", str(tiny), "--trust-pickle", "--data", "shapes:2"]) == 2
    assert "pass --layer" in capsys.readouterr().err
    for argv, message in (
        (["camcrop", "--fraction", "2"], "must lie in (0, 1)"),
        (["camcrop", "--box-class", "x"], "use one of predicted, true"),
        (["evolution", "--layer", "1", "--rule", "x"], "use one of deconvnet, guided, none"),
    ):
        assert main([*argv, "-m", tiny, "--trust-pickle"]) == 2
        assert message in capsys.readouterr().err


def test_keep_epochs_refuses_a_foreign_epoch_file_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "epochs").mkdir(parents=True)
    (out / "epochs" / "epoch-002.pt").write_text("mine")
    args = ["train", "head", "cam", "--random-backbone", "--keep-epochs", "--limit", "8"]
    args += ["--test", "4", "--epochs", "2", "--batch-size", "8", "--threads", "1"]
    assert main([*args, "--out", str(out)]) == 1
    assert "epoch-002.pt exists and convlens did not write it" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == ["epoch-002.pt", "epochs"]  # no training
