"""CLI options of issue 11: --option, contrasts, --preprocess, --labels, --arch/--weights,
--version, evaluate's --method, hints that name real options, offline hub loads, progress
lines off a terminal."""

from __future__ import annotations

import io
import json

import pytest
import torch
from tests.helpers.networks import small_convnet

from convlens.cli import main
from convlens.cli.options import parse_method_options
from convlens.data.preprocess import Preprocess
from convlens.data.progress import progress_bar
from convlens.errors import MethodError, ModelLoadError


def test_method_options_are_parsed_typed_and_checked_against_the_registry():
    chosen = parse_method_options(
        ["patch=32", "stride=16", "n_steps=8"], ["occlusion", "integrated_gradients"]
    )
    assert chosen == {
        "occlusion": {"patch": 32, "stride": 16},
        "integrated_gradients": {"n_steps": 8},
    }
    with pytest.raises(MethodError, match="no chosen method takes the option 'patch'"):
        parse_method_options(["patch=3"], ["gradcam"])
    with pytest.raises(MethodError, match="KEY=VALUE"):
        parse_method_options(["patch"], ["occlusion"])


def test_explain_options_contrast_and_labels_reach_the_record(tmp_path, capsys):
    torch.save(small_convnet().eval(), tmp_path / "net.pt")
    (tmp_path / "names.txt").write_text("ant\nbee\ncow\n")
    args = [
        "explain",
        "cat",
        "-m",
        str(tmp_path / "net.pt"),
        "--trust-pickle",
        "--labels",
        str(tmp_path / "names.txt"),
    ]
    args += ["--method", "occlusion", "--option", "patch=56", "--option", "stride=56"]
    args += ["--target", "bee-cow", "--preprocess", "pad", "-o", str(tmp_path / "o"), "--json"]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)["records"][0]
    entry = record["methods"][0]
    assert record["target"] == "bee-cow" and record["explained"] == "bee rather than cow"
    assert entry["class_name"] == "bee" and entry["contrast"]["rather_than"] == "cow"
    # The score is the logit difference of the two classes on the padded image.
    from convlens import load_model
    from convlens.data.images import load_images

    loaded = load_model(tmp_path / "net.pt", preprocess=Preprocess(mode="pad"), trust_pickle=True)
    with torch.no_grad():
        logits = loaded.module(load_images(["cat"], preprocess=loaded.preprocess).tensor)[0]
    assert entry["score"] == pytest.approx(float(logits[1] - logits[2]), rel=1e-4, abs=1e-5)
    bad = main(args[:-1] + ["--option", "n_steps=3"])
    assert bad == 2 and "no chosen method takes the option 'n_steps'" in capsys.readouterr().err


def test_pad_preprocessing_keeps_the_whole_image():
    from PIL import Image

    wide = Image.new("RGB", (40, 10), (255, 0, 0))
    pixels = Preprocess(size=20, mode="pad", mean=(0.5, 0.5, 0.5)).display(wide)
    assert pixels.shape == (20, 20, 3)
    assert (pixels[7:12, :, 0] == 255).all()  # the image, whole, in the middle rows
    assert (pixels[:5] == 128).all() and (pixels[-5:] == 128).all()  # mean-grey bands


@pytest.mark.slow
def test_arch_weights_load_a_state_dict_and_explain_mismatches(tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.squeezenet1_1(weights=None, num_classes=1000).eval()
    torch.save(net.state_dict(), tmp_path / "sq.pth")
    from convlens.models.weights import load_weights

    loaded = load_weights("torchvision:squeezenet1_1", tmp_path / "sq.pth")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded.module(x), net(x))
    state = net.state_dict()
    state.pop("classifier.1.bias")
    torch.save({"state_dict": state}, tmp_path / "broken.pth")
    with pytest.raises(ModelLoadError, match=r"1 missing keys \(classifier.1.bias\)"):
        load_weights("torchvision:squeezenet1_1", tmp_path / "broken.pth")
    code = main(
        [
            "predict",
            "cat",
            "--arch",
            "torchvision:squeezenet1_1",
            "--weights",
            str(tmp_path / "sq.pth"),
        ]
    )
    assert code == 0 and capsys.readouterr().out.startswith("cat: ")
    assert main(["predict", "cat", "--weights", str(tmp_path / "sq.pth")]) == 2
    assert "--arch and --weights go together" in capsys.readouterr().err


def test_version_and_evaluate_method_spelling(capsys):
    from convlens import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"convlens {__version__}"
    assert main(["evaluate", "--method", "nope", "--limit", "1"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["evaluate", "--data", "gt.json"]) == 2
    assert "--data needs --model" in capsys.readouterr().err


def test_offline_hub_load_fails_at_once_with_one_line(no_network, monkeypatch, capsys):
    """Offline, the load gives up without trying a connection (timm and Hugging Face would
    retry for a minute): zero connection attempts, one line."""
    pytest.importorskip("timm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the user says: no network
    code = main(["predict", "cat", "-m", "timm:convnext_atto_ols"])
    err = capsys.readouterr().err
    if code == 0:
        pytest.skip("these weights are in the local cache")
    assert no_network == []
    assert code == 1 and err.count("\n") == 1 and "--random-weights" in err and "--weights" in err


def test_progress_lines_off_a_terminal():
    stream = io.StringIO()
    assert list(progress_bar(range(3), desc="occlusion", stream=stream)) == [0, 1, 2]
    assert stream.getvalue() == "occlusion: 1/3\nocclusion: 2/3\nocclusion: 3/3\n"
    silent = io.StringIO()
    assert list(progress_bar([5], desc="x", disable=True, stream=silent)) == [5]
    assert silent.getvalue() == ""


def test_progress_off_a_terminal_does_not_flood_the_log():
    stream = io.StringIO()
    assert sum(1 for _ in progress_bar(range(1000), desc="scan", stream=stream)) == 1000
    lines = stream.getvalue().splitlines()
    assert lines == [f"scan: {i}/1000" for i in range(100, 1001, 100)]
    unsized = io.StringIO()
    assert sum(1 for _ in progress_bar(iter(range(250)), desc="u", stream=unsized)) == 250
    counts = [int(line.split(": ")[1]) for line in unsized.getvalue().splitlines()]
    assert counts == [*range(1, 10), *range(10, 100, 10), 100, 200]


def test_progress_counter_reports_steps_it_passes_and_not_the_initial_count():
    from convlens.data.progress import Progress

    stream = io.StringIO()
    with Progress(100, desc="pass", initial=20, stream=stream) as counter:
        for _ in range(11):
            counter.update(7)  # 27, 34, ... 97
        counter.update(3)
    counts = [int(line.split(": ")[1].split("/")[0]) for line in stream.getvalue().splitlines()]
    assert counts == [34, 41, 55, 62, 76, 83, 90, 100]  # one line per tenth passed, and the end
    assert "\r" not in stream.getvalue()


def test_method_summaries_are_whole_sentences_without_markup(capsys):
    assert main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    for row in rows:
        assert row["summary"].endswith((".", ")")) and "`" not in row["summary"], row
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert "explain() options" not in text and "--option KEY=VALUE for: patch, stride" in text
    # every registered method, those that need a trained head too, saying so
    from convlens.attribution.registry import METHODS

    assert {row["name"] for row in rows} == set(METHODS)
    heads = {row["name"]: row["needs_head"] for row in rows if row["needs_head"]}
    assert heads.keys() >= {"nin", "acol", "scouter", "drise"}
    assert "only on a model with a trained nin head" in text


@pytest.mark.parametrize("pair", ["patch", "n_stepz=3"])
def test_a_bad_option_is_a_usage_error_before_the_model_loads(pair, monkeypatch, capsys):
    import convlens.models.loading as loading
    from convlens.cli import main

    monkeypatch.setattr(loading, "_load_by_name", lambda *a, **k: pytest.fail("model was loaded"))
    code = main(["explain", "cat", "--method", "integrated_gradients", "--option", pair])
    assert code == 2 and "--option" in capsys.readouterr().err


def test_a_run_whose_methods_all_fail_drops_its_earlier_panel(tmp_path, capsys):
    from convlens.files import ledger_entries

    # the new record says "panel": null; the earlier run's picture would contradict it
    torch.save(small_convnet().eval(), tmp_path / "net.pt")
    base = ["explain", "cat", "-m", str(tmp_path / "net.pt"), "--trust-pickle"]
    base += ["-o", str(tmp_path / "o")]
    assert main([*base, "--method", "saliency"]) == 0
    assert (tmp_path / "o" / "cat.png").is_file()
    assert main([*base, "--method", "smoothgrad", "--option", "n_samples=0"]) == 1
    record = json.loads((tmp_path / "o" / "cat.json").read_text())
    assert record["panel"] is None and not (tmp_path / "o" / "cat.png").exists()
    assert "cat.png" not in ledger_entries(tmp_path / "o")  # forgotten, not only deleted
    capsys.readouterr()


def test_the_summary_names_every_explained_target_once():
    from convlens.cli.explain_tiles import explained_text

    tabby = {"class_name": "tabby", "class_id": 281}
    cat = {"class_name": "tiger cat", "class_id": 282}
    assert explained_text([cat, tabby, cat, tabby]) == "tiger cat (282), tabby (281)"
    rather = {**tabby, "contrast": {"rather_than": "espresso"}}
    assert explained_text([rather, rather]) == "tabby rather than espresso"
    assert explained_text([]) == "nothing"


@pytest.mark.parametrize(
    "args",
    [
        ["filters", "--reduce", "weird"],
        ["filters", "--scaling", "x"],
        ["features", "cat", "--layer", "bn2", "--top", "0"],
    ],
)
def test_bad_feature_options_are_usage_errors_before_the_model_loads(args, monkeypatch):
    import convlens.models.loading as loading
    from convlens.cli import main

    monkeypatch.setattr(loading, "_load_by_name", lambda *a, **k: pytest.fail("model was loaded"))
    assert main(args) == 2
