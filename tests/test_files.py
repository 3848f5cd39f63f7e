"""The one writer (`convlens.files`): all or nothing, never over a file convlens did not
write, a full disk is one line and keeps the earlier file, and a re-run removes only its
own stale outputs."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convlens
from convlens import files
from convlens.errors import DiskFullError, OutputError, OutputExistsError
from convlens.files import LEDGER, atomic_file, owned, write_json, write_text, writing

BUDGET = 64 * 1024  # bytes a full disk takes before it refuses


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# ---- a full disk: a real tiny tmpfs where the test may mount one, else a simulated one ----


class _Limited:
    """A file object whose writes fail with ENOSPC once ``budget`` bytes were written."""

    def __init__(self, handle, budget: int) -> None:
        self._handle, self._left = handle, budget

    def write(self, data) -> int:
        self._left -= len(data)
        if self._left < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


def _mounted_tmpfs(folder: Path) -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={BUDGET}", "tmpfs", str(folder)],
        capture_output=True,
    )
    return done.returncode == 0


@pytest.fixture(params=["tmpfs", "simulated"])
def full_disk(request, tmp_path, monkeypatch):
    """A folder on a disk that fills up after about 64 KiB."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if request.param == "tmpfs":
        if not _mounted_tmpfs(folder):
            pytest.skip("cannot mount a tmpfs here (not root); the simulated disk covers it")
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
        return
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: _Limited(real(*a, **k), BUDGET))
    yield folder


def test_a_full_disk_keeps_the_earlier_file_and_says_so_in_one_line(full_disk):
    path = full_disk / "topk.json"
    write_json(path, {"good": list(range(10))})
    before = path.read_bytes()
    with pytest.raises(DiskFullError) as raised:
        write_json(path, {"big": "x" * (4 * BUDGET)})
    message = str(raised.value)
    assert "\n" not in message and str(path) in message and "earlier file was kept" in message
    assert path.read_bytes() == before and owned(path)
    assert _names(full_disk) == [LEDGER, "topk.json"]  # no temporary file left
    with pytest.raises(DiskFullError, match="nothing was written"):
        write_text(full_disk / "new.txt", "y" * (4 * BUDGET))
    assert not (full_disk / "new.txt").exists()


def test_a_checkpoint_on_a_full_disk_keeps_the_earlier_one_and_leaves_no_partial(full_disk):
    from convlens.train.loop import train_epochs

    def train(width: int) -> None:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(width, 64), torch.nn.Linear(64, 2))
        inputs, targets = torch.randn(8, width), torch.arange(8) % 2
        train_epochs(
            model,
            inputs,
            targets,
            loss=torch.nn.functional.cross_entropy,
            hits=lambda out, t: (int((out.argmax(1) == t).sum()), len(t)),
            epochs=1,
            batch_size=8,
            checkpoint=full_disk / "checkpoint.pt",
        )

    train(4)  # weights and two Adam moments: a few KB, fits
    before = (full_disk / "checkpoint.pt").read_bytes()
    with pytest.raises(DiskFullError, match="checkpoint.pt; the earlier file was kept"):
        train(200)  # 3 x 200 x 64 floats: about 150 KB, does not fit
    assert (full_disk / "checkpoint.pt").read_bytes() == before
    assert _names(full_disk) == [LEDGER, "checkpoint.pt"]  # no .partial, no temporary file


# ---- all or nothing ---------------------------------------------------------------------


def test_a_writer_that_fails_midway_leaves_the_old_file(tmp_path):
    path = write_json(tmp_path / "a.json", {"v": 1})
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="midway"), atomic_file(path) as handle:
        handle.write(b'{"v": 2, "rows": [' + b"1, " * 10_000)
        raise RuntimeError("midway")
    assert path.read_bytes() == before and owned(path)
    assert _names(tmp_path) == [LEDGER, "a.json"]


_KILLED_WRITER = """
import sys, time
from convlens.files import atomic_file
with atomic_file(sys.argv[1]) as handle:
    handle.write(b"partial " * 100_000)
    handle.flush()
    print("written", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("earlier", [True, False])
def test_a_killed_write_leaves_the_old_file_or_none(tmp_path, earlier):
    path = tmp_path / "scan.json"
    if earlier:
        write_text(path, '{"old": true}')
    env = os.environ | {"PYTHONPATH": str(Path(convlens.__file__).parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert process.stdout.readline() == b"written\n"  # mid-write: 800 KB in the file
    finally:
        process.kill()
        process.wait()
    if earlier:
        assert path.read_text() == '{"old": true}' and owned(path)
    else:
        assert not path.exists()
    leftovers = [name for name in _names(tmp_path) if name not in (LEDGER, "scan.json")]
    assert all(name.startswith(".scan.json.") and name.endswith(".tmp") for name in leftovers)


@pytest.mark.parametrize("kind", ["npy", "torch", "pillow", "figure"])
def test_each_format_writes_through_a_file_object(tmp_path, kind):
    path = tmp_path / f"x.{kind}"
    if kind == "npy":
        with atomic_file(path) as handle:
            np.save(handle, np.arange(5))
        assert np.load(path).tolist() == [0, 1, 2, 3, 4]
    elif kind == "torch":
        files.torch_save({"w": torch.ones(3)}, path)
        assert torch.load(path, weights_only=True)["w"].tolist() == [1.0, 1.0, 1.0]
    elif kind == "pillow":
        with atomic_file(path) as handle:
            Image.new("RGB", (3, 2), (9, 8, 7)).save(handle, format="PNG")
        assert Image.open(path).getpixel((0, 0)) == (9, 8, 7)
    else:
        from convlens.render.figures import save_figure

        path = tmp_path / "x.svg"
        from matplotlib.figure import Figure

        save_figure(Figure(figsize=(1, 1)), path)
        assert b"<svg" in path.read_bytes()
    assert owned(path)


# ---- ownership ---------------------------------------------------------------------------


def test_a_file_convlens_did_not_write_is_replaced_only_with_force(tmp_path):
    theirs = tmp_path / "notes.json"
    theirs.write_text("my notes")
    with pytest.raises(OutputExistsError, match=r"notes\.json exists.*--force"):
        write_json(theirs, {"a": 1})
    assert theirs.read_text() == "my notes"
    write_json(theirs, {"a": 1}, force=True)
    assert json.loads(theirs.read_text()) == {"a": 1} and owned(theirs)
    write_json(theirs, {"a": 2})  # now convlens's own: replaced freely


def test_a_file_edited_after_convlens_wrote_it_is_no_longer_its_own(tmp_path):
    path = write_text(tmp_path / "record.json", "{}")
    path.write_text('{"edited": 1}')
    assert not owned(path)
    with pytest.raises(OutputExistsError):
        write_text(path, "{}")
    assert path.read_text() == '{"edited": 1}'


def test_pictures_marked_by_an_older_convlens_still_count_as_its_own(tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", files.MARK)
    Image.new("RGB", (2, 2)).save(tmp_path / "old.png", pnginfo=info)
    Image.new("RGB", (2, 2)).save(tmp_path / "photo.png")
    assert owned(tmp_path / "old.png") and not owned(tmp_path / "photo.png")


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_only_the_mark_field_convlens_writes_makes_a_picture_its_own(suffix, tmp_path):
    # figures written outside any ledger folder carry the mark in their metadata field
    from matplotlib.figure import Figure

    from convlens.render.figures import save_figure

    ours = save_figure(Figure(figsize=(1, 1)), tmp_path / f"ours{suffix}")
    (tmp_path / files.LEDGER).unlink(missing_ok=True)
    assert owned(ours)  # by its mark alone
    # a user's picture that merely mentions convlens, in text or a comment, is not ours
    theirs = tmp_path / f"theirs{suffix}"
    if suffix == ".png":
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "a photo for my convlens talk")
        Image.new("RGB", (2, 2)).save(theirs, pnginfo=info)
    elif suffix == ".svg":
        theirs.write_text('<svg xmlns="http://www.w3.org/2000/svg"><text>convlens</text></svg>')
    else:
        theirs.write_bytes(b"%PDF-1.4\n% drawn for a convlens tutorial\n%%EOF\n")
    assert not owned(theirs)


def test_a_file_written_twice_in_one_run_is_its_own_before_the_ledger_is_flushed(tmp_path):
    with writing(tmp_path, "scan"):
        for step in range(3):  # a resume state rewritten every few batches
            write_text(tmp_path / ".state" / "scan.pt", f"state {step}")
    assert (tmp_path / ".state" / "scan.pt").read_text() == "state 2"


# ---- stale outputs -----------------------------------------------------------------------


def test_a_rerun_removes_its_own_stale_outputs_and_keeps_everything_else(tmp_path):
    with writing(tmp_path, "scan"):
        write_text(tmp_path / "scan.json", "1")
        write_text(tmp_path / "layer1" / "topk.json", "1")
        write_text(tmp_path / "layer2" / "topk.json", "1")
        write_text(tmp_path / "layer2" / "channel-0000.png", "1")
        write_text(tmp_path / "edited.txt", "1")
    with writing(tmp_path, "embed"):
        write_text(tmp_path / "embeddings.npy", "other job")
    (tmp_path / "layer1" / "mine.txt").write_text("the user's")
    (tmp_path / "edited.txt").write_text("changed by the user")
    with writing(tmp_path, "scan"):
        write_text(tmp_path / "scan.json", "2")
        write_text(tmp_path / "layer2" / "topk.json", "2")
    assert _names(tmp_path) == [
        LEDGER,
        "edited.txt",
        "embeddings.npy",
        "layer1",
        "layer2",
        "scan.json",
    ]
    assert _names(tmp_path / "layer1") == ["mine.txt"]  # its topk.json went, the user's stays
    assert _names(tmp_path / "layer2") == [LEDGER, "topk.json"]
    assert (tmp_path / "edited.txt").read_text() == "changed by the user"


def test_a_run_that_fails_removes_nothing(tmp_path):
    with writing(tmp_path, "explain"):
        write_text(tmp_path / "a.json", "1")
    with pytest.raises(RuntimeError), writing(tmp_path, "explain"):
        write_text(tmp_path / "b.json", "1")
        raise RuntimeError("stopped")
    assert _names(tmp_path) == [LEDGER, "a.json", "b.json"]
    assert owned(tmp_path / "a.json") and owned(tmp_path / "b.json")


def test_unique_name_counts_up_from_two_with_the_given_separator():
    used: set[str] = set()
    names = [files.unique_name("cat", used) for _ in range(3)]
    assert names == ["cat", "cat_2", "cat_3"] and used == set(names)
    assert files.unique_name("cat", used, "-") == "cat-2"


def test_a_path_under_a_file_is_refused_before_any_work(tmp_path):
    from convlens.files import check_folder, check_writable

    (tmp_path / "file").write_text("mine")
    for check, path in ((check_writable, "file/sub/out.png"), (check_folder, "file/sub")):
        with pytest.raises(OutputError, match="is a file, not a folder"):
            check(tmp_path / path)
    assert (tmp_path / "file").read_text() == "mine"
    assert check_writable(tmp_path / "new" / "deeper" / "out.png").name == "out.png"


def test_a_run_into_a_parent_folder_keeps_what_a_run_into_a_subfolder_wrote(tmp_path):
    """``explain a -o res/cats/`` then ``explain b -o res/``: the second run's stale sweep
    covers only what earlier runs wrote into ``res/`` itself."""
    cats = tmp_path / "res" / "cats"
    with writing(cats, "explain"):
        write_text(cats / "a.json", "a")
    with writing(tmp_path / "res", "explain"):
        write_text(tmp_path / "res" / "b.json", "b")
    assert (cats / "a.json").read_text() == "a"
    with writing(cats, "explain"):  # its own folder: the usual sweep
        write_text(cats / "c.json", "c")
    assert not (cats / "a.json").exists() and (cats / "c.json").is_file()
