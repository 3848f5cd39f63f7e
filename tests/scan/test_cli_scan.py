"""``convlens scan``, ``embed`` and ``neighbors`` end to end on tiny data, and the same scan
under ``torchrun --nproc_per_node 2`` (gloo) equal to one process."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.helpers.scans import SCAN_ARGS, stopped_cli_scan
from tests.helpers.torchrun import TWO_PROCESS_COMMANDS

from convlens.cli import main
from convlens.data.synthetic import SyntheticShapes

pytestmark = pytest.mark.usefixtures("one_thread")
TOP_KEYS = {"source", "value", "y", "x", "box"}


def _shape_files(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    images = SyntheticShapes(count).batch().display
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / f"shape{i:02d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")


def test_scan_writes_topk_json_panels_and_a_self_contained_atlas(tmp_path, capsys):
    _shape_files(tmp_path / "data", 8)
    out = tmp_path / "out"
    args = [
        "scan",
        str(tmp_path / "data"),
        "--model",
        "synthetic-shapes",
        "--layers",
        "features.2",
        "--top",
        "2",
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--projections",
        "deconvnet",
    ]
    assert main(args) == 1  # the unreadable file is skipped, the rest scanned
    captured = capsys.readouterr()
    assert "skipped " in captured.err and "broken.png" in captured.err
    # off a terminal: plain progress lines, none redrawn, none repeated
    progress = [line for line in captured.err.splitlines() if line.startswith("features.2: ")]
    assert progress and progress[-1] == "features.2: 16/16" and "\r" not in captured.err
    assert len(set(progress)) == len(progress)
    doc = json.loads((out / "features.2" / "topk.json").read_text())
    assert set(doc) == {"layer", "k", "by", "channels"}
    assert (doc["layer"], doc["k"], doc["by"]) == ("features.2", 2, "max")
    assert [c["channel"] for c in doc["channels"]] == list(range(16))
    for channel in doc["channels"]:
        assert len(channel["top"]) == 2 and len({u["source"] for u in channel["top"]}) == 2
        for unit in channel["top"]:
            assert set(unit) == TOP_KEYS and Path(unit["source"]).parent == tmp_path / "data"
            # the first 3x3 convolution (padding 1): a 3x3 field centred on the unit
            assert unit["box"] == [unit["x"] - 1, unit["y"] - 1, unit["x"] + 2, unit["y"] + 2]
        assert (out / "features.2" / f"channel-{channel['channel']:04d}.png").is_file()
    page = (out / "index.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) == 16 and all((out / src).is_file() for src in sources)


def test_embed_then_neighbors_finds_the_image_itself(tmp_path, capsys):
    out = tmp_path / "emb"
    assert (
        main(
            [
                "embed",
                "shapes:12",
                "--model",
                "synthetic-shapes",
                "--out",
                str(out),
                "--map",
                "none",
                "--batch-size",
                "5",
            ]
        )
        == 0
    )
    index = json.loads((out / "index.json").read_text())
    assert index["sources"] == [f"shapes:{i}" for i in range(12)]
    assert np.load(out / "embeddings.npy").dtype == np.float16
    assert (out / "index.html").is_file()
    query = tmp_path / "query.png"
    Image.fromarray(SyntheticShapes(12).batch([4]).display[0]).save(query)
    capsys.readouterr()
    strip = tmp_path / "near.png"
    assert (
        main(
            [
                "neighbors",
                str(query),
                "--index",
                str(out),
                "--top",
                "3",
                "--json",
                "--out",
                str(strip),
            ]
        )
        == 0
    )
    found = json.loads(capsys.readouterr().out)
    assert [set(f) for f in found] == [{"source", "distance"}] * 3
    assert found[0]["source"] == "shapes:4" and found[0]["distance"] < 1e-3
    assert strip.is_file()
    old_spelling = ["neighbors", str(query), "--index", str(out), "--k", "2", "--json"]
    assert main([*old_spelling, "--out", str(strip)]) == 0  # --k: the hidden old name
    assert json.loads(capsys.readouterr().out) == found[:2]


def test_neighbors_draws_from_another_folder_than_the_embeds(tmp_path, monkeypatch, capsys):
    _shape_files(tmp_path / "work" / "imgs", 6)
    (tmp_path / "work" / "imgs" / "broken.png").unlink()
    monkeypatch.chdir(tmp_path / "work")
    args = ["embed", "imgs", "--model", "synthetic-shapes", "--out", "emb", "--map", "none"]
    assert main(args) == 0
    index = json.loads((tmp_path / "work" / "emb" / "index.json").read_text())
    assert index["data"] == str(tmp_path / "work" / "imgs")  # absolute, wherever it runs
    monkeypatch.chdir(tmp_path)
    query = str(tmp_path / "work" / "imgs" / "shape02.png")
    strip = tmp_path / "near.png"
    argv = ["neighbors", query, "--index", "work/emb", "--top", "2", "--out", str(strip)]
    assert main(argv) == 0
    assert strip.is_file() and "shape02.png" in capsys.readouterr().out


def _without_values(doc: dict) -> dict:
    return {
        **doc,
        "channels": [
            [{**unit, "value": None} for unit in channel["top"]] for channel in doc["channels"]
        ],
    }


def _values(doc: dict) -> list[float]:
    return [unit["value"] for channel in doc["channels"] for unit in channel["top"]]


@pytest.mark.slow
def test_two_process_torchrun_equals_one_process(tmp_path, two_process_outputs):
    """``scan`` and ``embed`` under ``torchrun --nproc_per_node 2`` (the suite's one launch,
    `tests.helpers.torchrun`) write what one process writes."""
    scan = TWO_PROCESS_COMMANDS["scan"]
    assert main([*scan, "--out", str(tmp_path / "one")]) == 0
    for layer in ("features.5", "features.15"):
        one = json.loads((tmp_path / "one" / layer / "topk.json").read_text())
        two = json.loads((two_process_outputs / "scan" / layer / "topk.json").read_text())
        assert _without_values(one) == _without_values(two)
        # a batch of other images sums the convolution in another order: float rounding
        assert _values(one) == pytest.approx(_values(two), rel=1e-5)
        pngs = sorted((tmp_path / "one" / layer).glob("*.png"))
        assert pngs  # the channels' panels
        for png in pngs:
            a = np.asarray(Image.open(png), dtype=int)
            b = np.asarray(Image.open(two_process_outputs / "scan" / layer / png.name), dtype=int)
            assert np.abs(a - b).max() <= 1
    embed = TWO_PROCESS_COMMANDS["embed"]
    embed = [*embed[: embed.index("--batch-size")], "--batch-size", "7"]  # 4 under torchrun
    assert main([*embed, "--out", str(tmp_path / "one-emb")]) == 0
    one = np.load(tmp_path / "one-emb" / "embeddings.npy").astype(np.float32)
    two = np.load(two_process_outputs / "embed" / "embeddings.npy").astype(np.float32)
    assert np.allclose(one, two, rtol=2e-3, atol=1e-4)  # float16 storage
    index = json.loads((two_process_outputs / "embed" / "index.json").read_text())
    assert index["sources"] == [f"shapes:{i}" for i in range(18)]


def test_cli_resume_continues_a_stopped_scan(tmp_path):
    args = [*SCAN_ARGS, "--top", "2"]
    assert main(["scan", *args, "--out", str(tmp_path / "whole")]) == 0

    stopped_cli_scan(tmp_path / "part")  # the same scan as the CLI's, stopped after 2 of 4 batches
    assert main(["scan", *args, "--out", str(tmp_path / "part"), "--resume"]) == 0
    whole = (tmp_path / "whole" / "features.2" / "topk.json").read_text()
    assert (tmp_path / "part" / "features.2" / "topk.json").read_text() == whole
