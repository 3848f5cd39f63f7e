"""One registry maps method names to functions; `explain`, the CLI and the web view use it.

A registered function has the signature
``fn(model, images: Tensor[B, 3, H, W], target=None, *, OPTION=default, ...) -> Tensor[N, H, W]``
(``N = B`` except for top-k targets) and returns raw maps at input resolution. Methods that
use a layer (the CAM family) also take ``layer=None``; slow methods take ``progress=False``
(a tqdm bar). Everything after ``target`` is keyword-only, and each keyword is recorded at
registration, so `explain` can check options before running anything. A method with
by-products (Integrated Gradients' completeness error) returns
``(maps, extras: dict[str, Tensor | float])``; `explain` keeps the extras.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

MethodFn = Callable[..., "object"]
FAMILIES = ("gradient", "rule", "cam", "perturbation")
_POSITIONAL = ("model", "images", "target")


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its function, family, one-line summary and what it accepts.

    ``options``: the keyword options `explain` may pass on (``progress`` included when the
    method has a bar; ``layer`` never, see ``uses_layer``). ``slow``: the CLI shows a
    progress bar for it (``takes_progress`` is then true).
    """

    name: str
    fn: MethodFn
    family: str
    uses_layer: bool
    summary: str
    slow: bool = False
    options: tuple[str, ...] = ()

    @property
    def takes_progress(self) -> bool:
        """Whether ``fn`` takes ``progress=`` (a tqdm bar)."""
        return "progress" in self.options


METHODS: dict[str, MethodInfo] = {}


def register_method(
    name: str, family: str, *, uses_layer: bool = False, slow: bool = False
) -> Callable[[MethodFn], MethodFn]:
    """Decorator: register ``fn`` under ``name``; the summary is its docstring's first line.

    The signature is read once here: ``fn`` must take ``(model, images, target=None)`` and
    then keyword-only options; ``uses_layer`` must match whether it takes ``layer``, and a
    ``slow`` method must take ``progress``. A mismatch raises ValueError at import time.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}")

    def decorate(fn: MethodFn) -> MethodFn:
        keywords = _keyword_options(name, fn)
        if uses_layer != ("layer" in keywords):
            raise ValueError(
                f"method {name!r}: uses_layer={uses_layer} but its function "
                f"{'does not take' if uses_layer else 'takes'} a keyword 'layer'"
            )
        if slow and "progress" not in keywords:
            raise ValueError(f"slow method {name!r} must take a keyword 'progress' (a tqdm bar)")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        options = tuple(k for k in keywords if k != "layer")
        METHODS[name] = MethodInfo(name, fn, family, uses_layer, summary, slow, options)
        return fn

    return decorate


def _keyword_options(name: str, fn: MethodFn) -> tuple[str, ...]:
    """The keyword-only parameter names of a method function (checked)."""
    parameters = list(inspect.signature(fn).parameters.values())
    leading = tuple(p.name for p in parameters[: len(_POSITIONAL)])
    if leading != _POSITIONAL:
        raise ValueError(f"method {name!r} must start with {_POSITIONAL}, got {leading}")
    rest = parameters[len(_POSITIONAL) :]
    if any(p.kind is not inspect.Parameter.KEYWORD_ONLY for p in rest):
        raise ValueError(
            f"method {name!r}: every option after 'target' must be keyword-only and named "
            "(no **kwargs), so that explain can check options"
        )
    return tuple(p.name for p in rest)
