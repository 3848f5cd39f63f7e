"""`convlens explain` with the CAM options of issue 21: several layers and --option
eigen_smooth/aug_smooth reach every CAM method through the registry; the new methods run."""

from __future__ import annotations

import json

import torch
from tests.helpers.networks import tiny_gap_classifier

from convlens.cli import main


def test_explain_fuses_layers_and_passes_the_smoothing_options(tmp_path, capsys):
    model = tmp_path / "gap.pt"
    torch.save(tiny_gap_classifier(), model)
    out = tmp_path / "out"
    methods = "gradcam,finercam,ablationcam,fullgrad"
    args = ["explain", "cat", "-m", str(model), "--trust-pickle", "--method", methods]
    args += ["--layer", "1,3", "--option", "aug_smooth=true", "--option", "eigen_smooth=true"]
    assert main([*args, "-o", str(out)]) == 0
    record = json.loads((out / "cat.json").read_text())
    assert record["failed_methods"] == [] and record["layer"] == "1,3"
    assert [m["method"] for m in record["methods"]] == methods.split(",")
    capsys.readouterr()
    assert main([*args[:-4], "--layer", "1,nope", "-o", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no layer named 'nope'") and err.count("\n") == 1
