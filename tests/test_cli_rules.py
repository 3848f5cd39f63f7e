"""The rules every command keeps (docs/index.md, "Command line rules"): exit status 2 for a
usage error, 1 when some inputs were skipped or failed, 0 when all was done; a folder is
read the same way everywhere, recursively."""

from __future__ import annotations

import pytest
from PIL import Image
from tests.helpers.cli import command_paths

from convlens.cli import main
from convlens.data.images import expand_sources
from convlens.data.synthetic import SyntheticShapes

COMMANDS = sorted(command_paths())


@pytest.mark.parametrize("name", COMMANDS)
def test_a_usage_error_exits_2_on_every_command(name, capsys):
    assert main([*name.split(), "--no-such-option"]) == 2
    assert "No such option" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["neighbors", "x.png", "--index", "i", "--k", "-2"]])
def test_an_out_of_range_number_is_a_usage_error(argv, capsys):
    assert main(argv) == 2


@pytest.fixture
def nested(tmp_path):
    """A folder with an image at the top, one in a subfolder, one in a hidden folder."""
    pictures = SyntheticShapes(3).batch().display
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for index, place in enumerate(["top.png", "sub/deep.png", ".hidden/no.png"]):
        Image.fromarray(pictures[index]).save(tmp_path / place)
    return tmp_path


def test_a_folder_is_read_recursively_without_hidden_entries(nested):
    found = [str(p) for p in [nested / "sub" / "deep.png", nested / "top.png"]]
    assert expand_sources(str(nested)) == found


@pytest.mark.parametrize("command", ["predict", "explain"])
def test_predict_and_explain_recurse_like_scan(command, nested, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("out")
    argv = [command, str(nested), "--model", "synthetic-shapes", "--json"]
    argv += ["--out", str(out / "o")] if command == "explain" else []
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "deep.png" in text and "top.png" in text and "no.png" not in text


@pytest.mark.parametrize("command", ["predict", "explain"])
def test_a_skipped_input_exits_1_after_the_others(command, nested, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("out")
    argv = [command, str(nested / "top.png"), str(nested / "missing.png")]
    argv += ["--model", "synthetic-shapes", "--json"]
    argv += ["--out", str(out / "o")] if command == "explain" else []
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "top.png" in captured.out and "missing.png" in captured.err
