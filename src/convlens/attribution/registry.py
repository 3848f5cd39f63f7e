"""One registry maps method names to functions; `explain`, the CLI and the web view use it.

A method is written as ``compute(model, images: Tensor[B, 3, H, W], target=None, *,
OPTION=default, ...) -> MethodResult`` and registered with `register_method`. A
`MethodResult` is the ONE way a method hands back what it computed:

- ``maps``: raw maps ``Tensor[N, H, W]`` at input resolution (``N = B`` except for top-k
  targets);
- ``output``: the model output on the unmodified explained rows (``Tensor[N, K]`` for a
  classifier, row ``n`` from image ``targets.image_index[n]``), detached, taken from the
  method's own forward pass on the clean input, so `explain` reads the explained scores,
  classes and probabilities (and the CLI its top-5 line) without another forward;
- ``extras``: by-products, ``dict[str, Tensor | float]`` (Integrated Gradients'
  completeness error); `explain` keeps them;
- ``gradient``: the signed input gradient ``Tensor[N, C, H, W]`` the map was reduced from,
  for methods that draw it as an RGB image (guided backprop, deconvnet); else None.

`register_method` records ``compute`` as ``MethodInfo.run`` and returns the public function
(``MethodInfo.fn``: same name, signature and docstring) that returns only the maps, or
``(maps, extras)`` for a method with extras. Methods that use a layer (the CAM family) also
take ``layer=None``; slow methods take ``progress=False`` (a tqdm bar). Everything after
``target`` is keyword-only, and each keyword is recorded at registration, so `explain` can
check options before running anything. Methods of the gradient and rule families also get
the noise-tunnel options (``noise_tunnel``, ``n_samples``, ``noise``, ``seed``; see
`convlens.attribution.tunnel`) at registration, so every such method has them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from convlens.attribution.result import MethodResult
from convlens.attribution.tunnel import takes_noise_tunnel, with_noise_tunnel

__all__ = ["FAMILIES", "METHODS", "MethodInfo", "MethodResult", "register_method"]

MethodFn = Callable[..., "object"]
FAMILIES = ("gradient", "rule", "cam", "perturbation")
_POSITIONAL = ("model", "images", "target")


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its functions, family, one-line summary and what it accepts.

    ``fn``: the public function (maps, or ``(maps, extras)``); ``run``: the same call
    returning the full `MethodResult` (what `explain` uses). ``options``: the keyword
    options `explain` may pass on (``progress`` included when the method has a bar;
    ``layer`` never, see ``uses_layer``). ``slow``: the CLI shows a progress bar for it
    (``takes_progress`` is then true).
    """

    name: str
    fn: MethodFn
    run: MethodFn
    family: str
    uses_layer: bool
    summary: str
    slow: bool = False
    options: tuple[str, ...] = ()
    head: str | None = None

    @property
    def takes_progress(self) -> bool:
        """Whether ``fn`` takes ``progress=`` (a tqdm bar)."""
        return "progress" in self.options


METHODS: dict[str, MethodInfo] = {}


def register_method(
    name: str,
    family: str,
    *,
    uses_layer: bool = False,
    slow: bool = False,
    head: str | None = None,
) -> Callable[[MethodFn], MethodFn]:
    """Decorator: register ``compute`` (returning a `MethodResult`) under ``name`` and return
    the public function returning ``MethodResult.public()``; the summary is the docstring's
    first line.

    The signature is read once here: ``compute`` must take ``(model, images, target=None)`` and
    then keyword-only options; ``uses_layer`` must match whether it takes ``layer``, and a
    ``slow`` method must take ``progress``. A mismatch raises ValueError at import time.
    ``head`` (``"nin"``, ``"acol"``, ...): the method reads the maps of a model with that
    trained head (`convlens.models.heads`) and works on no other model, so ``list_methods``
    (``--method all``) leaves it out; it is still found by name.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}")

    def decorate(compute: MethodFn) -> MethodFn:
        keywords = _keyword_options(name, compute)
        if takes_noise_tunnel(family, keywords):
            compute = with_noise_tunnel(_checked_result(name, compute))
            keywords = _keyword_options(name, compute)
        if uses_layer != ("layer" in keywords):
            raise ValueError(
                f"method {name!r}: uses_layer={uses_layer} but its function "
                f"{'does not take' if uses_layer else 'takes'} a keyword 'layer'"
            )
        if slow and "progress" not in keywords:
            raise ValueError(f"slow method {name!r} must take a keyword 'progress' (a tqdm bar)")
        summary = (compute.__doc__ or "").strip().splitlines()[0] if compute.__doc__ else ""
        options = tuple(k for k in keywords if k != "layer")
        run = _checked_result(name, compute)

        @functools.wraps(compute)
        def public(*args, **kwargs):
            return run(*args, **kwargs).public()

        public.__signature__ = inspect.signature(compute).replace(
            return_annotation="Tensor | tuple[Tensor, dict]"
        )
        METHODS[name] = MethodInfo(
            name, public, run, family, uses_layer, summary, slow, options, head=head
        )
        return public

    return decorate


def _checked_result(name: str, compute: MethodFn) -> MethodFn:
    """``compute``, checked to return a `MethodResult` (a TypeError naming ``name`` if not)."""

    @functools.wraps(compute)
    def run(*args, **kwargs) -> MethodResult:
        result = compute(*args, **kwargs)
        if not isinstance(result, MethodResult):
            raise TypeError(
                f"method {name!r} returned {type(result).__name__}; a registered method "
                "returns MethodResult(maps, output, extras) (see convlens.attribution.registry)"
            )
        return result

    return run


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
