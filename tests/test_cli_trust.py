"""``--trust-pickle`` on every command that loads a model: a model file that needs full
unpickling is refused in one line naming the option, and its code never runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.helpers.cli import commands_with_any
from tests.helpers.networks import tiny_gap_classifier

from convlens.cli import main

MODEL_OPTIONS = {"--model", "--backbone", "--classifier"}


class Planted:
    """Unpickling this creates ``marker``, as an attacker's code would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_every_command_that_loads_a_model_has_trust_pickle():
    loading = commands_with_any(MODEL_OPTIONS)  # sub-commands too ("train head")
    for name, options in loading.items():
        assert "--trust-pickle" in options, (
            f"convlens {name} loads a model but has no --trust-pickle: add "
            "`trust_pickle: TrustPickleOption = False` (convlens.cli.options) and pass it "
            "to load_model(..., trust_pickle=)"
        )
    expected = {"explain", "predict", "layers", "scan", "embed", "neighbors"}
    assert expected | {"train head", "train segmentation"} <= set(loading)


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "cat"],
        ["layers"],
        ["explain", "cat", "-o", "{tmp}/out"],
        ["filters", "-o", "{tmp}/f.png"],
        ["scan", "shapes:2", "--out", "{tmp}/scan"],
        ["embed", "shapes:2", "--out", "{tmp}/emb"],
        ["report", "cat", "-o", "{tmp}/r.html"],
        ["ablate", "--data", "shapes:2", "-o", "{tmp}/a.png"],
    ],
    ids=lambda command: command[0],
)
def test_a_planted_model_file_never_runs(command, tmp_path, capsys):
    marker = tmp_path / "ran"
    planted = tmp_path / "model.pt"
    torch.save(Planted(marker), planted)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in command]
    assert main([*args, "--model", str(planted)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trust-pickle" in err and "runs code" in err
    assert not marker.exists()


def test_trust_pickle_loads_a_real_pickled_module(tmp_path, capsys):
    path = tmp_path / "net.pt"
    torch.save(tiny_gap_classifier().eval(), path)
    assert main(["layers", "--model", str(path), "--size", "32", "--json"]) == 1
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(["layers", "--model", str(path), "--size", "32", "--json", "--trust-pickle"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows][:2] == ["0", "1"]
