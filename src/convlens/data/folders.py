"""Write a folder as one unit: into a temporary sibling first, then swapped in by rename, so
a failure halfway leaves the old folder (or no folder) exactly as it was."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from convlens.errors import ConvlensError
from convlens.files import flush_ledgers


@contextmanager
def replaced_folder(folder: str | Path, replaceable: Callable[[str], bool]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``folder``; when the block ends normally, it
    takes ``folder``'s place (two renames on the same file system: the old folder moves
    aside, the new one moves in, then the old one is deleted). When the block raises, or
    a rename fails, the temporary folder is removed and ``folder`` is left as it was.

    An existing ``folder`` is replaced only when every entry in it passes
    ``replaceable(name)`` (files an earlier save wrote); anything else raises
    `ConvlensError` before anything is written, so no other file is ever deleted.
    """
    folder = Path(folder).resolve()
    if folder == Path.cwd() or folder in Path.cwd().parents:
        raise ConvlensError(
            f"{folder} is the current folder or holds it, and cannot be replaced; save into a "
            "subfolder (e.g. out/)"
        )
    _check_replaceable(folder, replaceable)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new-", dir=folder.parent))
    try:
        yield staging
        flush_ledgers()  # the files' ledger entries move with the folder
        _swap_in(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_replaceable(folder: Path, replaceable: Callable[[str], bool]) -> None:
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConvlensError(f"{folder} exists and is not a folder; choose a folder path")
    foreign = sorted(entry.name for entry in folder.iterdir() if not replaceable(entry.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ConvlensError(
            f"{folder} holds files convlens did not write there ({shown}), which saving would "
            "delete; save into a new or empty folder, or one an earlier save wrote"
        )


def _swap_in(staging: Path, folder: Path) -> None:
    """Rename ``staging`` to ``folder``, moving an existing ``folder`` aside first and back
    if the second rename fails. The new folder gets the old one's permissions (or the
    usual ones for a new folder, rather than the private ones of a temporary folder)."""
    os.chmod(staging, folder.stat().st_mode if folder.exists() else 0o777 & ~_umask())
    if not folder.exists():
        os.rename(staging, folder)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    os.rename(folder, aside / folder.name)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(aside / folder.name, folder)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
