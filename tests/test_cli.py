"""The CLI skeleton, run in-process."""

from __future__ import annotations

import json

import torch
from PIL import Image

from convlens.cli import main
from convlens.layers import layer_table


def test_predict_cat_prints_a_cat_class(capsys):
    assert main(["predict", "cat", "--top", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert 281 <= result["predictions"][0]["class_id"] <= 285


def test_predict_directory_skips_bad_file_and_exits_1(tmp_path, capsys):
    Image.open(__import__("convlens").sample_path("coffee")).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_text("not a picture")
    assert main(["predict", str(tmp_path), "--top", "2"]) == 1
    captured = capsys.readouterr()
    assert "a.png: espresso (967)" in captured.out
    assert "skipped" in captured.err and "b.jpg" in captured.err


def test_layers_json_matches_layer_table(capsys, default_model):
    assert main(["layers", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    table = {r.name: r for r in layer_table(default_model.module, torch.zeros(1, 3, 224, 224))}
    for name in ("conv_stem", "blocks.2", "bn2"):
        assert rows[name]["output_shape"] == list(table[name].output_shape)
        assert rows[name]["receptive_field"] == str(table[name].field.size[0])
    assert rows["bn2"]["output_shape"] == [1, 1280, 7, 7]
    assert rows["global_pool.pool"]["receptive_field"] == "global"


def test_errors_are_one_line_without_traceback(capsys):
    assert main(["predict", "cat", "--model", "no-such-model"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1


def test_models_lists_default(capsys):
    assert main(["models"]) == 0
    assert "efficientnet_lite0" in capsys.readouterr().out


def test_predict_text_output_and_top_k(capsys):
    assert main(["predict", "coffee", "--top", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("coffee: espresso (967)") and line.count("(") == 3


def test_predict_empty_folder_is_reported(tmp_path, capsys):
    assert main(["predict", str(tmp_path)]) == 1
    assert "no image files" in capsys.readouterr().err


def test_unexpected_model_failure_is_one_line(tmp_path, capsys):
    path = tmp_path / "gray.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), path)  # wants 1 channel
    assert main(["predict", "cat", "--model", str(path), "--trust-pickle"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: RuntimeError") and "--debug" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_layers_json_fields_for_non_square_size_and_resnet(capsys):
    assert main(["layers", "--model", "efficientnet_lite0", "--size", "96", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    # TF "same" padding: stem 3x3 stride 2 pads (0, 1), so the first field starts at 0:
    # size 3, jump 2, centre 1.
    assert rows["conv_stem"]["output_shape"] == [1, 32, 48, 48]
    assert (rows["conv_stem"]["receptive_field"], rows["conv_stem"]["jump"]) == ("3", "2")
    assert rows["conv_stem"]["start"] == "1"


def test_usage_errors_print_usage_and_exit_2(capsys):
    assert main(["predict", "cat", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert "Usage: convlens predict" in err and "No such option: --bogus" in err
    assert main(["explain"]) == 2  # missing IMAGE argument
    err = capsys.readouterr().err
    assert "Usage: convlens explain" in err and "Missing argument" in err
    assert main(["predict", "cat", "--top", "0"]) == 2  # out-of-range option value
    assert "Usage: convlens predict" in capsys.readouterr().err


def test_debug_anywhere_shows_tracebacks_only_for_real_errors(capsys):
    assert main(["explain", "cat", "--bogus", "--debug"]) == 2  # a usage error: no traceback
    err = capsys.readouterr().err
    assert "Traceback" not in err and "No such option: --bogus" in err
    assert main(["predict", "cat", "--model", "no-such-model", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ModelLoadError" in err
    assert err.splitlines()[-1].startswith("error: 'no-such-model' is neither")


def test_console_script_exit_codes_in_a_real_process():
    """A usage error exits 2 with the usage line, and costs no torch import: the commands'
    modules load torch only when a command runs (`python -X importtime` lists the rest)."""
    import subprocess
    import sys

    usage = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "convlens", "layers", "--nope"],
        capture_output=True,
        text=True,
    )
    timing = [line for line in usage.stderr.splitlines() if line.startswith("import time:")]
    loaded = {line.rsplit("|", 1)[-1].strip() for line in timing}
    stderr = "\n".join(line for line in usage.stderr.splitlines() if line not in timing)
    assert usage.returncode == 2 and "Usage: convlens layers" in stderr
    assert "Traceback" not in stderr
    assert "convlens.cli.train" in loaded and "torch" not in loaded


def test_main_reuses_its_click_command_until_the_commands_change(capsys):
    """`main` builds the click command once (typer's build reads every command's type
    hints), and builds it again when a command is registered or removed."""
    from convlens.cli.app import app, click_command

    first = click_command()
    assert click_command() is first and main(["layers", "--nope"]) == 2
    assert click_command() is first

    @app.command("zz-probe", hidden=True)
    def probe() -> None:
        print("probe ran")

    try:
        assert "zz-probe" in click_command().commands
        assert main(["zz-probe"]) == 0 and capsys.readouterr().out == "probe ran\n"
    finally:
        app.registered_commands.pop()
    assert "zz-probe" not in click_command().commands and main(["zz-probe"]) == 2
