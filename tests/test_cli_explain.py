"""`convlens explain` end to end on the bundled cat photo (fast methods only)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from convlens.cli import main


def test_explain_cat_writes_panel_and_record(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", "cat", "--method", "gradcam,cam", "--out", str(out), "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    record = json.loads((out / "cat.json").read_text())
    assert printed["records"] == [record] and printed["errors"] == []
    assert [m["method"] for m in record["methods"]] == ["gradcam", "cam"]
    assert record["layer"] == "bn2"
    top = record["predictions"][0]
    assert 281 <= top["class_id"] <= 285
    assert all(m["class_id"] == top["class_id"] for m in record["methods"])
    assert all(m["seconds"] > 0 for m in record["methods"])
    panel = np.asarray(Image.open(out / "cat.png"))
    # input + two overlays side by side, each 224 wide
    assert panel.shape[1] >= 3 * 224 and panel.shape[0] >= 224


def test_explain_reports_bad_image_processes_the_rest_and_exits_1(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_text("not a picture")
    out = tmp_path / "out"
    code = main(
        ["explain", str(bad), "cat", "--method", "cam", "--target", "tabby", "-o", str(out)]
    )
    assert code == 1
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "broken.png" in captured.err
    assert (out / "cat.png").is_file() and not (out / "broken.png").exists()
    record = json.loads((out / "cat.json").read_text())
    assert record["methods"][0]["class_id"] == 281 and record["target"] == "tabby"


def test_explain_unknown_method_is_one_line_error(tmp_path, capsys):
    assert main(["explain", "cat", "--method", "gradcan", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown method 'gradcan'") and "gradcam" in err
