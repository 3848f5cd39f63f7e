"""Project one unit's activation back to pixels (Zeiler & Fergus 2014; Springenberg et al.
2015), cropped to the unit's receptive field.

The projection of unit ``a = A[c, i, j]`` of a layer is ``d a / d x`` computed with the
rectifiers' backward replaced by a rule from `convlens.attribution.rules`:
``"deconvnet"`` (pass positive signals only) or ``"guided"`` (positive signals where the
forward unit was active). Max-pool switches come from autograd of ``max_pool2d`` (the
gradient goes to the recorded argmax), and convolutions are undone by their transposed
filters, which is what autograd of ``conv2d`` computes. A unit cannot see outside its
receptive field, so the projection is already zero there; the result is cropped to the
field's box all the same (``crop=False`` keeps the raw gradient). A model in which the
rule meets no rectifier (SiLU, GELU, tanh networks) is refused: the "projection" would be
a plain gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convlens.errors import MethodError
from convlens.features.activations import _batch_of_one, channel_maps
from convlens.layers import borrowed_model, capture, receptive_field, resolve_layer
from convlens.layers.borrow import require_autograd
from convlens.layers.find import LayerSpec
from convlens.layers.rules import backward_rule
from convlens.layers.tokens import connected_grid
from convlens.models.loading import LoadedModel, as_module


@dataclass(frozen=True)
class UnitProjection:
    """``projection``: ``Tensor[3, H, W]``, zero outside ``box`` (top, left, bottom, right,
    inclusive input pixels); ``position`` (row, col) of the unit; ``activation`` its value."""

    layer: str
    channel: int
    position: tuple[int, int]
    activation: float
    rule: str
    box: tuple[int, int, int, int]
    projection: torch.Tensor


def _unit_position(channel_map: torch.Tensor, position: tuple[int, int] | None):
    height, width = channel_map.shape
    if position is None:
        flat = int(torch.argmax(channel_map))
        return divmod(flat, width)
    row, col = position
    if not (0 <= row < height and 0 <= col < width):
        raise MethodError(f"position {position} outside the layer's {height}x{width} map")
    return int(row), int(col)


def crop_to_box(values: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """``values`` ``Tensor[..., H, W]`` with everything outside ``box`` set to zero."""
    top, left, bottom, right = box
    kept = torch.zeros_like(values)
    kept[..., top : bottom + 1, left : right + 1] = values[..., top : bottom + 1, left : right + 1]
    return kept


def project_unit(
    model: nn.Module | LoadedModel,
    image: torch.Tensor,
    layer: LayerSpec,
    channel: int,
    position: tuple[int, int] | None = None,
    *,
    rule: str = "deconvnet",
    crop: bool = True,
) -> UnitProjection:
    """Project unit ``(channel, position)`` of ``layer`` (default position: the channel's
    maximum) for one normalised image ``Tensor[3, H, W]`` to ``Tensor[3, H, W]``, set to
    zero outside the unit's receptive field when ``crop``. Raises `MethodError` when the
    rule matched no rectifier in the model's forward pass."""
    require_autograd("project_unit")
    module = as_module(model)
    name, _ = resolve_layer(module, layer)
    image = _batch_of_one(image).detach()
    inputs = image.clone().requires_grad_(True)
    with borrowed_model(module), backward_rule(module, rule) as session:
        with capture(module, name, gradients=True, reshape=None) as cap:
            module(inputs)
            activation = connected_grid(module, name, cap.activation(name))
            unit_map = channel_maps(activation, name, channel)[0]
            row, col = _unit_position(unit_map.detach(), position)
            unit = unit_map[row, col]
            (gradient,) = torch.autograd.grad(unit, inputs)
    session.require_rectifiers(f"cannot project a unit with {rule}")
    field = receptive_field(module, name, image)
    box = field.box(row, col, image.shape[-2], image.shape[-1])
    projection = crop_to_box(gradient[0], box) if crop else gradient[0]
    return UnitProjection(name, channel, (row, col), float(unit.detach()), rule, box, projection)
