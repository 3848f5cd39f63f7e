"""The filters / features / visualize commands, run in-process on the default model."""

from __future__ import annotations

import numpy as np
from PIL import Image

from convlens.cli import main


def test_filters_writes_one_tile_per_stem_filter(tmp_path, capsys, default_model):
    out = tmp_path / "f.png"
    assert main(["filters", "--out", str(out)]) == 0
    assert "32 rgb tiles of conv_stem" in capsys.readouterr().out
    assert np.asarray(Image.open(out)).ndim == 3


def test_visualize_writes_224_png_and_rejects_bad_options(tmp_path, capsys, default_model):
    out = tmp_path / "v.png"
    assert main(["visualize", "--channel", "blocks.1:3", "--steps", "1", "--out", str(out)]) == 0
    assert Image.open(out).size == (224, 224)
    assert main(["visualize", "--class", "espreso"]) == 1
    assert "did you mean 'espresso'" in capsys.readouterr().err
    assert main(["visualize", "--class", "1", "--channel", "blocks.1:3"]) == 1
