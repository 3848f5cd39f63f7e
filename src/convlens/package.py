"""Facts about convlens that every layer may read: its version and the default model.

A leaf like `convlens.errors`: it imports no convlens module and no torch, so the command
line can use it for option defaults without loading models.
"""

from __future__ import annotations

from functools import cache

DEFAULT_MODEL = "efficientnet_lite0"
"""The model every command and function uses when none is named (`convlens.load_model`)."""

UNKNOWN_VERSION = "unknown"


@cache
def version() -> str:
    """The installed distribution's version (``pyproject.toml``'s, as pip recorded it);
    `UNKNOWN_VERSION` for a source tree that was never installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("convlens")
    except PackageNotFoundError:
        return UNKNOWN_VERSION
