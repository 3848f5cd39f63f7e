"""Feature maps: one layer's channels for one image, and every layer's channel mean."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import nn

from convlens.errors import LayerError, MethodError
from convlens.layers import borrowed_model, capture, resolve_layer
from convlens.layers.find import LayerSpec
from convlens.models.devices import DeviceSpec, model_input, placed_on, to_cpu
from convlens.models.loading import LoadedModel, as_module

ORDERS = ("mean", "index")


@dataclass(frozen=True)
class FeatureMaps:
    """``maps``: ``Tensor[K, h, w]`` raw activations of the chosen channels, in display
    order; ``channels``: ``Tensor[K]`` their channel indices; ``means``: ``Tensor[K]``."""

    layer: str
    maps: torch.Tensor
    channels: torch.Tensor
    means: torch.Tensor

    def _repr_png_(self) -> bytes:
        """Jupyter shows the maps as their captioned grid (`convlens.render.features.
        feature_map_grid`)."""
        from convlens.render.features import feature_map_grid
        from convlens.render.images import png_bytes

        return png_bytes(feature_map_grid(self))


def _batch_of_one(image: torch.Tensor) -> torch.Tensor:
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise MethodError(
            f"expected one image Tensor[3, H, W] or Tensor[1, 3, H, W], got {tuple(image.shape)}"
        )
    return image


def layer_activation(
    model: nn.Module | LoadedModel, images: torch.Tensor, layer: LayerSpec
) -> torch.Tensor:
    """Output ``Tensor[B, C, h, w]`` of ``layer`` for ``images`` (no autograd, model borrowed;
    on the model's device: the images follow the model)."""
    module = as_module(model)
    name, _ = resolve_layer(module, layer)
    with borrowed_model(module), torch.no_grad(), capture(module, name) as cap:
        module(model_input(module, images))
    return spatial_activation(cap.activation(name), name)


def spatial_activation(activation: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
    """``activation`` itself when it is a ``Tensor[B, C, h, w]`` layer output; `LayerError`
    (naming the fix) otherwise."""
    if activation.dim() != 4:
        raise LayerError(
            f"layer {layer!r} outputs shape {tuple(activation.shape)}, not [B, C, h, w]; "
            "choose a convolutional layer (see 'convlens layers')"
        )
    return activation


def channel_maps(activation: torch.Tensor, layer: LayerSpec, channel: int) -> torch.Tensor:
    """``activation[:, channel]`` ``Tensor[B, h, w]`` of a ``Tensor[B, C, h, w]`` output of
    ``layer``: `LayerError` for another shape, `MethodError` unless ``channel`` is an
    integer in ``0..C-1`` (the message names the range)."""
    channels = spatial_activation(activation, layer).shape[1]
    if isinstance(channel, bool) or not isinstance(channel, numbers.Integral):
        raise MethodError(f"a channel index is an integer in 0..{channels - 1}, got {channel!r}")
    if not 0 <= channel < channels:
        raise MethodError(
            f"channel {channel} out of range: layer {layer!r} has {channels} channels "
            f"(0..{channels - 1})"
        )
    return activation[:, int(channel)]


def feature_maps(
    model: nn.Module | LoadedModel,
    image: torch.Tensor,
    layer: LayerSpec,
    *,
    order: str = "mean",
    top: int | None = None,
    device: DeviceSpec | None = None,
) -> FeatureMaps:
    """The channels of ``layer`` for one image (``Tensor[3, H, W]``, normalised).

    ``order="mean"`` sorts channels by mean activation, largest first; ``"index"`` keeps
    them in order. ``top`` keeps the first ``top`` channels of that order. ``device``: run
    there and move the model back afterwards (None: where it is). Results are on the CPU.
    """
    if order not in ORDERS:
        raise MethodError(f"unknown order {order!r}; use one of {', '.join(ORDERS)}")
    if top is not None and top < 1:
        raise MethodError(f"top must be a positive number of channels, got {top}")
    module = as_module(model)
    name, _ = resolve_layer(module, layer)
    with placed_on(module, device):
        activation = to_cpu(layer_activation(module, _batch_of_one(image), name)[0])
    means = activation.mean((1, 2))
    channels = (
        torch.argsort(means, descending=True, stable=True)
        if order == "mean"
        else torch.arange(activation.shape[0])
    )
    channels = channels[:top] if top is not None else channels
    return FeatureMaps(name, activation[channels], channels, means[channels])


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _stage_candidates(model: nn.Module) -> list[str]:
    """Children of the outermost module with more than one child; a child that is a plain
    container (``nn.Sequential``, ``ModuleList``, ``ModuleDict``) stands for its children."""
    prefix, module = "", model
    while len(children := list(module.named_children())) == 1:
        prefix, module = f"{prefix}{children[0][0]}.", children[0][1]
    names = []
    for name, child in children:
        inner = list(child.named_children()) if isinstance(child, _CONTAINERS) else []
        names += [f"{prefix}{name}.{sub}" for sub, _ in inner] or [f"{prefix}{name}"]
    return names


def _stage_means(
    module: nn.Module, image: torch.Tensor
) -> list[tuple[str, tuple[int, ...], torch.Tensor]]:
    """``(name, output shape, channel mean Tensor[h, w])`` of each stage (`stage_layers`)
    for a batch of one ``image``, from one forward pass. A module called more than once
    counts with its first call."""
    candidates = _stage_candidates(module)
    modules = dict(module.named_modules())
    finished: dict[str, tuple[tuple[int, ...], torch.Tensor]] = {}  # forward finish order

    def record(name: str):
        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                mean = to_cpu(output[0].mean(0))
                finished.setdefault(name, (tuple(output.shape), mean))

        return hook

    handles = []
    with borrowed_model(module), torch.no_grad():
        try:
            for name in candidates:
                handles.append(modules[name].register_forward_hook(record(name)))
            module(model_input(module, image))
        finally:
            for handle in handles:
                handle.remove()
    stages: list[tuple[str, tuple[int, ...], torch.Tensor]] = []
    for name, (shape, mean) in finished.items():
        if shape[-2] * shape[-1] == 1:
            continue
        if stages and stages[-1][1] == shape:
            stages.pop()
        stages.append((name, shape, mean))
    if not stages:
        raise LayerError(
            "found no stage with a [B, C, h, w] output among the model's top-level blocks; "
            "pass the layers to draw (see 'convlens layers')"
        )
    return stages


def stage_layers(model: nn.Module | LoadedModel, image: torch.Tensor) -> list[str]:
    """One layer per stage of the network, in forward order: the stem, each block of the
    feature extractor, the head (`_stage_candidates`), keeping those with a ``[B, C, h, w]``
    output larger than 1x1 (a module called more than once counts with its first call).
    Consecutive candidates with the same output shape are one stage (``conv_stem`` then
    ``bn1``; a conv then its ReLU): only the last of them is kept. Costs one forward pass
    of ``image`` ``Tensor[3, H, W]``."""
    return [name for name, _, _ in _stage_means(as_module(model), _batch_of_one(image))]


def layer_mean_maps(
    model: nn.Module | LoadedModel,
    image: torch.Tensor,
    layers: list[str] | None = None,
    *,
    device: DeviceSpec | None = None,
) -> list[tuple[str, torch.Tensor]]:
    """``(name, Tensor[h, w])``: the channel mean of each stage's output (`stage_layers`)
    or of each of ``layers``, in forward order, for one image ``Tensor[3, H, W]``
    (normalised): how the picture of the input changes with depth. One forward pass.
    ``device``: run there and move the model back afterwards (None: where it is). The
    maps are on the CPU."""
    module = as_module(model)
    image = _batch_of_one(image)
    if layers is None:
        with placed_on(module, device):
            return [(name, mean) for name, _, mean in _stage_means(module, image)]
    if not layers:
        raise LayerError("pass at least one layer, or layers=None for every stage")
    with placed_on(module, device), borrowed_model(module), torch.no_grad():
        with capture(module, layers) as cap:
            module(model_input(module, image))
    return [(name, to_cpu(cap.activation(name)[0].mean(0))) for name in cap.names]
