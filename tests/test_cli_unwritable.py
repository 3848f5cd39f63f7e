"""Every command that writes fails fast on an ``--out`` it cannot write: exit 1 or 2, one
line on stderr, before any model is loaded (issue 20's acceptance test).

We run as root in CI, where ``chmod`` does not stop a write: the unwritable place is a path
under a regular file (``afile/sub/out``), which nobody can create.
"""

from __future__ import annotations

import os
import time

import pytest
from tests.helpers.cli import command_paths, options_of

from convlens.cli import main

WRITERS = {name for name, command in command_paths().items() if "--out" in options_of(command)}

# The arguments each writing command needs besides --out, and the name its --out takes
# (a figure file, a page, weights, or a folder).
CALLS = {
    "ablate": ([], "out.png"),
    "attribute": (["shapes:4"], "out"),
    "concepts": (["scenes:4", "--class", "circle", "--layer", "features.16"], "out"),
    "dissect": (["--layer", "features.16"], "out"),
    "embed": (["shapes:4"], "out"),
    "evaluate": ([], "out"),
    "evolution": (["--model", "run.pt", "--layer", "1"], "out.png"),
    "explain": (["cat"], "out"),
    "features": (["cat"], "out.png"),
    "filters": ([], "out.png"),
    "invariance": ([], "out.png"),
    "neighbors": (["cat", "--index", "index"], "out.png"),
    "report": (["cat"], "report.html"),
    "scan": (["cat"], "out"),
    "spray": (["maps"], "out"),
    "train detector-model": ([], "weights.pt"),
    "train head": (["cam"], "out"),
    "train scenes-model": ([], "weights.pt"),
    "train segmentation": ([], "out"),
    "train shapes-model": ([], "weights.pt"),
    "train shortcut-model": (["--rate", "0.5"], "weights.pt"),
    "visualize": (["--class", "1"], "out.png"),
}


def test_every_writing_command_is_covered():
    assert set(CALLS) == WRITERS, "add the new command's arguments to CALLS"


@pytest.fixture
def no_model_loading(monkeypatch):
    import convlens.models.loading as loading

    monkeypatch.setattr(loading, "_load_by_name", lambda *a, **k: pytest.fail("model was loaded"))


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize("name", sorted(CALLS))
def test_unwritable_out_fails_at_once_in_one_line(name, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a folder\n")
    arguments, out_name = CALLS[name]
    out = blocker / "sub" / out_name
    started = time.monotonic()
    code = main([*name.split(), *arguments, "--out", str(out)])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code in (1, 2)
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert str(blocker) in err
    assert elapsed < 5.0
    assert blocker.read_text() == "a file, not a folder\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.usefixtures("no_model_loading")
def test_read_only_folder_is_refused_before_work(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["explain", "cat", "--out", str(locked / "out")]) == 1
    finally:
        locked.chmod(0o700)
    assert "is not writable" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
@pytest.mark.usefixtures("no_model_loading")
def test_a_folder_no_file_can_be_created_in_is_refused_even_for_root(capsys):
    # the permission bits say yes to root everywhere: a probe file says no in /proc
    assert main(["explain", "cat", "--out", "/proc/convlens-out"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/proc is not writable" in err
