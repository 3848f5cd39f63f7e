"""``neighbors --index DIR`` loads the model ``index.json`` names only when it is the file
the index was made with (its SHA-256): a planted path or a swapped file never runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from tests.helpers.networks import tiny_gap_classifier

from convlens.cli import main
from convlens.data.synthetic import SyntheticShapes

pytestmark = pytest.mark.usefixtures("one_thread")


class Planted:
    """Unpickling this creates ``marker``, as an attacker's code would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def indexed(tmp_path) -> tuple[Path, Path, Path]:
    """(model file, index folder, query image): an embedding of shapes:6 made with a
    trusted pickled model."""
    model = tmp_path / "net.pt"
    torch.save(tiny_gap_classifier().eval(), model)
    out = tmp_path / "emb"
    embed = ["embed", "shapes:6", "--model", str(model), "--trust-pickle", "--map", "none"]
    assert main([*embed, "--out", str(out)]) == 0
    query = tmp_path / "query.png"
    Image.fromarray(SyntheticShapes(6).batch([2]).display[0]).save(query)
    return model, out, query


def _neighbors(query: Path, index: Path, *extra: str) -> list[str]:
    strip = query.with_name("near.png")
    return [
        "neighbors",
        str(query),
        "--index",
        str(index),
        "--k",
        "2",
        "--json",
        "-o",
        str(strip),
        *extra,
    ]


def test_the_recorded_model_file_is_reloaded_when_unchanged(indexed, capsys):
    model, out, query = indexed
    recorded = json.loads((out / "index.json").read_text())["model_sha256"]
    assert len(recorded) == 64
    capsys.readouterr()
    assert main(_neighbors(query, out, "--trust-pickle")) == 0
    assert json.loads(capsys.readouterr().out)[0]["source"] == "shapes:2"


def test_a_swapped_model_file_never_runs(indexed, tmp_path, capsys):
    model, out, query = indexed
    marker = tmp_path / "ran"
    torch.save(Planted(marker), model)  # the same path, other bytes
    capsys.readouterr()
    assert main(_neighbors(query, out, "--trust-pickle")) == 1
    err = capsys.readouterr().err
    assert "SHA-256 differs" in err and "--model" in err and err.count("\n") == 1
    assert not marker.exists()


def test_a_planted_index_path_never_runs(indexed, tmp_path, capsys):
    _, out, query = indexed
    marker = tmp_path / "ran"
    planted = tmp_path / "planted.pt"
    torch.save(Planted(marker), planted)
    index = json.loads((out / "index.json").read_text())
    index.update(model=str(planted), model_sha256=None)
    (out / "index.json").write_text(json.dumps(index))
    capsys.readouterr()
    assert main(_neighbors(query, out, "--trust-pickle")) == 1
    err = capsys.readouterr().err
    assert "records no SHA-256" in err and "--model" in err and err.count("\n") == 1
    assert not marker.exists()


def test_model_option_is_used_instead_of_the_index(indexed, tmp_path, capsys):
    model, out, query = indexed
    marker = tmp_path / "ran"
    index = json.loads((out / "index.json").read_text())
    planted = tmp_path / "planted.pt"
    torch.save(Planted(marker), planted)
    index["model"] = str(planted)
    (out / "index.json").write_text(json.dumps(index))
    capsys.readouterr()
    assert main(_neighbors(query, out, "--model", str(model), "--trust-pickle")) == 0
    assert json.loads(capsys.readouterr().out)[0]["source"] == "shapes:2"
    assert main(_neighbors(query, out, "--model", str(model))) == 1  # a pickle needs trust
    assert "--trust-pickle" in capsys.readouterr().err
    assert not marker.exists()
