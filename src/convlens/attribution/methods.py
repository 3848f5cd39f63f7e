"""The registered methods: importing this module imports every built-in method module
(each registers its functions with `register_method`), so lookups see them all."""

from __future__ import annotations

import difflib

from convlens.attribution import (  # noqa: F401  (register)
    black_box,
    cam,
    cam_variants,
    detection,
    fullgrad,
    gradients,
    head_maps,
    lrp,
    perturbation,
    reference,
    rules,
    superpixels,
)
from convlens.attribution.registry import FAMILIES, METHODS, MethodInfo
from convlens.errors import MethodError


def get_method(name: str) -> MethodInfo:
    """The registered method called ``name``; a clear error listing close names otherwise."""
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(name, list(METHODS), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise MethodError(f"unknown method {name!r}; {hint}available: {', '.join(sorted(METHODS))}")


def list_methods(include_head_methods: bool = False) -> list[MethodInfo]:
    """Every registered method, grouped by family; the methods that read a trained head's
    own maps (``nin``, ``acol``, ``scouter``: they work on such models only) just with
    ``include_head_methods=True``."""
    chosen = [m for m in METHODS.values() if include_head_methods or m.head is None]
    return sorted(chosen, key=lambda m: (FAMILIES.index(m.family), m.name))
