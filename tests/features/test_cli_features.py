"""The filters / features / visualize commands, run in-process on the default model: each
PNG is exactly the picture the Python API draws with the same options."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from tests.helpers.networks import tiny_gap_classifier

from convlens.cli import main
from convlens.data.images import load_images
from convlens.data.photos import Photo
from convlens.features.activations import feature_maps, layer_activation, layer_mean_maps
from convlens.features.filters import filter_tiles
from convlens.render.features import feature_map_grid, filter_grid, layer_means_grid, to_uint8
from convlens.render.images import save_png


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def cat(default_model):
    return load_images(["cat"], preprocess=default_model.preprocess).tensor[0]


def test_filters_draws_the_api_picture(tmp_path, capsys, default_model):
    out = tmp_path / "f.png"
    assert main(["filters", "--out", str(out)]) == 0
    assert "32 rgb tiles of conv_stem (per_filter)" in capsys.readouterr().out
    np.testing.assert_array_equal(read_png(out), filter_grid(filter_tiles(default_model)))
    layer = "blocks.1.0.conv_pwl"
    options = ["--layer", layer, "--reduce", "norm", "--scaling", "shared"]
    assert main(["filters", *options, "--out", str(out)]) == 0
    assert f"24 norm tiles of {layer} (shared)" in capsys.readouterr().out
    expected = filter_grid(filter_tiles(default_model, layer, reduce="norm", scaling="shared"))
    np.testing.assert_array_equal(read_png(out), expected)
    assert main(["filters", "--reduce", "mean-ish"]) == 2  # a usage error, as --scale's
    assert "'mean-ish'; use one of auto, rgb, mean, norm, slices" in capsys.readouterr().err


def test_features_draws_one_layer(tmp_path, capsys, default_model, cat):
    out = tmp_path / "maps.png"
    assert main(["features", "cat", "--layer", "blocks.4", "--top", "6", "--out", str(out)]) == 0
    assert "6 channels of blocks.4" in capsys.readouterr().out
    maps = feature_maps(default_model, cat, "blocks.4", top=6)
    assert torch.allclose(
        maps.maps, layer_activation(default_model, cat[None], "blocks.4")[0][maps.channels]
    )
    np.testing.assert_array_equal(read_png(out), feature_map_grid(maps))


def test_features_all_layers_draws_one_tile_per_stage(tmp_path, capsys, default_model, cat):
    out = tmp_path / "stages.png"
    assert main(["features", "cat", "--all-layers", "--out", str(out)]) == 0
    stages = "bn1, blocks.0, blocks.1, blocks.2, blocks.3, blocks.4, blocks.5, blocks.6, bn2"
    assert f"9 stages ({stages})" in capsys.readouterr().out
    means = layer_mean_maps(default_model, cat)
    assert [name for name, _ in means] == stages.split(", ")
    np.testing.assert_array_equal(read_png(out), layer_means_grid(means))


def test_visualize_reports_the_score_of_the_saved_image(tmp_path, capsys, default_model):
    out = tmp_path / "v.png"
    argv = ["visualize", "--channel", "blocks.1:3", "--steps", "4", "--out", str(out)]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    match = re.fullmatch(
        r"blocks\.1:3: (\S+) at the start, (\S+) for the result after 4 steps -> (.+)", line
    )
    assert match and match[3] == str(out)
    assert Image.open(out).size == (224, 224)
    pixels = torch.from_numpy(read_png(out).copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        seen = layer_activation(default_model, (pixels - 0.5) / 0.5, "blocks.1")[0, 3].mean()
    assert float(match[2]) == pytest.approx(float(seen), rel=0.02, abs=1e-3)  # 8-bit PNG
    assert float(match[2]) > float(match[1])  # (Adam's first step can overshoot: not 2)


@pytest.mark.slow
@pytest.mark.parametrize("class_name", ["espresso"])
def test_class_visualisation_survives_an_8_bit_round_trip(tmp_path, capsys, class_name):
    """Issue 4's check: 24 steps from grey, saved as an 8-bit PNG, re-read through the
    model's own preprocessing: the class is in the top 5. (Measured on CPU, seed 0: goldfish
    and espresso are first from 16 steps on, to 48; espresso is not in the top 5 at 8 steps,
    so 24 keeps a margin and the check can fail. It was 128 steps. Goldfish, the easier
    class, was dropped from the suite to keep it under its CPU budget.)"""
    out = tmp_path / f"{class_name}.png"
    assert main(["visualize", "--class", class_name, "--steps", "24", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", str(out), "--top", "5", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)["results"][0]
    assert class_name in [p["label"] for p in record["predictions"]]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--class", "5000"], "error: class id 5000 is out of range; allowed: 0..999"),
        (
            ["--channel", "blocks.1:999"],
            "error: channel 999 out of range: layer 'blocks.1' has 24 channels (0..23)",
        ),
        (["--class", "espreso"], "error: no class named 'espreso'; did you mean 'espresso'"),
    ],
)
def test_visualize_bad_options_print_one_line(capsys, default_model, argv, message):
    assert main(["visualize", *argv, "--steps", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--class", "1", "--channel", "blocks.1:3"], "give exactly one of"),
        (["--channel", "blocks.1"], "--channel takes LAYER:C"),
        (["--class", "1", "--image", "cat"], "--method accentuate starts from a photo"),
        (["--class", "1", "--steps", "0"], "--steps"),
    ],
)
def test_visualize_option_conflicts_are_usage_errors_before_the_model_loads(
    capsys, monkeypatch, argv, message
):
    import convlens.models.loading as loading

    monkeypatch.setattr(loading, "_load_by_name", lambda *a, **k: pytest.fail("model was loaded"))
    assert main(["visualize", *argv]) == 2
    assert message in capsys.readouterr().err


def test_visualize_accentuates_a_photo_and_runs_the_fooling_check(tmp_path, capsys, monkeypatch):
    """--method accentuate --image on a tiny model file: photo | result side by side, the
    score and feature distance in --json, and the fooling check against photos of the
    class (here two tiny stand-ins for the installed photos, one of class 2, one of 3)."""
    model = tmp_path / "gap.pt"
    torch.save(tiny_gap_classifier(), model)
    gen = torch.Generator().manual_seed(0)
    photos = [
        Photo(
            f"test:{c}",
            save_png(to_uint8(torch.rand(3, 8, 8, generator=gen)), tmp_path / f"{c}.png"),
            c,
            "test",
        )
        for c in (2, 3)
    ]
    monkeypatch.setattr("convlens.features.fooling.package_photos", lambda: photos)
    out = tmp_path / "a.png"
    argv = ["visualize", "-m", str(model), "--trust-pickle", "--class", "2"]
    argv += ["--method", "accentuate", "--from", "cat", "--steps", "3", "--json", "-o", str(out)]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["method"] == "accentuate" and record["path"] == str(out)
    assert record["final"][0] > record["start"][0] and 0 < record["distance"][0]
    (check,) = record["fooling_check"]
    assert isinstance(check["passes"], bool) and sorted(check["path_distance"]) == ["2", "3"]
    assert check["summary"].startswith("fooling check")
    width, height = Image.open(out).size
    assert width == 2 * height + 4  # the photo, a 4 px gap, the accentuated photo


def test_visualize_says_when_the_objective_cannot_move_and_names_a_flat_layer(tmp_path, capsys):
    # the shapes model's gradient at the grey start is exactly zero: say so, not silence
    out = tmp_path / "v.png"
    argv = ["visualize", "--model", "synthetic-shapes", "--class", "1", "--steps", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "did not move from its start" in capsys.readouterr().err
    flat = ["--channel", "features.3:0", "--diversity", "2", "--diversity-layer", "classifier"]
    assert main([*argv[:3], *flat, "--steps", "1", "--out", str(tmp_path / "w.png")]) == 1
    assert "needs a layer with a spatial output" in capsys.readouterr().err
