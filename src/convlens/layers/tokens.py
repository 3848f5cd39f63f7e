"""Layer outputs that are images in another layout: token sequences and channels-last maps.

CAM methods and feature maps need a layer's output as ``Tensor[B, C, h, w]``. Vision
transformers give ``[B, N, C]`` token sequences (ViT, DeiT: ``N = prefix + h * w`` with a
class token, and a distillation token for distilled DeiT), and some timm models (Swin)
give channels-last ``[B, H, W, C]`` maps. A *reshape* turns such an output into the grid:

- `token_grid`: drop the ``prefix`` tokens, lay the rest on the ``h x w`` patch grid;
- `channels_last`: ``[B, H, W, C] -> [B, C, H, W]``;
- any callable ``output -> Tensor[B, C, h, w]`` whose result *selects or permutes*
  elements of ``output`` (no arithmetic), given to `capture` (``reshape=``) or
  registered for a module with `register_reshape`.

`auto_reshape` is the rule used by default: models that say they are token models (timm's
``num_prefix_tokens`` with a patch embedding's ``grid_size``) get `token_grid` for their
``[B, prefix + h * w, C]`` outputs, models with ``output_fmt == "NHWC"`` get
`channels_last` for their ``[B, H, W, C]`` outputs of the input's batch size; nothing else
is reshaped (plain CNNs are untouched). Inside a token model a 4-D output that is not a
grid (attention heads ``[B, heads, N, d]``) is never taken for an image.

`grid_output` makes the gradient work through a reshape: the recorded grid is a leaf of
the autograd graph and the model continues with ``output + R^T (grid - R output)``, which
equals ``output`` exactly in value and sends the score's gradient through the grid
(``R`` is the reshape, ``R^T`` its adjoint, computed by autograd).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from convlens.errors import LayerError

Reshape = Callable[[torch.Tensor], torch.Tensor]

# module (a layer or a whole model) -> reshape; weak keys: nothing is stored on the model.
_REGISTERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register_reshape(module: nn.Module, reshape: Reshape | None) -> None:
    """Use ``reshape`` for ``module``'s output (a layer), or for every layer of ``module``
    (a whole model) that has no reshape of its own; ``None`` forgets it. Nothing is stored
    on the module itself."""
    if reshape is None:
        _REGISTERED.pop(module, None)
    else:
        _REGISTERED[module] = reshape


def token_grid(output: torch.Tensor, prefix: int, height: int, width: int) -> torch.Tensor:
    """``[B, prefix + height * width, C]`` tokens to ``Tensor[B, C, height, width]`` (the
    prefix tokens, class and distillation tokens, dropped; patches in row-major order)."""
    if output.dim() != 3 or output.shape[1] != prefix + height * width:
        raise LayerError(
            f"a token layer's output must be [B, {prefix} + {height}*{width}, C], got "
            f"{tuple(output.shape)}; pass reshape=... for another layout"
        )
    batch, _, channels = output.shape
    return output[:, prefix:].transpose(1, 2).reshape(batch, channels, height, width)


def channels_last(output: torch.Tensor) -> torch.Tensor:
    """``[B, H, W, C]`` to ``Tensor[B, C, H, W]``."""
    if output.dim() != 4:
        raise LayerError(f"a channels-last output must be [B, H, W, C], got {tuple(output.shape)}")
    return output.permute(0, 3, 1, 2)


def token_layout(model: nn.Module) -> tuple[int, tuple[int, int]] | None:
    """``(prefix tokens, (h, w) patch grid)`` of a token model (timm ViT/DeiT style:
    ``num_prefix_tokens`` and a module with ``grid_size``), else None."""
    prefix = getattr(model, "num_prefix_tokens", None)
    if not isinstance(prefix, int):
        return None
    for module in model.modules():
        grid = getattr(module, "grid_size", None)
        if isinstance(grid, (tuple, list)) and len(grid) == 2:
            return prefix, (int(grid[0]), int(grid[1]))
    return None


def is_channels_last(model: nn.Module) -> bool:
    """Whether the model declares channels-last feature maps (timm ``output_fmt="NHWC"``)."""
    return str(getattr(model, "output_fmt", "")).upper() == "NHWC"


def is_grid_model(model: nn.Module) -> bool:
    """Whether `auto_reshape` reshapes any of ``model``'s outputs (token or NHWC model)."""
    return token_layout(model) is not None or is_channels_last(model) or model in _REGISTERED


def auto_reshape(model: nn.Module, module: nn.Module, output, batch: int | None) -> Reshape | None:
    """The reshape for ``module``'s ``output`` inside ``model`` (see the module docstring),
    or None when the output is used as it is. ``batch``: the input's batch size (outputs of
    another batch size, such as window attention, are never reshaped)."""
    if module in _REGISTERED:
        return _REGISTERED[module]
    if model in _REGISTERED:
        return _REGISTERED[model]
    if not isinstance(output, torch.Tensor) or (batch is not None and output.shape[0] != batch):
        return None
    layout = token_layout(model)
    if layout is not None and output.dim() == 3:
        prefix, (height, width) = layout
        if output.shape[1] == prefix + height * width:
            return partial(token_grid, prefix=prefix, height=height, width=width)
        guess = _square_grid(output.shape[1], prefix)  # another input size than configured
        if guess is not None:
            return partial(token_grid, prefix=prefix, height=guess, width=guess)
    if is_channels_last(model) and output.dim() == 4:
        return channels_last
    return None


def connected_grid(model: nn.Module, name: str, output: torch.Tensor) -> torch.Tensor:
    """Layer ``name``'s raw ``output`` as the image grid ``Tensor[B, C, h, w]`` that
    `convlens.layers.capture` records for it (`auto_reshape`), still connected to the
    forward pass that made it: what a unit's gradient w.r.t. the input needs (capture's
    recorded grid is a leaf, for gradients w.r.t. the grid itself). Capture the layer
    with ``reshape=None`` to get the raw output."""
    rule = auto_reshape(model, model.get_submodule(name), output, output.shape[0])
    return output if rule is None else rule(output)


def _square_grid(tokens: int, prefix: int) -> int | None:
    side = math.isqrt(max(tokens - prefix, 0))
    return side if side > 1 and side * side == tokens - prefix else None


def is_image_output(model: nn.Module, module: nn.Module, output, batch: int | None) -> bool:
    """Whether ``output`` is (or reshapes to) a ``[B, C, h, w]`` map with ``h * w > 1``: a
    reshaped grid, or a plain 4-D output of a model that is no grid model."""
    if not isinstance(output, torch.Tensor):
        return False
    reshape = auto_reshape(model, module, output, batch)
    if reshape is not None:
        shape = _reshaped_shape(reshape, output)
        width = getattr(model, "embed_dim", None) if token_layout(model) else None
        if shape is None or (isinstance(width, int) and shape[1] != width):
            return False  # a token model's image layers carry its embedding width (not qkv)
        return shape[2] * shape[3] > 1
    return output.dim() == 4 and not is_grid_model(model) and output.shape[2] * output.shape[3] > 1


def _reshaped_shape(reshape: Reshape, output: torch.Tensor) -> tuple[int, ...] | None:
    try:
        grid = reshape(output.detach())
    except LayerError:
        return None
    return tuple(grid.shape) if grid.dim() == 4 else None


def grid_output(
    output: torch.Tensor, reshape: Reshape, gradients: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(grid Tensor[B, C, h, w], what the model continues with)`` for a reshaped layer.

    Without ``gradients``: a detached copy of the grid, and None (the output is unchanged).
    With ``gradients``: the grid is a leaf that requires grad, and the model continues with
    ``output + R^T (grid - R output)`` (equal to ``output``), so ``dscore/dgrid`` is the
    score's gradient at the grid positions; prefix tokens keep their own gradient path.
    """
    grid = reshape(output)
    if grid.dim() != 4:
        raise LayerError(
            f"reshape gave shape {tuple(grid.shape)}; it must return Tensor[B, C, h, w]"
        )
    if not gradients:
        return grid.detach().clone(), None
    leaf = grid.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        source = output.detach().requires_grad_(True)
        (adjoint,) = torch.autograd.grad(
            reshape(source), source, grad_outputs=leaf - grid.detach(), create_graph=True
        )
        return leaf, output + adjoint


def last_grid_layer(model: nn.Module, image: torch.Tensor) -> str | None:
    """Default CAM layer of a grid model (`is_grid_model`): the last module, in the order the
    forward pass finishes them, whose output is an image (`is_image_output`) and whose grid
    positions reach the output (a non-zero gradient of the summed output). With a class
    token read out, the last blocks' patch tokens reach nothing, so the choice falls on the
    last layer before the final token mixing (the last block's first norm in a ViT).
    One forward and one backward pass of ``image`` (``Tensor[1, C, H, W]``); call inside
    `borrowed_model`. None when no output is an image."""
    leaves: list[tuple[str, torch.Tensor]] = []
    handles = []
    batch = image.shape[0]

    def record(name: str):
        def hook(module, _inputs, output):
            if not is_image_output(model, module, output, batch):
                return None
            rule = auto_reshape(model, module, output, batch)
            leaf, downstream = grid_output(output, rule or (lambda x: x), gradients=True)
            leaves.append((name, leaf))
            return downstream

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(record(name)))
        with torch.enable_grad():
            output = model(image)
            if not leaves or not isinstance(output, torch.Tensor):
                return None
            gradients = torch.autograd.grad(
                output.float().sum(), [leaf for _, leaf in leaves], allow_unused=True
            )
    finally:
        for handle in handles:
            handle.remove()
    reaching = [
        name
        for (name, _), gradient in zip(leaves, gradients, strict=True)
        if gradient is not None and bool(gradient.ne(0).any())
    ]
    return reaching[-1] if reaching else None
