"""Find layers by dotted name, index (an int or "#3") or object; pick a default layer for
CAM methods."""

from __future__ import annotations

import difflib
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from convlens.errors import LayerError
from convlens.layers.borrow import borrowed_model, refuse_scripted
from convlens.layers.tokens import is_grid_model, last_grid_layer
from convlens.models.devices import model_input
from convlens.models.loading import LoadedModel, as_module

LayerSpec = str | int | nn.Module


def named_layers(model: nn.Module | LoadedModel) -> list[tuple[str, nn.Module]]:
    """Every submodule with its dotted name, in ``named_modules()`` order, root excluded."""
    return [(name, module) for name, module in as_module(model).named_modules() if name]


def resolve_layer(model: nn.Module | LoadedModel, layer: LayerSpec) -> tuple[str, nn.Module]:
    """A layer given as a dotted name (``"layer4.1.conv2"``; ``nn.Sequential`` children are
    named ``"0"``, ``"1"``, ...), an index into `named_layers` as an ``int`` or as a string
    ``"#3"`` (the ``#`` column of ``convlens layers``; negative counts from the end: ``-1``,
    ``"#-1"``), or the module object itself. A string is a name unless it starts with ``#``:
    a digit string that names no layer is a `LayerError`, never an index."""
    model = as_module(model)
    layers = named_layers(model)
    if isinstance(layer, nn.Module):
        for name, module in layers:
            if module is layer:
                return name, module
        if layer is model:
            return "", model
        raise LayerError("the given module is not part of the model; pass one of its submodules")
    if isinstance(layer, int) and not isinstance(layer, bool):
        return _layer_at(layers, layer)
    if isinstance(layer, str):
        if layer.startswith("#"):
            return _layer_at(layers, _index_text(layer))
        modules = dict(layers)
        if layer in modules:
            return layer, modules[layer]
        raise LayerError(f"no layer named {layer!r}{_name_hint(layer, list(modules))}")
    raise LayerError(
        f"a layer is a name, an index (an int, or a string like '#3') or a module, not a "
        f"{type(layer).__name__}"
    )


def resolve_layer_names(model: nn.Module | LoadedModel, layer: LayerSpec | list | tuple) -> str:
    """The name of ``layer`` (see `resolve_layer`), or of several layers, given as a list
    or as one string ``"blocks.4,blocks.5"`` (a string that names no layer is split at
    commas), joined by commas: what the CAM methods accept to fuse several layers."""
    model = as_module(model)
    if isinstance(layer, str) and "," in layer and layer not in dict(named_layers(model)):
        layer = [part.strip() for part in layer.split(",") if part.strip()]
    if isinstance(layer, (list, tuple)):
        if not layer:
            raise LayerError("an empty list of layers; name at least one (see 'convlens layers')")
        return ",".join(resolve_layer(model, part)[0] for part in layer)
    return resolve_layer(model, layer)[0]


def _layer_at(layers: list[tuple[str, nn.Module]], index: int) -> tuple[str, nn.Module]:
    if not -len(layers) <= index < len(layers):
        raise LayerError(
            f"layer index {index} is out of range: the model has {len(layers)} layers "
            f"(0..{len(layers) - 1}); run 'convlens layers' to list them"
        )
    return layers[index]


def _index_text(text: str) -> int:
    digits = text[1:]
    if not digits.lstrip("-").isdigit() or digits.count("-") > 1:
        raise LayerError(
            f"{text!r} is not a layer index: write '#' and an integer, such as '#3' or '#-1' "
            "(the '#' column of 'convlens layers'), or give the layer's name"
        )
    return int(digits)


def _name_hint(layer: str, names: list[str]) -> str:
    """What to try instead of an unknown name: close names, the index form for digits."""
    hints = []
    if close := difflib.get_close_matches(layer, names, n=3):
        hints.append(f"did you mean {' or '.join(close)}")
    if layer.lstrip("-").isdigit():
        hints.append(
            f"a string is a layer name (to pick row {layer} of 'convlens layers' write "
            f"'#{layer}', or pass the int {layer} from Python)"
        )
    hints.append("run 'convlens layers' to list layer names")
    return "; " + "; ".join(hints)


def spatial_outputs(
    model: nn.Module | LoadedModel, images: torch.Tensor
) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape) of every module whose output is a ``[B, C, H, W]`` tensor, in the
    order the forward pass finishes them (a container after its children)."""
    model = as_module(model)
    refuse_scripted(model, "find the layers a forward pass uses")
    finished: list[tuple[str, tuple[int, ...]]] = []
    handles = []

    def record(name):
        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                finished.append((name, tuple(output.shape)))

        return hook

    with borrowed_model(model):
        try:
            for name, module in named_layers(model):
                handles.append(module.register_forward_hook(record(name)))
            with torch.no_grad():
                model(model_input(model, images))  # inputs follow the model's device
        finally:
            for handle in handles:
                handle.remove()
    return finished


@dataclass
class _KnownLayers:
    """The default layers found for one model: its module structure (names and types) and,
    for the last few input (shape, dtype), the layer name, least recently used first."""

    structure: tuple
    by_input: OrderedDict = field(default_factory=OrderedDict)


# model -> _KnownLayers. Weak keys: nothing is stored on the model, and a model that is
# deleted leaves nothing behind. At most DEFAULT_LAYERS_KEPT input shapes per model, so a
# long-lived model explained at many sizes does not grow the cache without bound.
_DEFAULT_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
DEFAULT_LAYERS_KEPT = 8

# Pooling modules only shrink or resample the grid of the layer before them.
_POOLING = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
    nn.FractionalMaxPool2d,
)


# Modules that only rescale, gate or pass on values: not layers a user picks to look at.
_PASS_THROUGH = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.Identity,
    nn.modules.dropout._DropoutNd,
)


def is_pickable_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a layer a user would pick to look at: a convolution, a pooling
    layer, or a block or stage (a module with submodules). Normalization (timm's fused
    norm-activation modules included), identity, dropout, drop-path, activation and other
    single-op modules are not; `layer_table` lists them all."""
    if isinstance(module, (nn.modules.conv._ConvNd, *_POOLING)):
        return True
    if isinstance(module, _PASS_THROUGH):
        return False
    return any(True for _ in module.children())


def default_cam_layer(model: nn.Module | LoadedModel, images: torch.Tensor) -> str:
    """The output of the network's last convolution stage: the last module with a spatial
    output (H or W > 1), not counting pooling layers at the end of the spatial part (max,
    average or adaptive pooling, and blocks that end in one), which only shrink or resample
    that grid. VGG-16 at 200x320 gets ``features.29`` (the ReLU after conv5_3, 12x20), not
    its max pool (6x10) nor ``avgpool`` (an adaptive pool resampling 6x10 to 7x7); networks
    that end in global pooling (ResNet: ``layer4``) keep the layer before it.

    Among modules finishing at the same point (a block and its last child) the outermost
    one is chosen, as it is the one whose output flows on. Finding it costs one forward
    pass of one image; the answer is remembered per model and module structure for the
    last `DEFAULT_LAYERS_KEPT` input shapes, so repeated calls on the same model cost
    nothing. A model that names its
    own CAM layer in a string attribute ``cam_layer`` (the segmentation network names its
    decoder, as the last spatial layer there is the per-class logit map) gets that layer.
    """
    model = as_module(model)
    declared = getattr(model, "cam_layer", None)
    if isinstance(declared, str):
        return resolve_layer(model, declared)[0]
    structure = tuple((name, type(module)) for name, module in model.named_modules())
    known = _DEFAULT_LAYERS.get(model)
    if known is None or known.structure != structure:  # new, or its modules changed
        known = _DEFAULT_LAYERS[model] = _KnownLayers(structure)
    key = (tuple(images.shape[1:]), images.dtype)
    if key in known.by_input:
        known.by_input.move_to_end(key)
    else:
        known.by_input[key] = _last_spatial_layer(model, images[:1])
        while len(known.by_input) > DEFAULT_LAYERS_KEPT:
            known.by_input.popitem(last=False)
    return known.by_input[key]


def _last_spatial_layer(model: nn.Module, image: torch.Tensor) -> str:
    if is_grid_model(model):  # ViT/DeiT tokens, Swin channels-last: see layers/tokens.py
        with borrowed_model(model):
            found = last_grid_layer(model, image)
        if found is None:
            raise LayerError(
                "no layer of this token/channels-last model has an output that reshapes to "
                "its patch grid; pass layer=... and describe its layout with "
                "convlens.layers.tokens.register_reshape(layer, fn)"
            )
        return found
    spatial = [name for name, shape in spatial_outputs(model, image) if shape[2] * shape[3] > 1]
    spatial = _without_trailing_pooling(model, spatial)
    if not spatial:
        raise LayerError(
            "the model has no layer with a spatial [B, C, H, W] output; CAM methods need "
            "a convolutional layer: pass layer=... or use a gradient method such as saliency"
        )
    return spatial[-1]


def _without_trailing_pooling(model: nn.Module, finished: list[str]) -> list[str]:
    """``finished`` (module names in the order they finish) less the pooling layers at its
    end, and the blocks whose output is one of theirs (a block finishing right after a
    pooling layer inside it)."""
    modules = dict(named_layers(model))

    def pooled(i: int) -> bool:
        if isinstance(modules[finished[i]], _POOLING):
            return True
        inner = i > 0 and finished[i - 1].startswith(finished[i] + ".")
        return inner and pooled(i - 1)

    end = len(finished)
    while end and pooled(end - 1):
        end -= 1
    return finished[:end]
