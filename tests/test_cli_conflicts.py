"""Options that cannot be honoured together are a usage error (exit 2, one message, before
any model is loaded), never a silent change; defaults a newcomer meets first (issue 20,
item 4)."""

from __future__ import annotations

import pytest
from tests.helpers.cli import command_paths, help_text, options_of

from convlens.cli import main

ALL = command_paths()


@pytest.fixture
def no_model_loading(monkeypatch):
    import convlens.models.loading as loading

    monkeypatch.setattr(loading, "_load_by_name", lambda *a, **k: pytest.fail("model was loaded"))


def test_evaluate_defaults_to_the_benchmark_methods_can_win():
    from convlens.cli.evaluate import _chosen_benchmark

    assert _chosen_benchmark(None, None) == "shapes-multi"
    assert _chosen_benchmark(None, "gt.json") == "shapes"  # annotations: the one-box benchmark
    assert _chosen_benchmark("gridpg", None) == "gridpg"


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize("benchmark", ["shapes-multi", "gridpg"])
def test_evaluate_data_with_a_benchmark_that_ignores_it_is_a_usage_error(benchmark, capsys):
    argv = ["evaluate", "--benchmark", benchmark, "--data", "gt.json", "--model", "m.pt"]
    assert main(argv) == 2
    assert "is not used by --benchmark" in capsys.readouterr().err


@pytest.mark.usefixtures("no_model_loading")
def test_features_layer_with_all_layers_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "f.png"
    assert main(["features", "cat", "--layer", "features.0", "--all-layers", "-o", str(out)]) == 2
    assert "--all-layers draws every stage, --layer one layer" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.usefixtures("no_model_loading")
def test_explain_format_unlike_the_out_extension_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "f.png"
    assert main(["explain", "cat", "--format", "pdf", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is a png file but --format is pdf" in err and "f.pdf" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize("name", ["x.jpg", "x.JPEG", "x.webp", "x.json"])
def test_explain_out_with_another_picture_suffix_is_refused(name, tmp_path, capsys):
    assert main(["explain", "cat", "--out", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert ".png, .pdf or .svg" in err
    assert list(tmp_path.iterdir()) == []  # no folder x.jpg/ made


def test_a_folder_with_a_dot_ending_in_slash_is_still_a_folder():
    from convlens.cli.explain import _panel_destination

    folder, fmt, named = _panel_destination("runs/x.jpg/", "png")
    assert (str(folder), fmt, named) == ("runs/x.jpg", "png", None)


@pytest.mark.parametrize("name", sorted(n for n in ALL if "--json" in options_of(ALL[n])))
def test_json_is_a_plain_flag_in_help(name):
    (line,) = [row for row in help_text(name).splitlines() if "--json" in row]
    assert "<bool>" not in line
    assert options_of(ALL[name])["--json"].is_flag


def test_neighbors_writes_nothing_without_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    embed = ["embed", "shapes:6", "--model", "synthetic-shapes", "--out", "emb", "--map", "none"]
    assert main(embed) == 0
    from PIL import Image

    from convlens.data.synthetic import SyntheticShapes

    Image.fromarray(SyntheticShapes(6).batch([2]).display[0]).save(tmp_path / "query.png")
    before = sorted(tmp_path.rglob("*"))
    assert main(["neighbors", "query.png", "--index", "emb", "--top", "2", "--json"]) == 0
    assert sorted(tmp_path.rglob("*")) == before  # no neighbors-*.png dropped unasked
    capsys.readouterr()
    assert main(["neighbors", "query.png", "--index", "emb", "--top", "2", "-o", "near.png"]) == 0
    assert (tmp_path / "near.png").is_file()


def test_embed_of_fewer_than_five_images_writes_a_whole_index(tmp_path, capsys):
    out = tmp_path / "emb"
    assert main(["embed", "shapes:3", "--model", "synthetic-shapes", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: no map.png: a 2-D map needs at least 5 images, got 3" in err
    assert {"embeddings.npy", "index.json", "index.html"} <= {p.name for p in out.iterdir()}
    assert not (out / "map.png").exists()


@pytest.mark.parametrize("scale", ["absolute"])  # shared: the same path (run_limits)
def test_explain_scale_spans_all_images_of_the_run(scale, tmp_path, monkeypatch, capsys):
    from PIL import Image

    import convlens.cli.explain_tiles as explain_tiles
    from convlens.data.synthetic import SyntheticShapes

    drawn = []
    real = explain_tiles.write_panel

    def recording(display, tiles, top, stem, picture, limits=None):
        drawn.append(limits)
        return real(display, tiles, top, stem, picture, limits)

    monkeypatch.setattr(explain_tiles, "write_panel", recording)
    for index, picture in enumerate(SyntheticShapes(2, seed=3).batch().display):
        Image.fromarray(picture).save(tmp_path / f"s{index}.png")
    out = tmp_path / "out"
    argv = ["explain", str(tmp_path / "s0.png"), str(tmp_path / "s1.png")]
    argv += ["--model", "synthetic-shapes", "--scale", scale, "--out", str(out)]
    assert main(argv) == 0
    assert len(drawn) == 2 and drawn[0] == drawn[1] and drawn[0] is not None
    assert (out / "s0.png").is_file() and (out / "s1.png").is_file()


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize("command", ["predict", "explain"])
def test_a_value_after_a_flag_is_not_read_as_an_image(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([command, "cat", "--json", "false"]) == 2
    assert "flags such as --json take no value" in capsys.readouterr().err


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize(
    ("target", "message"),
    [("top0", "ranks count from 1"), ("top0-top1", "ranks count from 1"), ("similar:", "PATH")],
)
def test_explain_malformed_target_is_a_usage_error(target, message, tmp_path, capsys):
    assert main(["explain", "cat", "--target", target, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "cat", "--method", "nosuch"], "unknown method 'nosuch'"),
        (["explain", "cat", "--method", " , "], "names no method"),
        (["explain", "cat", "--method", "saliency", "--layer", "bn2"], "does not use a layer"),
        (["report", "cat", "--method", "nosuch", "--out", "r.html"], "unknown method 'nosuch'"),
        (["evaluate", "--method", "nosuch"], "unknown method 'nosuch'"),
        (["evaluate", "--benchmark", "nosuch"], "unknown benchmark 'nosuch'"),
        (["explain", "cat", "--option", "eigen_smooth=no"], "eigen_smooth must be true or false"),
        (["explain", "cat", "--method", "rise", "--option", "seed=1.5"], "seed must be a whole"),
        (["scan", "shapes:4", "--by", "median"], "by must be one of max, mean"),
        (["scan", "shapes:4", "--projections", "guided,foo"], "use guided, deconvnet or none"),
        (["scan", "shapes:4", "--batch-size", "0"], "--batch-size"),
        (["scan", "shapes:4", "--save-every", "0"], "--save-every"),
        (["scan", "shapes:4", "--workers", "-1"], "--workers"),
        (["neighbors", "cat", "--index", "emb", "--metric", "foo"], "one of cosine, l2"),
        (["features", "cat", "--out", "x.jpg"], "written as .png, .pdf or .svg"),
        (["features", "cat", "--all-layers", "--top", "4"], "drop --top"),
        (["filters", "--out", "x.jpg"], "written as .png, .pdf or .svg"),
        (["visualize", "--class", "1", "--out", "x.jpg"], "written as .png, .pdf or .svg"),
        (["visualize", "--class", "1", "--method", "foo"], "use one of gradient, maco"),
        (["visualize", "--class", "1", "--param", "foo"], "use one of fourier, pixels"),
        (["visualize", "--class", "1", "--method", "maco", "--param", "pixels"], "gradient set"),
        (["visualize", "--class", "1", "--crops", "2"], "--crops is a --method maco setting"),
        (["visualize", "--class", "1", "--closeness-layer", "x"], "accentuate setting"),
        (["embed", "shapes:4", "--map", "foo"], "map method must be one of auto, tsne, umap"),
        (["evaluate", "--benchmark", "shortcut", "--model", "m.pt"], "its own models"),
        (["evaluate", "--images", "photos/"], "not used by --benchmark shapes-multi"),
        (["evaluate", "--benchmark", "counterfactual", "--curve-steps", "3"], "deletion"),
        (["evaluate", "--benchmark", "gridpg", "--no-faithfulness"], "deletion/insertion"),
        (["camcrop", "--method", "nosuch"], "unknown method 'nosuch'"),
        (["attribute", "shapes:4", "--method", "nosuch"], "unknown method 'nosuch'"),
        (["attribute", "shapes:4", "--method", "cam,saliency"], "takes one method"),
        (["attribute", "shapes:4", "--option", "patch=3"], "no chosen method takes"),
        (["attribute", "shapes:4", "--target", "top0"], "ranks count from 1"),
        (
            ["tcav", "--concept", "shapes:9", "--random", "shapes:9", "--class", "0"]
            + ["--layer", "features.3", "--data", "shapes:9", "--alpha", "3"],
            "--alpha: must lie in (0, 1), got 3.0",
        ),
        (["dissect", "--layer", "l", "--quantile", "1.5"], "--quantile: must lie in (0, 1)"),
        (["dissect", "--layer", "l", "--iou-threshold", "-1"], "must lie in [0, 1]"),
        (["dissect", "--layer", "l", "--data", "d", "--label-maps", "m"], "not both"),
        (["concepts", "shapes:9", "--class", "0", "--layer", "l", "--importance", "x"], "sobol"),
    ],
)
def test_unknown_methods_options_and_targets_are_usage_errors(argv, message, tmp_path, capsys):
    # the same mistake is the same exit status in every command, found before the model loads
    takes_out = ("attribute", "dissect", "concepts", "embed", "scan")
    out = ["--out", str(tmp_path / "out")] if argv[0] in takes_out else []
    if argv[0] == "report":
        argv = [*argv[:-1], str(tmp_path / "r.html")]
    assert main([*argv, *out]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
