"""``convlens scan --resume`` draws only the channel pictures that are missing or would
differ; the pictures it keeps stay byte for byte and survive the stale-file sweep."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from convlens.cli import main
from convlens.scan import output

pytestmark = pytest.mark.usefixtures("one_thread")


def _scan(out: Path, *extra: str) -> list[str]:
    args = ["scan", "shapes:6", "--model", "synthetic-shapes", "--layers", "features.2"]
    args += ["--top", "2", "--batch-size", "3", "--projections", "deconvnet", "--out", str(out)]
    assert main([*args, *extra]) == 0
    return sorted(p.name for p in (out / "features.2").glob("channel-*.png"))


@pytest.fixture
def draws(monkeypatch) -> list[str]:
    """Titles of the channel panels drawn (the scan draws each through top_units_panel)."""
    titles: list[str] = []
    panel = output.top_units_panel

    def counted(patches, projections, title, *args, **kwargs):
        titles.append(title)
        return panel(patches, projections, title, *args, **kwargs)

    monkeypatch.setattr(output, "top_units_panel", counted)
    return titles


def test_resume_draws_only_missing_pictures(tmp_path, draws):
    out = tmp_path / "scan"
    pictures = _scan(out)
    assert len(draws) == len(pictures) == 16
    before = {name: (out / "features.2" / name).read_bytes() for name in pictures}
    (out / "features.2" / "channel-0005.png").unlink()
    draws.clear()
    assert _scan(out, "--resume") == pictures
    assert draws == ["features.2 channel 5: top 2 by max"]
    for name, data in before.items():
        assert (out / "features.2" / name).read_bytes() == data


def test_resume_redraws_when_the_projection_changed(tmp_path, draws):
    out = tmp_path / "scan"
    _scan(out)
    draws.clear()
    _scan(out, "--resume", "--projections", "guided")
    assert len(draws) == 16


def test_resume_redraws_when_the_earlier_top_units_differ(tmp_path, draws):
    out = tmp_path / "scan"
    _scan(out, "--top", "3")
    shutil.rmtree(out / ".state")  # no saved state: --resume makes a fresh pass, top 2
    draws.clear()
    _scan(out, "--resume")
    assert len(draws) == 16


def test_without_resume_every_picture_is_drawn(tmp_path, draws):
    out = tmp_path / "scan"
    _scan(out)
    draws.clear()
    _scan(out)
    assert len(draws) == 16
