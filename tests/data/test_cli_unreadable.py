"""One undecodable file (DDS bytes named ``b_bad.png``) in a folder of good images: every
command that reads the folder skips it with one stderr line naming it, processes the
rest and exits 1; ``scan --resume`` too."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from convlens.cli import main
from convlens.data.synthetic import SyntheticShapes

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "synthetic-shapes"


@pytest.fixture
def folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for index, pixels in enumerate(SyntheticShapes(2).batch().display):
        Image.fromarray(pixels).save(data / f"a{index}.png")
    dds = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(dds, "DDS")
    (data / "b_bad.png").write_bytes(dds.getvalue())
    return data


def skipped_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("skipped ")]


def assert_one_skip_line(err: str) -> None:
    (line,) = skipped_lines(err)
    assert "b_bad.png" in line and "accepted format" in line and "Traceback" not in err


def test_explain_skips_the_bad_file_and_explains_the_rest(folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["explain", str(folder), "-m", MODEL, "--method", "saliency", "-o", str(out)]
    assert main(args) == 1
    assert_one_skip_line(capsys.readouterr().err)
    assert sorted(path.name for path in out.glob("*.png")) == ["a0.png", "a1.png"]


def test_predict_skips_the_bad_file(folder, capsys):
    assert main(["predict", str(folder), "-m", MODEL, "--json"]) == 1
    captured = capsys.readouterr()
    assert_one_skip_line(captured.err)
    printed = json.loads(captured.out)
    assert [r["source"].rsplit("/", 1)[-1] for r in printed["results"]] == ["a0.png", "a1.png"]


def test_scan_and_its_resume_skip_the_bad_file(folder, tmp_path, capsys):
    out = tmp_path / "scan"
    args = ["scan", str(folder), "-m", MODEL, "--layers", "features.2", "--k", "1"]
    args += ["--projections", "none", "--out", str(out), "--save-every", "1"]
    assert main(args) == 1
    assert_one_skip_line(capsys.readouterr().err)
    record = json.loads((out / "features.2" / "topk.json").read_text())
    sources = {unit["source"] for channel in record["channels"] for unit in channel["top"]}
    assert sources and all("b_bad" not in source for source in sources)
    assert main([*args, "--resume"]) == 1
    assert_one_skip_line(capsys.readouterr().err)


def test_embed_skips_the_bad_file(folder, tmp_path, capsys):
    out = tmp_path / "embed"
    assert main(["embed", str(folder), "-m", MODEL, "--map", "none", "--out", str(out)]) == 1
    assert_one_skip_line(capsys.readouterr().err)
    index = json.loads((out / "index.json").read_text())
    assert len(index["sources"]) == 2


def test_report_skips_the_bad_file(folder, tmp_path, capsys):
    page = tmp_path / "report.html"
    args = ["report", str(folder / "a0.png"), str(folder / "b_bad.png"), "-m", MODEL]
    assert main([*args, "--methods", "saliency", "--top", "1", "-o", str(page)]) == 1
    assert_one_skip_line(capsys.readouterr().err)
    assert "a0" in page.read_text()


def test_analysis_data_skips_the_bad_file(folder, tmp_path, capsys):
    tree = tmp_path / "tree"
    for label in ("0-circle", "1-square"):
        (tree / label).mkdir(parents=True)
    (folder / "a0.png").rename(tree / "0-circle" / "a0.png")
    (folder / "a1.png").rename(tree / "1-square" / "a1.png")
    (folder / "b_bad.png").rename(tree / "1-square" / "b_bad.png")
    assert main(["camcrop", "-m", MODEL, "--data", str(tree), "--json"]) == 1
    captured = capsys.readouterr()
    assert_one_skip_line(captured.err)
    crops = json.loads(captured.out)
    assert [row["source"].rsplit("/", 1)[-1] for row in crops["images"]] == ["a0.png", "a1.png"]
