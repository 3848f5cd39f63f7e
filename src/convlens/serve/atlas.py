"""A scan's atlas folder (``convlens scan`` / ``convlens embed --out DIR``), browsed read-only
from the web view: its pages and pictures are listed, and served only when the name a
client sends resolves to a regular file inside that folder with a page or picture suffix.
Hidden entries (the scan's ``.state/`` resume files) are neither listed nor served."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from pydantic import BaseModel, Field

from convlens.errors import ConvlensError

PAGE_SUFFIXES = {".html"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
DATA_SUFFIXES = {".json"}
SERVED_SUFFIXES = PAGE_SUFFIXES | IMAGE_SUFFIXES | DATA_SUFFIXES
MAX_LISTED = 20_000
ATLAS_URL = "/atlas/"
# Atlas pages are static (inline style, images by relative path): they may load nothing else.
PAGE_POLICY = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"


class AtlasFile(BaseModel):
    path: str = Field(description="Path inside the atlas folder, with '/' separators.")
    url: str = Field(description="Where the server serves it (under /atlas/).")
    group: str = Field(description="Its folder inside the atlas ('' at the top; a layer name).")


class AtlasListing(BaseModel):
    enabled: bool = Field(description="Whether the server was started with --atlas.")
    name: str | None = Field(description="The atlas folder's name (not its full path).")
    kind: str | None = Field(description="'scan', 'embedding' or 'folder'.")
    groups: list[str] = Field(description="Folders holding pictures, in scan order for a scan.")
    pages: list[AtlasFile]
    images: list[AtlasFile]
    truncated: bool = Field(description=f"More than {MAX_LISTED} files: the rest unlisted.")


class AtlasPathError(ConvlensError):
    """A requested name that is not a servable file inside the atlas folder (HTTP 404)."""


@dataclass(frozen=True)
class AtlasFolder:
    """The atlas folder ``root`` (resolved, so checks compare real paths)."""

    root: Path

    @classmethod
    def open(cls, folder: str | Path) -> AtlasFolder:
        """`AtlasFolder` of ``folder``; `ConvlensError` naming the fix when it is not a
        folder."""
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise ConvlensError(
                f"--atlas {str(folder)!r} is not a folder; pass the folder written by "
                "'convlens scan DATA --out DIR' or 'convlens embed DATA --out DIR'"
            )
        return cls(path.resolve())

    def file(self, name: str) -> Path:
        """The file ``name`` (a '/'-separated path relative to the folder) resolved inside
        the folder; `AtlasPathError` for an absolute path, ``..``, a hidden part, a
        suffix other than a page, picture or JSON file, a link leading outside the folder,
        or anything that is not a regular file."""
        parts = PurePosixPath(name).parts
        if (
            not parts
            or "\\" in name
            or "\x00" in name
            or name.startswith("/")
            or any(part in ("..", ".") or part.startswith(".") for part in parts)
        ):
            raise AtlasPathError(f"{name[:200]!r} is not a file of the atlas")
        resolved = _resolved_inside(self.root.joinpath(*parts), self.root)
        if (
            resolved is None
            or PurePosixPath(name).suffix.lower() not in SERVED_SUFFIXES
            or resolved.suffix.lower() not in SERVED_SUFFIXES
            or not resolved.is_file()
        ):
            raise AtlasPathError(f"{name[:200]!r} is not a file of the atlas")
        return resolved

    def listing(self) -> AtlasListing:
        """Pages and pictures under the folder (hidden entries and links leading outside
        skipped), sorted; groups in the scan's layer order when ``scan.json`` names them."""
        pages, images, truncated = [], [], False
        for path in self._walk():
            relative = path.relative_to(self.root)
            if len(pages) + len(images) >= MAX_LISTED:
                truncated = True
                break
            name = relative.as_posix()
            group = relative.parent.as_posix() if relative.parent != Path(".") else ""
            entry = AtlasFile(path=name, url=ATLAS_URL + quote(name), group=group)
            (pages if path.suffix.lower() in PAGE_SUFFIXES else images).append(entry)
        return AtlasListing(
            enabled=True,
            name=self.root.name,
            kind=self._kind(),
            groups=self._groups(images),
            pages=pages,
            images=images,
            truncated=truncated,
        )

    def _walk(self):
        """Pages and pictures under the folder in sorted order, not entering hidden
        folders or links to folders, and leaving out links that lead outside it."""
        for folder, folders, files in os.walk(self.root):
            folders[:] = sorted(f for f in folders if not f.startswith("."))
            for name in sorted(files):
                path = Path(folder) / name
                suffix = path.suffix.lower()
                if name.startswith(".") or suffix not in PAGE_SUFFIXES | IMAGE_SUFFIXES:
                    continue
                resolved = _resolved_inside(path, self.root)
                if resolved is not None and resolved.suffix.lower() == suffix and path.is_file():
                    yield path

    def _kind(self) -> str:
        if (self.root / "scan.json").is_file():
            return "scan"
        if (self.root / "index.json").is_file():
            return "embedding"
        return "folder"

    def _groups(self, images: list[AtlasFile]) -> list[str]:
        present = list(dict.fromkeys(image.group for image in images))
        try:
            layers = json.loads((self.root / "scan.json").read_text())["layers"]
        except (OSError, ValueError, KeyError, TypeError):
            return present
        ordered = [layer for layer in layers if layer in present]
        return ordered + [group for group in present if group not in ordered]


def no_atlas() -> AtlasListing:
    """The listing of a server started without ``--atlas``."""
    return AtlasListing(
        enabled=False, name=None, kind=None, groups=[], pages=[], images=[], truncated=False
    )


def _resolved_inside(path: Path, root: Path) -> Path | None:
    """``path`` with links resolved when that lies inside ``root`` with no hidden part;
    None otherwise (a loop of links included)."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return None
    if not resolved.is_relative_to(root):
        return None
    if any(part.startswith(".") for part in resolved.relative_to(root).parts):
        return None
    return resolved
