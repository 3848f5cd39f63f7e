"""Find layers by dotted name, index (an int or "#3") or object; pick a default layer for
CAM methods."""

from __future__ import annotations

import difflib
import weakref

import torch
from torch import nn

from convlens.errors import LayerError
from convlens.layers.borrow import borrowed_model, refuse_scripted
from convlens.layers.tokens import is_grid_model, last_grid_layer
from convlens.models.devices import model_input

LayerSpec = str | int | nn.Module


def named_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every submodule with its dotted name, in ``named_modules()`` order, root excluded."""
    return [(name, module) for name, module in model.named_modules() if name]


def resolve_layer(model: nn.Module, layer: LayerSpec) -> tuple[str, nn.Module]:
    """A layer given as a dotted name (``"layer4.1.conv2"``; ``nn.Sequential`` children are
    named ``"0"``, ``"1"``, ...), an index into `named_layers` as an ``int`` or as a string
    ``"#3"`` (the ``#`` column of ``convlens layers``; negative counts from the end: ``-1``,
    ``"#-1"``), or the module object itself. A string is a name unless it starts with ``#``:
    a digit string that names no layer is a `LayerError`, never an index."""
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


def spatial_outputs(model: nn.Module, images: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape) of every module whose output is a ``[B, C, H, W]`` tensor, in the
    order the forward pass finishes them (a container after its children)."""

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


# model -> {(input shape, dtype, module names and types): default layer name}. Weak keys:
# nothing is stored on the model, and a model that is deleted leaves nothing behind.
_DEFAULT_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def default_cam_layer(model: nn.Module, images: torch.Tensor) -> str:
    """The last module with a spatial output (H or W > 1) before global pooling.

    Among modules finishing at the same point (a block and its last child) the outermost
    one is chosen, as it is the one whose output flows on. Finding it costs one forward
    pass of one image; the answer is remembered per model, input shape and module
    structure, so repeated calls on the same model cost nothing. A model that names its
    own CAM layer in a string attribute ``cam_layer`` (the segmentation network names its
    decoder, as the last spatial layer there is the per-class logit map) gets that layer.
    """
    declared = getattr(model, "cam_layer", None)
    if isinstance(declared, str):
        return resolve_layer(model, declared)[0]
    key = (
        tuple(images.shape[1:]),
        images.dtype,
        tuple((name, type(module)) for name, module in model.named_modules()),
    )
    known = _DEFAULT_LAYERS.setdefault(model, {})
    if key not in known:
        known[key] = _last_spatial_layer(model, images[:1])
    return known[key]


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
    if not spatial:
        raise LayerError(
            "the model has no layer with a spatial [B, C, H, W] output; CAM methods need "
            "a convolutional layer: pass layer=... or use a gradient method such as saliency"
        )
    return spatial[-1]
