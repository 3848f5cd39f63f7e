"""Filters with one weight per input channel (1x1 convolutions, most of an EfficientNet) as a
matrix instead of tiles: a 1x1 filter drawn as a tile is one pixel, which per-filter scaling
turns into plain black or white. The matrix ``W[out, in / groups]`` keeps every weight.

Large layers are capped (`MAX_ROWS` filters, `MAX_COLUMNS` input channels) and the result
says what was left out, so a 1280x320 head does not become an unreadable picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convlens.features.filters import conv_weights, first_conv
from convlens.layers import resolve_layer
from convlens.layers.find import LayerSpec
from convlens.models.loading import LoadedModel, as_module

MAX_ROWS = 128
MAX_COLUMNS = 128


@dataclass(frozen=True)
class FilterMatrix:
    """``values``: ``Tensor[rows, columns]`` weights (filter x input channel within its
    group) of a 1x1 convolution, the first ``rows``/``columns`` of ``total`` (out, in)."""

    values: torch.Tensor
    layer: str
    total: tuple[int, int]
    groups: int

    @property
    def capped(self) -> bool:
        return tuple(self.values.shape) != self.total

    def note(self) -> str:
        """What is shown and what is left out (empty when nothing is)."""
        if not self.capped:
            return ""
        rows, columns = self.values.shape
        return (
            f"showing filters 0-{rows - 1} of {self.total[0]} and input channels "
            f"0-{columns - 1} of {self.total[1]} (--max-filters sets how many filters)"
        )


def is_pointwise(model: nn.Module | LoadedModel, layer: LayerSpec | None = None) -> bool:
    """Whether the Conv2d ``layer`` (default: the first) has 1x1 kernels."""
    module = as_module(model)
    _, conv = resolve_layer(module, first_conv(module) if layer is None else layer)
    return isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (1, 1)


def filter_matrix(
    model: nn.Module | LoadedModel,
    layer: LayerSpec | None = None,
    max_rows: int = MAX_ROWS,
    max_columns: int = MAX_COLUMNS,
) -> FilterMatrix:
    """The weights of a 1x1 Conv2d as ``Tensor[out, in / groups]``, capped at ``max_rows``
    filters and ``max_columns`` input channels (the first ones)."""
    module = as_module(model)
    name, conv = resolve_layer(module, first_conv(module) if layer is None else layer)
    weights = conv_weights(module, name).float()
    matrix = weights.flatten(1) if weights.shape[2:] == (1, 1) else weights.mean((2, 3))
    total = tuple(matrix.shape)
    return FilterMatrix(matrix[:max_rows, :max_columns].clone(), name, total, conv.groups)
