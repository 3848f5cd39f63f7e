"""Gram matrix of a layer's activations (the style statistics of Gatys et al. 2016)."""

from __future__ import annotations

import torch
from torch import nn

from convlens.errors import LayerError
from convlens.features.activations import layer_activation
from convlens.layers.find import LayerSpec
from convlens.models.loading import LoadedModel


def gram_from_activation(activation: torch.Tensor) -> torch.Tensor:
    """``G[b, c, d] = (1 / hw) sum_p A[b, c, p] A[b, d, p]`` for ``A`` ``Tensor[B, C, h, w]``;
    returns ``Tensor[B, C, C]`` (symmetric, positive semi-definite). `LayerError` for an
    activation without a spatial grid."""
    if activation.dim() != 4:
        raise LayerError(
            f"a Gram matrix needs a layer with a spatial output [B, C, h, w], got "
            f"{tuple(activation.shape)}; choose a convolutional layer (see 'convlens layers')"
        )
    flat = activation.flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[2]


def gram_matrix(
    model: nn.Module | LoadedModel, images: torch.Tensor, layer: LayerSpec
) -> torch.Tensor:
    """Gram matrix ``Tensor[B, C, C]`` of ``layer``'s activation for ``images``
    ``Tensor[B, 3, H, W]`` (normalised model inputs)."""
    return gram_from_activation(layer_activation(model, images, layer))
