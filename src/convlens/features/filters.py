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

    def _repr_png_(self) -> bytes:
        """Jupyter shows the tiles as their captioned grid (`convlens.render.features.
        filter_grid`)."""
        from convlens.render.features import filter_grid
        from convlens.render.images import png_bytes

        return png_bytes(filter_grid(self))


def first_conv(model: nn.Module | LoadedModel) -> str:
    """Name of the first ``nn.Conv2d`` in module order."""
    for name, module in as_module(model).named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    raise LayerError("the model has no nn.Conv2d layer; filters need a 2-D convolution")


def conv_weights(model: nn.Module | LoadedModel, layer: LayerSpec | None = None) -> torch.Tensor:
    """A CPU copy of the weights ``Tensor[out, in / groups, kh, kw]`` of a Conv2d (default:
    the first), wherever the model is."""
    module = as_module(model)
    name, conv = resolve_layer(module, first_conv(module) if layer is None else layer)
    if not isinstance(conv, nn.Conv2d):
        raise LayerError(
            f"layer {name!r} is a {type(conv).__name__}, not an nn.Conv2d; "
            "choose a convolution (see 'convlens layers')"
        )
    return conv.weight.detach().to("cpu", copy=True)


def _input_channels(conv: nn.Conv2d) -> torch.Tensor:
    """``Tensor[out, in / groups]``: the input channel each weight slice reads (filter ``o``
    of a grouped conv reads channels ``g * in / groups + i`` of its group ``g``)."""
    out, per_group = conv.out_channels, conv.in_channels // conv.groups
    group = torch.arange(out) // (out // conv.groups)
    return group[:, None] * per_group + torch.arange(per_group)[None, :]


def _sees_the_image(module: nn.Module, name: str, conv: nn.Conv2d) -> bool:
    """The first convolution, ungrouped, with 3 input channels: its slices are colours."""
    return conv.in_channels == 3 and conv.groups == 1 and name == first_conv(module)


def _reduce(
    weights: torch.Tensor, reduce: str, channels: torch.Tensor
) -> tuple[torch.Tensor, list[str]]:
    out = weights.shape[0]
    if reduce == "rgb":
        return weights, [f"f{o}" for o in range(out)]
    if reduce == "mean":
        return weights.mean(1, keepdim=True), [f"f{o}" for o in range(out)]
    if reduce == "norm":
        return weights.norm(dim=1, keepdim=True), [f"f{o}" for o in range(out)]
    labels = [f"f{o}/c{int(c)}" for o in range(out) for c in channels[o]]
    return weights.reshape(-1, 1, *weights.shape[2:]), labels


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
    """Filters of a Conv2d (default: the first) as tiles ``Tensor[N, C, kh, kw]`` in [0, 1].

    ``reduce``: ``"rgb"`` one colour tile per filter, only for the layer that sees the
    image (the first convolution, 3 input channels, no groups); ``"mean"``/``"norm"`` one
    grey tile per filter (mean or L2 norm over its input channels; ``"norm"`` tiles are
    non-negative, so they occupy [0.5, 1]); ``"slices"`` one grey tile per (filter, input
    channel), labelled ``f{o}/c{i}`` with ``i`` the real input channel (grouped and
    depthwise convs read ``in / groups`` channels per filter, 1 for depthwise);
    ``"auto"`` is ``"rgb"`` for the image layer, else ``"mean"``. ``scaling``:
    ``"per_filter"`` or ``"shared"`` (see the module docstring).
    """
    if reduce not in REDUCTIONS:
        raise MethodError(f"unknown reduce {reduce!r}; use one of {', '.join(REDUCTIONS)}")
    module = as_module(model)
    name, conv = resolve_layer(module, first_conv(module) if layer is None else layer)
    weights = conv_weights(module, name)
    colours = _sees_the_image(module, name, conv)
    used = ("rgb" if colours else "mean") if reduce == "auto" else reduce
    if used == "rgb" and not colours:
        raise MethodError(
            f"reduce='rgb' draws colour filters of the layer that sees the image (the first "
            f"convolution, 3 input channels, no groups); {name!r} is not that layer, use "
            "'mean', 'norm' or 'slices'"
        )
    tiles, labels = _reduce(weights, used, _input_channels(conv))
    return FilterTiles(scale_tiles(tiles.float(), scaling), labels, name, used, scaling)
