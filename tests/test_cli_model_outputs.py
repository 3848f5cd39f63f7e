"""`convlens explain` on models whose output is not a logit vector: a dict (``--output-key``
or auto-detected), a ``ModelOutput``-like dataclass, a regression head and an embedding
model explained by its similarity to a reference image (``--target similar:PATH``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tests.helpers.networks import StructuredOutputNet, embedding_net, regression_net

from convlens.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _files(tmp_path, module) -> tuple[str, str, str]:
    """The pickled model and two 32 px photos (noise, seeded)."""
    model = tmp_path / "model.pt"
    torch.save(module, model)
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    return str(model), *paths


def _explain(tmp_path, model, image, *extra) -> dict:
    out = tmp_path / "out"
    arguments = ["explain", image, "-m", model, "--trust-pickle", "-o", str(out), "--force"]
    code = main([*arguments, "--method", "saliency,gradcam", *extra])
    assert code == 0
    record = json.loads((out / "a.json").read_text())
    assert (out / "a.png").is_file() and record["failed_methods"] == []
    return record


@pytest.mark.parametrize(("kind", "key"), [("dict", "logits"), ("dataclass", None)])
def test_structured_outputs(tmp_path, kind, key):
    model, image, _ = _files(tmp_path, StructuredOutputNet(kind))
    record = _explain(tmp_path, model, image, *(["--output-key", key] if key else []))
    assert len(record["predictions"]) == 5  # the 5 logits were read
    assert {m["class_id"] for m in record["methods"]} == {record["predictions"][0]["class_id"]}


def test_ambiguous_output_stops_with_the_option_named(tmp_path, capsys):
    model, image, _ = _files(tmp_path, StructuredOutputNet("ambiguous"))
    code = main(["explain", image, "-m", model, "--trust-pickle", "-o", str(tmp_path / "o")])
    assert code == 1 and "--output-key" in capsys.readouterr().err


def test_regression_and_similarity(tmp_path, capsys):
    model, image, _ = _files(tmp_path, regression_net())
    record = _explain(tmp_path, model, image)
    value = record["predictions"][0]["value"]
    assert [m["score"] for m in record["methods"]] == pytest.approx([value, value])
    assert "output = " in capsys.readouterr().out
    model, image, other = _files(tmp_path, embedding_net())
    record = _explain(tmp_path, model, image, "--target", f"similar:{other}")
    scores = [m["score"] for m in record["methods"]]
    assert record["target"] == f"similar:{other}" and -1 <= scores[0] <= 1
    assert scores[0] == pytest.approx(scores[1])
