"""The package's source files parsed once per suite: the layering checks and the package
checks each walk the syntax tree of every file (parsing them all takes about a second)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path


def parsed(path: Path) -> ast.Module:
    """The syntax tree of ``path`` (shared between callers: read it, never change it)."""
    return _parse(path.read_text(), str(path))


@functools.cache
def _parse(text: str, filename: str) -> ast.Module:
    return ast.parse(text, filename=filename)
