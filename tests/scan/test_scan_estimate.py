"""The run-time estimate a scan prints before drawing the rest of its channel pictures."""

from __future__ import annotations

import pytest

from convlens.cli import main
from convlens.scan import output, patches

pytestmark = pytest.mark.usefixtures("one_thread")


def test_estimate_extrapolates_each_layers_first_group(capsys):
    work = {"a": list(range(10)), "b": list(range(4))}
    firsts = {"a": [0, 1], "b": [0]}
    # a: 3 s per picture x 8 left; b: 10 s per picture x 3 left
    assert output.print_estimate({"a": 6.0, "b": 10.0}, firsts, work) == pytest.approx(54.0)
    assert capsys.readouterr().err == (
        "scan: 11 more channel pictures in 2 layers, about 54 s at the pace of the first 3\n"
    )


def test_short_runs_print_no_estimate(capsys):
    assert output.print_estimate({"a": 1.0}, {"a": [0]}, {"a": [0, 1, 2]}) == 2.0
    assert capsys.readouterr().err == ""


def test_scan_prints_one_estimate_line_before_the_rest(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(output, "ESTIMATE_SECONDS", -1.0)  # announce any second pass
    monkeypatch.setattr(patches, "GROUP_BYTES", 1)  # groups of --batch-size units
    args = ["scan", "shapes:4", "--model", "synthetic-shapes", "--layers", "features.2"]
    args += ["--top", "2", "--batch-size", "4", "--out", str(tmp_path / "scan")]
    assert main(args) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "more channel" in line]
    # 16 channels of 2 units, groups of 4 units: the first 2 pictures are timed
    assert len(lines) == 1
    assert lines[0].startswith("scan: 14 more channel pictures in 1 layer, about ")


def test_estimate_times_at_most_estimate_units_of_a_large_group(tmp_path, capsys, monkeypatch):
    """Groups larger than `ESTIMATE_UNITS` (here all 16 channels in one): the estimate
    still times only the first ``ESTIMATE_UNITS`` units' channels."""
    monkeypatch.setattr(output, "ESTIMATE_SECONDS", -1.0)
    monkeypatch.setattr(output, "ESTIMATE_UNITS", 6)
    args = ["scan", "shapes:4", "--model", "synthetic-shapes", "--layers", "features.2"]
    args += ["--top", "2", "--batch-size", "4", "--out", str(tmp_path / "scan")]
    assert main(args) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "more channel" in line]
    # 16 channels of 2 units: 3 channels make the first 6 units
    assert lines == [lines[0]] and lines[0].startswith("scan: 13 more channel pictures")
