"""Convolution weights as pictures: one tile per filter (or per filter slice).

A weight ``W[o, i, kh, kw]`` is shown centred on grey: ``tile = 0.5 + W / (2 s)`` with
``s = max |W|`` over the tile (``scaling="per_filter"``) or over the whole layer
(``scaling="shared"``), so 0 is mid-grey, positive weights bright, negative dark, and the
sign is never hidden by a min-max stretch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convlens.errors import LayerError, MethodError
from convlens.layers import resolve_layer
from convlens.layers.find import LayerSpec
from convlens.models.loading import LoadedModel, as_module

REDUCTIONS = ("auto", "rgb", "mean", "norm", "slices")
SCALINGS = ("per_filter", "shared")


@dataclass(frozen=True)
class FilterTiles:
    """``tiles``: ``Tensor[N, C, kh, kw]`` in [0, 1] (``C`` 3 for RGB tiles, else 1);
    ``labels``: one name per tile (``"f7"`` or ``"f7/c2"``); how they were made."""

    tiles: torch.Tensor
    labels: list[str]
    layer: str
    reduce: str
    scaling: str


def first_conv(model: nn.Module | LoadedModel) -> str:
    """Name of the first ``nn.Conv2d`` in module order."""
    for name, module in as_module(model).named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    raise LayerError("the model has no nn.Conv2d layer; filters need a 2-D convolution")


def conv_weights(model: nn.Module | LoadedModel, layer: LayerSpec | None = None) -> torch.Tensor:
    """The weights ``Tensor[out, in / groups, kh, kw]`` of a Conv2d (default: the first)."""
    module = as_module(model)
    name, conv = resolve_layer(module, first_conv(module) if layer is None else layer)
    if not isinstance(conv, nn.Conv2d):
        raise LayerError(
            f"layer {name!r} is a {type(conv).__name__}, not an nn.Conv2d; "
            "choose a convolution (see 'convlens layers')"
        )
    return conv.weight.detach().clone()


def _reduce(weights: torch.Tensor, reduce: str) -> tuple[torch.Tensor, list[str]]:
    out, inputs = weights.shape[:2]
    if reduce == "auto":
        reduce = "rgb" if inputs == 3 else "mean"
    if reduce == "rgb":
        if inputs != 3:
            raise MethodError(
                f"reduce='rgb' needs 3 input channels per filter, this layer has {inputs}; "
                "use 'mean', 'norm' or 'slices'"
            )
        return weights, [f"f{o}" for o in range(out)]
    if reduce == "mean":
        return weights.mean(1, keepdim=True), [f"f{o}" for o in range(out)]
    if reduce == "norm":
        return weights.norm(dim=1, keepdim=True), [f"f{o}" for o in range(out)]
    if reduce == "slices":
        labels = [f"f{o}/c{i}" for o in range(out) for i in range(inputs)]
        return weights.reshape(out * inputs, 1, *weights.shape[2:]), labels
    raise MethodError(f"unknown reduce {reduce!r}; use one of {', '.join(REDUCTIONS)}")


def scale_tiles(tiles: torch.Tensor, scaling: str) -> torch.Tensor:
    """``0.5 + t / (2 max|t|)`` per tile or shared; a zero tile stays mid-grey."""
    if scaling not in SCALINGS:
        raise MethodError(f"unknown scaling {scaling!r}; use one of {', '.join(SCALINGS)}")
    if scaling == "per_filter":
        peak = tiles.abs().flatten(1).amax(1).view(-1, 1, 1, 1)
    else:
        peak = tiles.abs().max().view(1, 1, 1, 1)
    return 0.5 + tiles / (2 * peak.clamp_min(torch.finfo(tiles.dtype).tiny))


def filter_tiles(
    model: nn.Module | LoadedModel,
    layer: LayerSpec | None = None,
    *,
    reduce: str = "auto",
    scaling: str = "per_filter",
) -> FilterTiles:
    """Filters of a Conv2d as tiles in [0, 1].

    ``reduce``: ``"rgb"`` one colour tile per filter (first layers, 3 input channels);
    ``"mean"``/``"norm"`` one grey tile per filter (mean or L2 norm over its input
    channels); ``"slices"`` one grey tile per (filter, input channel); ``"auto"`` is
    ``"rgb"`` for 3 input channels per group, else ``"mean"``. Grouped and depthwise
    convolutions have ``in / groups`` channels per filter (1 for depthwise).
    ``"norm"`` tiles are non-negative, so they occupy [0.5, 1].
    """
    module = as_module(model)
    name = resolve_layer(module, first_conv(module) if layer is None else layer)[0]
    weights = conv_weights(module, name)
    used = ("rgb" if weights.shape[1] == 3 else "mean") if reduce == "auto" else reduce
    tiles, labels = _reduce(weights, used)
    return FilterTiles(scale_tiles(tiles.float(), scaling), labels, name, used, scaling)
