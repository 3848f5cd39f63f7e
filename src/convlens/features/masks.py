"""Activation masks: where one channel fires, as a binary mask over the input image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convlens.errors import MethodError
from convlens.features.activations import _batch_of_one, channel_maps, layer_activation
from convlens.layers import resolve_layer
from convlens.layers.find import LayerSpec
from convlens.maps import resize_maps
from convlens.models.loading import LoadedModel, as_module


@dataclass(frozen=True)
class ActivationMask:
    """``values``: the channel's map upsampled to the input, ``Tensor[H, W]`` (raw units);
    ``mask``: ``values > threshold`` as ``Tensor[H, W]`` bool; ``area``: its fraction."""

    layer: str
    channel: int
    threshold: float
    values: torch.Tensor
    mask: torch.Tensor

    @property
    def area(self) -> float:
        return float(self.mask.float().mean())


DEFAULT_QUANTILE = 0.9


def threshold_mask(
    values: torch.Tensor, threshold: float | None = None, quantile: float | None = None
) -> tuple[torch.Tensor, float]:
    """``(mask, t)`` with ``mask = values > t``: ``t`` is ``threshold`` (an activation
    value) or the ``quantile`` (in [0, 1)) of ``values``, so about ``1 - quantile`` of the
    pixels are kept. Give at most one of them; with neither, ``quantile`` is 0.9."""
    if threshold is not None and quantile is not None:
        raise MethodError(
            "give either threshold (an activation value) or quantile (0..1), not both"
        )
    if threshold is None:
        quantile = DEFAULT_QUANTILE if quantile is None else quantile
        if not 0.0 <= quantile < 1.0:
            raise MethodError(f"quantile must be in [0, 1), got {quantile}")
        threshold = float(torch.quantile(values.flatten().double(), quantile))
    return values > threshold, float(threshold)


def activation_mask(
    model: nn.Module | LoadedModel,
    image: torch.Tensor,
    layer: LayerSpec,
    channel: int,
    *,
    threshold: float | None = None,
    quantile: float | None = None,
) -> ActivationMask:
    """Threshold channel ``channel`` of ``layer`` for one image ``Tensor[3, H, W]``.

    The ``[h, w]`` map is upsampled bilinearly to ``[H, W]`` first, then thresholded at
    ``threshold`` (an activation value) or at its ``quantile`` (in [0, 1)); with neither,
    at the 0.9 quantile (the strongest 10 % of the image). Giving both is an error.
    """
    module = as_module(model)
    name, _ = resolve_layer(module, layer)
    image = _batch_of_one(image)
    channel_map = channel_maps(layer_activation(module, image, name), name, channel)
    values = resize_maps(channel_map, tuple(image.shape[-2:]))[0]
    mask, used = threshold_mask(values, threshold, quantile)
    return ActivationMask(name, channel, used, values, mask)
