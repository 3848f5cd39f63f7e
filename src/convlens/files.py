"""Every file convlens writes goes through here: written whole or not at all, never over a
file convlens did not write, and a full disk is one clear error.

- **All or nothing.** `atomic_file` writes to a hidden temporary file in the target's own
  folder, flushes and fsyncs it, then renames it over the target (``os.replace``). If the
  block raises (or the process dies) the target is the earlier file, or absent; the
  temporary file is removed (a killed process may leave a hidden ``.NAME.*.tmp``).
- **Ownership.** Each folder convlens writes into holds a small ledger, ``.convlens-files.json``:
  for every file written there, its size, SHA-256, the job that wrote it and when. A file
  is convlens's own when the ledger's size and hash still match it (pictures written before
  the ledger existed are recognised by the ``convlens`` mark in their metadata); any other
  existing file is replaced only with ``force`` (``--force`` on the command line), else
  `OutputExistsError` before anything is written.
- **Full disk.** ``ENOSPC``/``EDQUOT`` while writing becomes `DiskFullError`, whose one-line
  message names the file and says that the earlier file was kept.
- **Stale outputs.** `writing(folder, job)` wraps a command that fills a folder: when it
  ends normally, files that an earlier run of the same job wrote under the folder, that this
  run did not write, and that are unchanged since, are deleted (never a foreign or edited
  file), with any subfolder that this leaves empty.
"""

from __future__ import annotations

import contextvars
import errno
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from convlens.errors import DiskFullError, OutputError, OutputExistsError

LEDGER = ".convlens-files.json"
MARK = "convlens"  # the metadata mark in every picture convlens writes (PNG text, PDF/SVG)
_MARKED = (".png", ".pdf", ".svg")
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_FLUSH_SECONDS = 1.0  # how often a running job records its files in the ledgers


@dataclass
class _Run:
    root: Path
    job: str
    force: bool
    remove_stale: bool
    started: int = field(default_factory=time.time_ns)
    written: set[Path] = field(default_factory=set)
    pending: dict[Path, dict[str, dict]] = field(default_factory=dict)
    flushed: float = field(default_factory=time.monotonic)


_RUN: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("convlens_run", default=None)


# ---- ownership -------------------------------------------------------------------------


def owned(path: str | Path, entries: dict[str, dict] | None = None) -> bool:
    """Whether ``path`` is a file convlens wrote and nobody changed since: its folder's
    ledger lists it with this size and SHA-256 (or, with no ledger entry, a PNG/PDF/SVG
    carrying the convlens mark). ``entries``: that folder's `ledger_entries`, read once by a
    caller that checks many files of one folder."""
    path = Path(path)
    if not path.is_file():
        return False
    if entries is None:
        entries = ledger_entries(path.parent)
    entry = _pending_entry(path) or entries.get(path.name)
    if entry is not None:
        return _matches(path, entry)
    return path.suffix.lower() in _MARKED and _carries_mark(path)


def discard_output(path: str | Path) -> bool:
    """Delete ``path`` when convlens wrote it and nobody changed it since (`owned`), and
    forget it in its folder's ledger; anything else stays. True when it was deleted."""
    path = Path(path)
    if not owned(path):
        return False
    path.unlink()
    _update_ledger(path.parent, {path.name: None})
    return True


def unique_name(stem: str, used: set[str], separator: str = "_") -> str:
    """``stem``, or ``stem{separator}2``, ``stem{separator}3`` ... : the first not in ``used``
    (file stems of one run, anchors of one page); it is added to ``used``."""
    candidate, count = stem, 1
    while candidate in used:
        count += 1
        candidate = f"{stem}{separator}{count}"
    used.add(candidate)
    return candidate


def check_writable(path: str | Path, force: bool | None = None) -> Path:
    """`OutputExistsError` when ``path`` exists and may not be replaced: it is a folder, or
    a file convlens did not write (or that was changed since) and ``force`` is off.
    ``force`` None: the running job's (`writing`), else False. Returns ``path``."""
    path = Path(path)
    check_creatable(path.parent, path)
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; give a file name to write")
    if path.exists() and not _forced(force) and not owned(path):
        raise OutputExistsError(
            f"{path} exists and convlens did not write it (or it was changed since); choose "
            "another name, or pass --force to overwrite it"
        )
    return path


def check_folder(folder: str | Path, names=(), force: bool | None = None) -> Path:
    """The up-front check of a command that fills ``folder``: `OutputExistsError` when
    ``folder`` is an existing file or one of the files ``names`` it will write there may not
    be replaced (`check_writable`); `OutputError` when it lies under a file or in a folder
    that is not writable (`check_creatable`). Returns ``folder``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(
            f"{folder} is an existing file, not a folder; pass a folder name (it is created)"
        )
    check_creatable(folder)
    for name in names:
        check_writable(folder / name, force)
    return folder


def check_creatable(folder: str | Path, target: str | Path | None = None) -> Path:
    """`OutputError` unless ``folder`` is a folder convlens can write into, or can create:
    its nearest existing ancestor must be a writable folder (not a file). Checked before
    any work, so an impossible ``--out`` fails in a second rather than after the run.
    ``target``: the file about to be written there, named in the message."""
    folder = Path(folder)
    what = target if target is not None else f"under {folder}"
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {what}: {existing} is a file, not a folder")
    if not _can_create_in(existing):
        raise OutputError(f"cannot write {what}: the folder {existing} is not writable")
    return folder


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder``: a probe file, removed at once (the
    permission bits say yes to root on any folder, /proc and read-only mounts included)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        handle, probe = tempfile.mkstemp(prefix=".convlens-probe-", dir=folder)
    except OSError:
        return False
    os.close(handle)
    os.unlink(probe)
    return True


def _pending_entry(path: Path) -> dict | None:
    """The running job's own record of ``path`` not yet in the ledger (written this run)."""
    run = _RUN.get()
    return None if run is None else run.pending.get(path.parent, {}).get(path.name)


def _forced(force: bool | None) -> bool:
    if force is not None:
        return force
    run = _RUN.get()
    return run is not None and run.force


# Where each format holds the mark: exactly the field convlens writes, so a user's own
# picture that merely mentions convlens (a caption, a comment chunk) is not taken for ours.
_MARK_FIELDS = {
    ".png": re.compile(re.escape(b"\x00\x00\x00\x11tEXtSoftware\x00" + MARK.encode())),
    ".pdf": re.compile(re.escape(b"/Creator (" + MARK.encode() + b")")),
    ".svg": re.compile(
        rb"<dc:creator>\s*<cc:Agent>\s*<dc:title>" + re.escape(MARK.encode()) + rb"</dc:title>"
    ),
}


def _carries_mark(path: Path) -> bool:
    """Whether the PNG/PDF/SVG at ``path`` has convlens's mark in the metadata field
    convlens writes (`convlens.render.images`, `convlens.render.figures`)."""
    field = _MARK_FIELDS.get(path.suffix.lower())
    if field is None:
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
            handle.seek(max(0, path.stat().st_size - (1 << 16)))
            tail = handle.read()
    except OSError:
        return False
    return bool(field.search(head) or field.search(tail))


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _matches(path: Path, entry: dict) -> bool:
    try:
        return path.stat().st_size == entry.get("size") and _digest(path) == entry.get("sha256")
    except OSError:
        return False


# ---- writing ---------------------------------------------------------------------------


@contextmanager
def atomic_file(
    path: str | Path, mode: str = "wb", *, force: bool | None = None, encoding: str = "utf-8"
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` (``mode`` "wb" or "w"); when the block ends
    normally it is flushed, fsynced and renamed over ``path``, which the ledger then records
    as convlens's. Parent folders are made. On any error the temporary file is removed and
    ``path`` is left as it was; a full disk raises `DiskFullError`. Checked first: an
    existing ``path`` that is not convlens's needs ``force`` (`check_writable`).

    Usable for anything that writes to a file object: ``np.save(handle, ...)``,
    ``torch.save(obj, handle)``, ``image.save(handle, format="PNG")``,
    ``figure.savefig(handle, format=...)``."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes new files: mode 'wb' or 'w', not {mode!r}")
    path = Path(path)
    check_writable(path, force)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise _translated(error, path, existed) from error
    temporary = Path(name)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, _mode_for(path))
        entry = _entry(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        with suppress(OSError):
            temporary.unlink()
        translated = _translated(error, path, existed)
        if translated is error:
            raise
        raise translated from error
    _record(path, entry)


def write_bytes(path: str | Path, data: bytes, *, force: bool | None = None) -> Path:
    """Write ``data`` to ``path`` all or nothing (`atomic_file`); returns ``path``."""
    with atomic_file(path, "wb", force=force) as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | Path, text: str, *, force: bool | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` all or nothing (`atomic_file`); returns ``path``."""
    return write_bytes(path, text.encode("utf-8"), force=force)


def write_json(path: str | Path, value, *, indent: int = 2, force: bool | None = None) -> Path:
    """Write ``value`` as JSON to ``path`` all or nothing (`atomic_file`); returns ``path``."""
    return write_text(path, json.dumps(value, indent=indent), force=force)


def torch_save(value, path: str | Path, *, force: bool | None = None) -> Path:
    """``torch.save(value)`` to ``path`` all or nothing (`atomic_file`: a full disk is
    `DiskFullError`, not torch's ``enforce fail``); returns ``path``."""
    import torch

    with atomic_file(path, "wb", force=force) as handle:
        torch.save(value, handle)
    return Path(path)


def _translated(error: BaseException, path: Path, existed: bool) -> BaseException:
    """`DiskFullError` when ``error`` (or what it wraps: torch.save turns a failed write
    into a RuntimeError) is a full disk or quota; else ``error`` itself."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL:
            kept = "the earlier file was kept" if existed else "nothing was written"
            return DiskFullError(
                f"no space left on the device while writing {path}; {kept} (free some space, "
                "or write elsewhere, and run again)"
            )
        cause = cause.__cause__ or cause.__context__
    return error


def _mode_for(path: Path) -> int:
    """The replaced file's permissions, or the usual ones for a new file (mkstemp's are
    private)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0o022)
        os.umask(mask)
        return 0o666 & ~mask


# ---- the ledger ------------------------------------------------------------------------


def _entry(path: Path) -> dict:
    run = _RUN.get()
    return {
        "size": path.stat().st_size,
        "sha256": _digest(path),
        "job": run.job if run is not None else None,
        "root": str(run.root.resolve()) if run is not None else None,
        "written": time.time_ns(),
    }


def _record(path: Path, entry: dict) -> None:
    run = _RUN.get()
    if run is None:
        _update_ledger(path.parent, {path.name: entry})
        return
    run.written.add(path.resolve())
    run.pending.setdefault(path.parent, {})[path.name] = entry
    if time.monotonic() - run.flushed > _FLUSH_SECONDS:
        _flush(run)


def flush_ledgers() -> None:
    """Record the running job's files written so far in their folders' ledgers now (before
    a folder they sit in is renamed); nothing outside `writing`."""
    run = _RUN.get()
    if run is not None:
        _flush(run)


def _flush(run: _Run) -> None:
    pending, run.pending = run.pending, {}
    for folder, entries in pending.items():
        _update_ledger(folder, entries)
    run.flushed = time.monotonic()


def ledger_entries(folder: Path) -> dict[str, dict]:
    """``{file name: entry}`` of ``folder``'s ledger (empty when it has none or it is
    unreadable: then nothing there counts as convlens's)."""
    try:
        document = json.loads((folder / LEDGER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = document.get("files") if isinstance(document, dict) else None
    return files if isinstance(files, dict) else {}


def _update_ledger(folder: Path, entries: dict[str, dict | None]) -> None:
    """Merge ``entries`` (None: forget that name) into ``folder``'s ledger, under a lock
    on the folder so that processes writing into one folder keep each other's entries.
    A folder that is gone (a temporary folder discarded after a failure) is left alone."""
    if not folder.is_dir():
        return
    with _locked(folder):
        files = ledger_entries(folder)
        for name, entry in entries.items():
            if entry is None:
                files.pop(name, None)
            else:
                files[name] = entry
        ledger = folder / LEDGER
        if not files:
            with suppress(OSError):
                ledger.unlink()
            return
        text = json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True)
        existed = ledger.exists()
        fd, name = tempfile.mkstemp(prefix=f"{LEDGER}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(name, ledger)
        except BaseException as error:
            with suppress(OSError):
                os.unlink(name)
            translated = _translated(error, ledger, existed)
            if translated is error:
                raise
            raise translated from error


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one writer per folder is assumed
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---- a job filling a folder ------------------------------------------------------------


@contextmanager
def writing(
    folder: str | Path, job: str, *, force: bool = False, remove_stale: bool = True
) -> Iterator[Path]:
    """Run a command that writes under ``folder`` as ``job`` (e.g. "scan"): writes inside
    the block replace foreign files only with ``force``, and are recorded in the ledgers.
    When the block ends normally and ``remove_stale``, every file an earlier ``job`` run
    wrote under ``folder`` that this run did not write and that is unchanged since is
    deleted (`remove_stale_outputs`). Yields ``folder`` (not created here)."""
    run = _Run(Path(folder), job, force, remove_stale)
    token = _RUN.set(run)
    try:
        yield run.root
    finally:
        _RUN.reset(token)
        _flush(run)
    if remove_stale:
        remove_stale_outputs(run.root, job, before=run.started, keep=run.written)


def keep_output(path: str | Path) -> None:
    """Count ``path``, an unchanged output of an earlier run that the running job would
    write the same (a resumed scan's channel pictures), as written by this run, so the
    stale sweep at the end of `writing` leaves it. Outside `writing`: nothing to do."""
    run = _RUN.get()
    if run is not None:
        run.written.add(Path(path).resolve())


def remove_stale_outputs(
    folder: str | Path, job: str, *, before: int, keep: set[Path] = frozenset()
) -> list[Path]:
    """Delete the files under ``folder`` that the ledgers say ``job`` wrote before time
    ``before`` (ns since the epoch) in a run into ``folder`` itself (not a run into one of
    its subfolders), that are not in ``keep`` and still match the ledger;
    then the subfolders this leaves empty. Files changed since, and files the ledgers do not
    list, stay. Returns the deleted files."""
    root = Path(folder)
    removed: list[Path] = []
    for here, _, names in os.walk(root):
        if LEDGER not in names:
            continue
        place = Path(here)
        forget: dict[str, None] = {}
        for name, entry in ledger_entries(place).items():
            path = place / name
            if entry.get("job") != job or entry.get("written", before) >= before:
                continue
            if entry.get("root") != str(root.resolve()):  # a run into another output folder
                continue
            if path.resolve() in keep:
                continue
            if not path.exists():
                forget[name] = None
            elif _matches(path, entry):
                path.unlink()
                removed.append(path)
                forget[name] = None
        if forget:
            _update_ledger(place, forget)
    _remove_emptied({path.parent for path in removed}, root)
    return removed


def _remove_emptied(folders: set[Path], root: Path) -> None:
    """Remove each of ``folders`` (and its parents up to ``root``, exclusive) while empty."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        while folder != root and root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (a foreign file, or a file of this run)
                break
            folder = folder.parent
