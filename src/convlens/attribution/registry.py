"""One registry maps method names to functions; `explain`, the CLI and the web view use it.

Every registered function has the signature
``fn(model, images: Tensor[B, 3, H, W], target=None, *, layer=None, **options) -> Tensor[N, H, W]``
(``N = B`` except for top-k targets) and returns raw maps at input resolution. A method
with by-products (Integrated Gradients' completeness error) registers a function that
returns ``(maps, extras: dict[str, Tensor | float])``; `explain` keeps the extras.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from convlens.errors import MethodError

MethodFn = Callable[..., "object"]
FAMILIES = ("gradient", "rule", "cam", "perturbation")


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its function, family, whether it uses a layer, one-line summary."""

    name: str
    fn: MethodFn
    family: str
    uses_layer: bool
    summary: str
    slow: bool = False


METHODS: dict[str, MethodInfo] = {}


def register_method(
    name: str, family: str, *, uses_layer: bool = False, slow: bool = False
) -> Callable[[MethodFn], MethodFn]:
    """Decorator: register ``fn`` under ``name``; the summary is its docstring's first line."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}")

    def decorate(fn: MethodFn) -> MethodFn:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        METHODS[name] = MethodInfo(name, fn, family, uses_layer, summary, slow)
        return fn

    return decorate


def get_method(name: str) -> MethodInfo:
    """The registered method called ``name``; a clear error listing close names otherwise."""
    _load_builtin_methods()
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(name, list(METHODS), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise MethodError(f"unknown method {name!r}; {hint}available: {', '.join(sorted(METHODS))}")


def list_methods() -> list[MethodInfo]:
    """Every registered method, grouped by family."""
    _load_builtin_methods()
    return sorted(METHODS.values(), key=lambda m: (FAMILIES.index(m.family), m.name))


def _load_builtin_methods() -> None:
    # Importing the method modules registers them; done lazily to keep import light.
    from convlens.attribution import cam, gradients, perturbation, rules  # noqa: F401
