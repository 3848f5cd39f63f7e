"""What the CLI writes (issue 11): panels with colourbars in PNG/PDF/SVG, filters of 1x1
layers as matrices, --out folders and refusals checked before any work, TorchScript models
refused before any output is claimed."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from tests.helpers.networks import tiny_gap_classifier

from convlens.cli import main


def _tiny(tmp_path, scripted: bool = False) -> str:
    module = tiny_gap_classifier().eval()
    path = tmp_path / ("tiny.ts" if scripted else "tiny.pt")
    if scripted:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(module), path)
    else:
        torch.save(module, path)
    return str(path)


@pytest.mark.slow
def test_explain_writes_pdf_and_svg_panels(tmp_path, capsys):
    model = _tiny(tmp_path)
    args = ["explain", "cat", "-m", model, "--trust-pickle", "--method", "gradcam,guided_backprop"]
    args += ["--width", "3.3"]
    assert main(args + ["--format", "pdf", "-o", str(tmp_path / "pdf")]) == 0
    assert (tmp_path / "pdf" / "cat.pdf").read_bytes().startswith(b"%PDF")
    assert main(args + ["-o", str(tmp_path / "x.svg")]) == 0  # a file name: its format
    data = (tmp_path / "x.svg").read_bytes()
    assert data.startswith(b"<?xml") and b"<svg" in data
    assert b"gradcam @ 3" in data  # text stays text: the title names method and layer
    assert json.loads((tmp_path / "x.json").read_text())["panel"] == str(tmp_path / "x.svg")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("cat: explained class") and line.endswith("x.svg")


def test_explain_out_that_is_a_file_fails_once_before_any_work(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("mine")
    code = main(
        ["explain", "cat", "coffee", "-m", _tiny(tmp_path), "--trust-pickle", "-o", str(target)]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.count("error:") == 1 and "not a folder" in err
    assert target.read_text() == "mine"


@pytest.mark.slow
def test_scripted_resnet18_is_refused_with_no_output_claimed(tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(torchvision.models.resnet18(weights=None).eval())
        torch.jit.save(scripted, tmp_path / "r18.ts")
    out = tmp_path / "out"
    code = main(["explain", "cat", "-m", str(tmp_path / "r18.ts"), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and "->" not in captured.out
    assert "TorchScript" in captured.err and "eager model" in captured.err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_all_methods_on_a_scripted_model_skip_the_layer_methods_with_the_reason(
    tmp_path, capsys, first_tile_panels
):
    out = tmp_path / "out"
    model = _tiny(tmp_path, scripted=True)
    code = main(["explain", "cat", "-m", model, "--method", "saliency,gradcam", "-o", str(out)])
    assert code == 1 and "->" not in capsys.readouterr().out  # gradcam asked for: refused
    args = ["explain", "cat", "-m", model, "--method", "all", "-o", str(out), "--json"]
    args += ["--option", "steps=5", "--option", "n_masks=50"]  # shorter black-box searches
    assert main(args + ["--option", "n_samples=2", "--option", "n_steps=4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (
        "gradcam" in printed["skipped_methods"]
        and "TorchScript" in printed["skipped_methods"]["gradcam"]
    )
    ran = [m["method"] for m in printed["records"][0]["methods"]]
    assert "saliency" in ran and "gradcam" not in ran and "guided_backprop" not in ran
    assert first_tile_panels == {"cat": ran}  # the panel: a tile for each method that ran


def test_filters_of_a_1x1_layer_are_not_blank(tmp_path, capsys):
    out = tmp_path / "pw.png"
    assert main(["filters", "--layer", "blocks.1.0.conv_pw", "-o", str(out)]) == 0
    pixels = np.asarray(Image.open(out).convert("L"), dtype=np.float64)
    # A heat matrix of 96 x 16 weights: many grey levels, not black/white tiles.
    assert pixels.std() > 20 and len(np.unique(pixels)) > 50
    assert "96x16 weight matrix" in capsys.readouterr().out


def test_filters_cap_huge_layers_with_a_message_and_refuse_foreign_files(tmp_path, capsys):
    out = tmp_path / "head.svg"
    assert main(["filters", "--layer", "conv_head", "--max-filters", "64", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "showing filters 0-63 of 1280" in err and out.read_bytes().startswith(b"<?xml")
    theirs = tmp_path / "photo.png"
    theirs.write_bytes(b"not ours")
    assert main(["filters", "-o", str(theirs)]) == 1
    assert "--force" in capsys.readouterr().err and theirs.read_bytes() == b"not ours"
    folder = tmp_path / "figs"
    assert main(["filters", "-o", f"{folder}/"]) == 0
    assert (folder / "filters-conv_stem.png").is_file()
