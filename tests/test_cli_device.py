"""``--device`` on every command: one shared option, checked before any work."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.cli import command_paths

from convlens.cli import main

ALL = command_paths()
COMMANDS = sorted(ALL)  # every registered command, sub-commands by their full words


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_every_command_has_the_device_option():
    assert {"models", "layers", "predict", "explain", "evaluate", "filters"} <= set(COMMANDS)
    assert {"train head", "train segmentation", "train shapes-model"} <= set(COMMANDS)
    for name, command in ALL.items():
        options = {opt for param in command.params for opt in param.opts}
        assert "--device" in options, (
            f'convlens {name} has no --device: add `device: DeviceOption = "cpu"` '
            "(convlens.cli.app) to its signature and pass it to load_model(..., device=)"
        )


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize("name", COMMANDS)
def test_device_cuda_without_cuda_is_one_line_and_exit_2(name, capsys, monkeypatch):
    """The option is checked while the command line is parsed: before a missing argument,
    before any model is loaded."""
    import convlens.models.loading as loading

    monkeypatch.setattr(loading, "_load_by_name", lambda *a: pytest.fail("model was loaded"))
    assert main([*name.split(), "--device", "cuda"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("error: CUDA is not available on this machine")
    assert "--device cpu" in captured.err


def test_unknown_device_names_the_choices(capsys):
    assert main(["methods", "--device", "gpu"]) == 2
    assert "use cpu, cuda, cuda:N, mps or auto" in capsys.readouterr().err


@pytest.mark.slow  # end to end on the default model (loads it, draws the panel)
def test_explain_cat_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", "cat", "--device", "cpu", "--method", "gradcam", "-o", str(out)]) == 0
    assert "tiger cat" in capsys.readouterr().out
    assert (out / "cat.png").is_file() and (out / "cat.json").is_file()
