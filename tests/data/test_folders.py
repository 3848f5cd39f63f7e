"""replaced_folder: the new folder moves in only when everything was written."""

from __future__ import annotations

import os

import pytest

from convlens.data import folders
from convlens.data.folders import replaced_folder
from convlens.errors import ConvlensError


def test_a_failing_final_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.txt").write_text("old")
    real_rename = os.rename

    def rename(source, target):
        if "new-" in str(source):
            raise OSError("rename refused")
        real_rename(source, target)

    monkeypatch.setattr(folders.os, "rename", rename)
    with pytest.raises(OSError, match="rename refused"):
        with replaced_folder(folder, lambda name: True) as staging:
            (staging / "a.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (folder / "a.txt").read_text() == "old"


def test_permissions_of_the_replaced_folder_are_kept(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir(mode=0o750)
    with replaced_folder(folder, lambda name: True) as staging:
        (staging / "b.txt").write_text("new")
    assert folder.stat().st_mode & 0o777 == 0o750
    assert [p.name for p in folder.iterdir()] == ["b.txt"]


def test_the_current_folder_and_its_parents_are_refused(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    monkeypatch.chdir(folder)
    for target in (".", "..", str(folder)):
        with pytest.raises(ConvlensError, match="current folder"):
            with replaced_folder(target, lambda name: True):
                pass
    assert [p.name for p in folder.iterdir()] == ["old.txt"]
    with replaced_folder("sub", lambda name: True) as staging:  # a subfolder is fine
        (staging / "new.txt").write_text("new")
    assert (folder / "sub" / "new.txt").read_text() == "new"
