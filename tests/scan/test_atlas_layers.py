"""The scan atlas names the layers it covers, so a default scan says what it left out."""

from __future__ import annotations

import pytest

from convlens.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_atlas_lists_the_scanned_layers_with_channel_counts(tmp_path):
    out = tmp_path / "scan"
    args = ["scan", "shapes:3", "--model", "synthetic-shapes", "--layers", "features.5,features.2"]
    args += ["--top", "1", "--projections", "none", "--out", str(out)]
    assert main(args) == 0
    page = (out / "index.html").read_text()
    assert (
        "Layers scanned: features.5 (32 channels), features.2 (16 channels). Other layers: "
        "<code>convlens scan --layers L1,L2</code>"
    ) in page
