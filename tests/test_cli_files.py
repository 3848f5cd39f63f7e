"""What the commands write (issue 19): ``--force`` on every command that writes, files
convlens did not write kept (explain into the data set's own folder included), and a
re-run into the same folder removing only its own stale outputs."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image
from tests.helpers.cli import commands_with_any
from tests.helpers.networks import tiny_gap_classifier

from convlens.cli import main
from convlens.data.synthetic import SyntheticShapes

pytestmark = pytest.mark.usefixtures("one_thread")
OUTPUT_OPTIONS = {"--out", "-o"}


def test_every_command_that_writes_a_file_has_force():
    writing = commands_with_any(OUTPUT_OPTIONS)  # sub-commands too ("train head")
    for name, options in writing.items():
        assert "--force" in options, (
            f"convlens {name} writes files (--out) but has no --force: add "
            "`force: ForceOption = False` (convlens.cli.options) and pass it to the writer"
        )
    expected = {"explain", "scan", "embed", "report", "train head", "train segmentation"}
    assert expected | {"evaluate", "train shapes-model"} <= set(writing)


def _shape_folder(folder, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, pixels in enumerate(SyntheticShapes(count).batch().display):
        Image.fromarray(pixels).save(folder / f"shape{i}.png")
        names.append(f"shape{i}")
    return names


def test_explain_into_the_data_set_keeps_the_annotations_beside_the_images(tmp_path, capsys):
    data = tmp_path / "data"
    _shape_folder(data, 2)
    annotation = '{"shapes": [{"label": "circle", "points": [[1, 2]]}]}'
    (data / "shape0.json").write_text(annotation)  # labelme-style, beside its image
    model = tmp_path / "tiny.pt"
    torch.save(tiny_gap_classifier().eval(), model)
    args = ["explain", str(data), "-m", str(model), "--trust-pickle"]
    args += ["--format", "svg", "-o", f"{data}/"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert (data / "shape0.json").read_text() == annotation
    assert not (data / "shape0.svg").exists()  # checked before any work on that image
    assert (data / "shape1.svg").is_file() and (data / "shape1.json").is_file()
    (line,) = [line for line in err.splitlines() if "shape0.json" in line]
    assert "convlens did not write it" in line and "--force" in line
    assert main([*args, "--force"]) == 0
    assert json.loads((data / "shape0.json").read_text())["source"] == str(data / "shape0.png")


def test_images_whose_names_differ_after_a_dot_get_their_own_outputs(tmp_path, capsys):
    data = tmp_path / "data"
    _shape_folder(data, 2)
    (data / "shape0.png").rename(data / "img.v1.png")
    (data / "shape1.png").rename(data / "img.v2.png")
    model = tmp_path / "tiny.pt"
    torch.save(tiny_gap_classifier().eval(), model)
    out = tmp_path / "out"
    args = ["explain", str(data), "-m", str(model), "--trust-pickle", "--method", "gradcam"]
    assert main([*args, "--format", "svg", "-o", f"{out}/"]) == 0
    for name in ("img.v1", "img.v2"):
        record = json.loads((out / f"{name}.json").read_text())
        assert record["source"] == str(data / f"{name}.png")
        assert record["panel"] == str(out / f"{name}.svg") and (out / f"{name}.svg").is_file()


def _scan(data, out, layers: str, *extra: str) -> int:
    return main(
        ["scan", str(data), "--model", "synthetic-shapes", "--layers", layers, "--k", "2"]
        + ["--out", str(out), "--batch-size", "4", "--projections", "none", *extra]
    )


def test_scan_keeps_foreign_files_and_removes_its_own_stale_layers(tmp_path, capsys):
    _shape_folder(tmp_path / "data", 4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "scan.json").write_text("not convlens's")
    assert _scan(tmp_path / "data", out, "features.0") == 1  # refused before any work
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scan.json exists" in err and "--force" in err
    assert (out / "scan.json").read_text() == "not convlens's"

    assert _scan(tmp_path / "data", out, "features.0,features.2", "--force") == 0
    (out / "notes.txt").write_text("mine")
    (out / "features.0" / "mine.txt").write_text("mine too")
    assert _scan(tmp_path / "data", out, "features.2") == 0  # no --force: all files its own
    assert json.loads((out / "scan.json").read_text())["layers"] == ["features.2"]
    assert (out / "notes.txt").read_text() == "mine"
    assert [p.name for p in (out / "features.0").iterdir()] == ["mine.txt"]
    page = (out / "index.html").read_text()
    assert "features.0" not in page
    assert all((out / src).is_file() for src in re.findall(r'src="([^"]+)"', page))


def test_embed_refuses_to_replace_a_file_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "emb"
    out.mkdir()
    (out / "index.json").write_text("{}")
    args = ["embed", "shapes:6", "--model", "synthetic-shapes", "--out", str(out)]
    assert main([*args, "--map", "none"]) == 1
    assert "index.json exists" in capsys.readouterr().err
    assert (out / "index.json").read_text() == "{}" and not (out / "embeddings.npy").exists()


def test_report_out_keeps_a_file_it_did_not_write(tmp_path, capsys, monkeypatch):
    import convlens.models as models

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("work was done"))
    assert main(["report", "cat", "--out", str(notes)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notes.txt exists" in err and "--force" in err
    assert notes.read_text() == "my notes"


@pytest.mark.parametrize("out", ["pages/", "report.pdf", "report"])
def test_report_out_must_name_an_html_file(out, tmp_path, capsys, monkeypatch):
    # a trailing slash wrote the page as a file named after the folder; .pdf got HTML
    import convlens.models as models

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("work was done"))
    assert main(["report", "cat", "--out", out]) == 2
    assert "NAME.html" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_a_picture_convlens_did_not_write(tmp_path, capsys):
    from convlens.files import owned

    theirs = tmp_path / "photo.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(theirs)
    before = theirs.read_bytes()
    args = ["filters", "--model", "synthetic-shapes", "--out", str(theirs)]
    assert main(args) == 1 and theirs.read_bytes() == before
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert theirs.read_bytes() != before and owned(theirs)


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_earlier_one(
    tmp_path, capsys, monkeypatch
):
    import os

    from tests.test_files import _Limited

    picture = tmp_path / "filters.png"
    args = ["filters", "--model", "synthetic-shapes", "--out", str(picture)]
    assert main(args) == 0
    before = picture.read_bytes()
    capsys.readouterr()
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: _Limited(real(*a, **k), 100))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no space left")
    assert f"{picture}; the earlier file was kept" in err
    assert picture.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".convlens-files.json", "filters.png"]
