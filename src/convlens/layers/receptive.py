"""Receptive fields of every layer, derived from the operations the forward pass runs.

A ``TorchFunctionMode`` sees every torch operation of one forward pass (module or
functional, padding included), so the field of each tensor is propagated exactly:
convolution and pooling grow it from kernel, stride, padding and dilation; explicit
``F.pad`` (TensorFlow-style "same" padding) shifts it; element-wise operations over
several inputs (residual sums, concatenation) take the union; anything that mixes all
positions (global pooling, squeeze-excitation) makes it global. Per axis, unit ``i`` of a
layer sees input pixels ``[first + i * jump, first + i * jump + size - 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from convlens.errors import LayerError
from convlens.layers.borrow import borrowed_model
from convlens.layers.find import named_layers, resolve_layer
from convlens.models.devices import model_input
from convlens.models.loading import LoadedModel, as_module

_SPATIAL_OPS = {"conv2d", "max_pool2d", "max_pool2d_with_indices", "avg_pool2d"}


@dataclass(frozen=True)
class Field:
    """Receptive field of a ``[B, C, H, W]`` tensor, per axis (rows, columns).

    ``size`` is the field size in input pixels, ``jump`` the effective stride, ``first`` the
    input coordinate of the first unit's top/left edge (negative where padding is seen).
    ``is_global`` marks tensors where every unit depends on the whole input.
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    first: tuple[int, int]
    is_global: bool = False

    @property
    def start(self) -> tuple[float, float]:
        """Centre of the first unit's field in input pixels (the usual ``start``)."""
        return tuple(f + (s - 1) / 2 for f, s in zip(self.first, self.size, strict=True))

    def box(self, row: int, col: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Input pixels ``(top, left, bottom, right)`` (inclusive, clipped to the image)
        seen by the unit at ``(row, col)``."""
        if self.is_global:
            return 0, 0, height - 1, width - 1
        top = self.first[0] + row * self.jump[0]
        left = self.first[1] + col * self.jump[1]
        return (
            max(top, 0),
            max(left, 0),
            min(top + self.size[0] - 1, height - 1),
            min(left + self.size[1] - 1, width - 1),
        )


IDENTITY = Field((1, 1), (1, 1), (0, 0))


def as_pair(value) -> tuple[int, int]:  # noqa: ANN001
    """A convolution or pooling argument (an int, or a one- or two-element sequence) as
    ``(height, width)``."""
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _arg(args, kwargs, index: int, name: str, default):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _through_window(field: Field, kernel, stride, padding, dilation) -> Field:
    """Field after a sliding window (convolution or pooling) on a tensor with ``field``."""
    size, jump, first = [], [], []
    for axis in range(2):
        k, s, p, d = kernel[axis], stride[axis], padding[axis], dilation[axis]
        size.append(field.size[axis] + d * (k - 1) * field.jump[axis])
        first.append(field.first[axis] - p * field.jump[axis])
        jump.append(field.jump[axis] * s)
    return Field(tuple(size), tuple(jump), tuple(first))


def _window_params(name: str, args, kwargs):
    if name == "conv2d":
        weight = _arg(args, kwargs, 1, "weight", None)
        kernel = tuple(weight.shape[-2:])
        stride = as_pair(_arg(args, kwargs, 3, "stride", 1))
        dilation = as_pair(_arg(args, kwargs, 5, "dilation", 1))
        padding = _arg(args, kwargs, 4, "padding", 0)
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
        return kernel, stride, as_pair(padding), dilation
    kernel = as_pair(_arg(args, kwargs, 1, "kernel_size", 1))
    stride = _arg(args, kwargs, 2, "stride", None)
    stride = kernel if stride in (None, []) else as_pair(stride)
    padding = as_pair(_arg(args, kwargs, 3, "padding", 0))
    dilation = as_pair(_arg(args, kwargs, 4, "dilation", 1)) if "max" in name else (1, 1)
    return kernel, stride, padding, dilation


class _FieldTracer(TorchFunctionMode):
    """Propagates a `Field` to every 4-D tensor computed from the traced input."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[int, Field | None] = {}
        self._alive: list[torch.Tensor] = []

    def set(self, tensor: torch.Tensor, field: Field | None) -> None:
        self.fields[id(tensor)] = field
        self._alive.append(tensor)

    def get(self, tensor: torch.Tensor) -> Field | None:
        return self.fields.get(id(tensor))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        inputs = [
            t
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and t.dim() == 4 and id(t) in self.fields
        ]
        outputs = [t for t in tree_flatten(result)[0] if isinstance(t, torch.Tensor)]
        if not inputs or not outputs:
            return result
        field = self._output_field(name, args, kwargs, inputs, outputs[0])
        for output in outputs:
            if output.dim() == 4:
                self.set(output, field)
        return result

    def _output_field(self, name, args, kwargs, inputs, output) -> Field | None:
        known = [self.get(t) for t in inputs]
        if any(f is None for f in known) or output.dim() != 4:
            return None
        if any(f.is_global for f in known):
            return Field((0, 0), (0, 0), (0, 0), is_global=True)
        source = inputs[0]
        if name in _SPATIAL_OPS and args and args[0] is source:
            return _through_window(known[0], *_window_params(name, args, kwargs))
        if name == "pad" and args and args[0] is source:
            pad = list(_arg(args, kwargs, 1, "pad", ()))
            left, top = (pad + [0, 0, 0, 0])[0], (pad + [0, 0, 0, 0])[2]
            return _through_window(known[0], (1, 1), (1, 1), (top, left), (1, 1))
        if output.shape[-2:] == (1, 1) and source.shape[-2:] != (1, 1):
            return Field((0, 0), (0, 0), (0, 0), is_global=True)
        same = [f for t, f in zip(inputs, known, strict=True) if t.shape[-2:] == output.shape[-2:]]
        if len(same) != len(known) or len({f.jump for f in same}) != 1:
            return None
        first = tuple(min(f.first[a] for f in same) for a in range(2))
        end = tuple(max(f.first[a] + f.size[a] for f in same) for a in range(2))
        return Field(tuple(e - f for e, f in zip(end, first, strict=True)), same[0].jump, first)


@dataclass(frozen=True)
class LayerInfo:
    """One row of the layer table."""

    index: int
    name: str
    type: str
    output_shape: tuple[int, ...] | None
    field: Field | None
    calls: int


def layer_table(model: nn.Module | LoadedModel, images: torch.Tensor) -> list[LayerInfo]:
    """Every submodule with its output shape (last call) and receptive field.

    ``images``: ``Tensor[B, 3, H, W]`` (one image is enough). ``field`` is None where the
    output is not spatial or cannot be traced back to input pixels (e.g. interpolation).
    """
    model = as_module(model)

    tracer = _FieldTracer()
    seen: dict[str, tuple[tuple[int, ...] | None, Field | None, int]] = {}
    handles = []

    def record(name: str):
        def hook(_module, _inputs, output):
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            field = tracer.get(output) if isinstance(output, torch.Tensor) else None
            calls = seen.get(name, (None, None, 0))[2] + 1
            seen[name] = (shape, field, calls)

        return hook

    layers = named_layers(model)
    images = model_input(model, images.detach()).clone()  # on the model's device
    with borrowed_model(model):
        try:
            for name, module in layers:
                handles.append(module.register_forward_hook(record(name)))
            with torch.no_grad(), tracer:
                tracer.set(images, IDENTITY)
                model(images)
        finally:
            for handle in handles:
                handle.remove()
    return [
        LayerInfo(index, name, type(module).__name__, *seen.get(name, (None, None, 0)))
        for index, (name, module) in enumerate(layers)
    ]


def receptive_field(model: nn.Module, layer, images: torch.Tensor) -> Field:
    """The receptive field of one layer (name, index or module) for inputs like ``images``."""

    name, _ = resolve_layer(model, layer)
    info = next(row for row in layer_table(model, images) if row.name == name)
    if info.field is None:
        raise LayerError(
            f"layer {name!r} has no traceable receptive field (its output is "
            f"{info.output_shape}); choose a convolutional or pooling layer"
        )
    return info.field
