"""Patches and projections of top units: the exact receptive-field crop of each unit's
preprocessed image (grey `PAD_VALUE` where the field leaves the image) and its deconvnet or
guided-backprop projection (`convlens.layers.rules`), cut the same way (zero outside)."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from convlens.data.datasets import ScanDataset
from convlens.errors import DataError, ImageLoadError, LayerError
from convlens.layers import Field, borrowed_model, capture, layer_table
from convlens.layers.early_stop import run_until
from convlens.layers.input_gradient import fold_batch_norm_scales, input_gradient_forward
from convlens.layers.rules import backward_rule
from convlens.layers.tokens import connected_grid
from convlens.models.devices import placed_on

PAD_VALUE = 128  # grey display pixels where a receptive field reaches outside the image


@dataclass(frozen=True)
class TopUnit:
    """One of a channel's top k: item ``index`` (named ``source``), its ``value``, the
    unit's position ``(y, x)`` in the layer's output and ``box`` ``(x0, y0, x1, y1)`` (x1/y1
    exclusive): its receptive field in the preprocessed input (it may reach outside)."""

    index: int
    source: str
    value: float
    y: int
    x: int
    box: tuple[int, int, int, int]


def padded_crop(values: torch.Tensor, box: tuple[int, int, int, int], fill: float = 0.0):
    """``values[..., y0:y1, x0:x1]`` of a ``Tensor[..., H, W]`` for a box ``(x0, y0, x1,
    y1)`` that may reach outside it; outside pixels are ``fill``."""
    x0, y0, x1, y1 = box
    height, width = values.shape[-2:]
    out = torch.full((*values.shape[:-2], y1 - y0, x1 - x0), fill, dtype=values.dtype)
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y1, height), min(x1, width)
    if bottom > top and right > left:
        out[..., top - y0 : bottom - y0, left - x0 : right - x0] = values[
            ..., top:bottom, left:right
        ].to(out.device)
    return out


def inside_part(box: tuple[int, int, int, int], height: int, width: int):
    """``(x0, y0, x1, y1)`` (x1/y1 exclusive) of the patch of ``box`` ``(x0, y0, x1, y1)``
    that lies within a ``height`` x ``width`` image, in the patch's own pixels."""
    x0, y0, x1, y1 = box
    return max(-x0, 0), max(-y0, 0), min(width, x1) - x0, min(height, y1) - y0


def field_box(field: Field, y: int, x: int) -> tuple[int, int, int, int]:
    """Receptive field ``(x0, y0, x1, y1)`` (x1/y1 exclusive, not clipped to the image) of
    the unit at ``(y, x)``."""
    y0 = field.first[0] + y * field.jump[0]
    x0 = field.first[1] + x * field.jump[1]
    return x0, y0, x0 + field.size[1], y0 + field.size[0]


def layer_fields(module: nn.Module, names, image: torch.Tensor) -> dict:
    """``(Field, (h, w))`` of each layer for inputs like ``image`` ``Tensor[1, 3, H, W]``:
    its receptive field and output size; `LayerError` naming the fix for a layer that is
    not spatial or not traceable to input pixels."""
    table = {row.name: row for row in layer_table(module, image)}
    geometry = {}
    for name in names:
        row = table[name]
        if row.output_shape is None or len(row.output_shape) != 4:
            raise LayerError(
                f"layer {name!r} outputs {row.output_shape}, not [B, C, h, w]; top-activating "
                "patches need a convolutional layer (see 'convlens layers')"
            )
        if row.field is None or row.field.is_global:
            raise LayerError(
                f"layer {name!r} has no local receptive field (it mixes the whole image or "
                "cannot be traced to input pixels); choose an earlier convolutional layer"
            )
        geometry[name] = (row.field, tuple(row.output_shape[-2:]))
    return geometry


class DisplayCache:
    """The display pixels and normalised tensor of recently used items (at most ``size``)."""

    def __init__(self, dataset: ScanDataset, size: int = 256) -> None:
        self.dataset, self.size = dataset, size
        self.items: OrderedDict[int, tuple[np.ndarray, torch.Tensor]] = OrderedDict()

    def __call__(self, index: int) -> tuple[np.ndarray, torch.Tensor]:
        if index in self.items:
            self.items.move_to_end(index)
            return self.items[index]
        display = self.dataset.display(index)
        item = (display, self.dataset.preprocess.normalize(display))
        self.items[index] = item
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return item


def first_readable(dataset: ScanDataset, tries: int = 1000) -> torch.Tensor:
    """The first item that can be read, as ``Tensor[1, 3, H, W]`` (for tracing fields)."""
    for index in range(min(len(dataset), tries)):
        try:
            return dataset.preprocess.normalize(dataset.display(index))[None]
        except ImageLoadError:
            continue
    raise DataError(
        f"none of the first {min(len(dataset), tries)} items of the dataset could be read; "
        "check the paths (see the skipped files with --debug)"
    )


@dataclass(frozen=True)
class ChannelView:
    """One channel's pictures: ``patches`` ``uint8[h, w, 3]`` and, per rule, projections
    ``Tensor[3, h, w]``, in the order of the channel's top units; ``inside``: per unit, the
    part ``(x0, y0, x1, y1)`` of its patch within the image (`inside_part`)."""

    layer: str
    channel: int
    units: list[TopUnit]
    patches: list[np.ndarray]
    projections: dict[str, list[torch.Tensor]]
    inside: list[tuple[int, int, int, int]] = dataclasses.field(default_factory=list)


# Bytes of uncropped input gradients a group of channels may hold before they are cut
# into patches: the projections of about 440 units (about 49 channels of top 9) of a
# 224 x 224 image per group. Each group runs every distinct image of its units forward
# once, so larger groups share more forward passes: on 30 photos the default scan ran
# 631 forward passes with 64 MiB groups (a quarter of its time) and 18% faster with
# these, for about 110 MB more peak memory (docs/performance.md).
GROUP_BYTES = 256 * 2**20


class UnitViews:
    """The second pass, on demand: patches cut from the kept images and projections computed
    a group of channels at a time (as many units as `GROUP_BYTES` of input gradients
    allow), so memory stays bounded however many channels and however large the fields (a
    late layer's field can be several times the image). Within a group each distinct image
    runs forward once, and each of its units runs one backward pass through that forward
    pass's graph (`unit_gradients`)."""

    def __init__(self, module, dataset: ScanDataset, rules, device, batch_size: int) -> None:
        self.module, self.dataset, self.rules = module, dataset, tuple(rules)
        self.device, self.batch_size = device, batch_size
        self.cache = DisplayCache(dataset)

    def patch(self, unit: TopUnit) -> np.ndarray:
        """``uint8[y1 - y0, x1 - x0, 3]``: the unit's field in its preprocessed image, grey
        (`PAD_VALUE`) outside the image."""
        display, _ = self.cache(unit.index)
        patch = padded_crop(torch.from_numpy(display).permute(2, 0, 1), unit.box, PAD_VALUE)
        return patch.permute(1, 2, 0).numpy()

    def inside(self, unit: TopUnit) -> tuple[int, int, int, int]:
        """The part of ``unit``'s patch within its image (`inside_part`)."""
        height, width = self.cache(unit.index)[0].shape[:2]
        return inside_part(unit.box, height, width)

    def group_units(self, unit: TopUnit) -> int:
        """Units whose uncropped gradients (one per rule; images the size of ``unit``'s)
        fit `GROUP_BYTES`; at least ``batch_size``."""
        per_unit = self.cache(unit.index)[1].numel() * 4 * max(1, len(self.rules))
        return max(self.batch_size, GROUP_BYTES // per_unit)

    def channels(self, layer: str, tops: list[list[TopUnit]], channels) -> Iterator[ChannelView]:
        """A `ChannelView` of each of ``channels`` (indices into ``tops``), in order; the
        channels of a group (`group_units` units) share each image's forward pass."""
        group: list[int] = []
        limit = None
        for c in channels:
            group.append(c)
            if limit is None and tops[c]:
                limit = self.group_units(tops[c][0]) if self.rules else 1
            if limit is not None and sum(len(tops[g]) for g in group) >= limit:
                yield from self._views(layer, tops, group)
                group = []
        if group:
            yield from self._views(layer, tops, group)

    def _views(self, layer: str, tops, group: list[int]) -> Iterator[ChannelView]:
        keys = [(c, unit) for c in group for unit in tops[c]]
        gradients = {rule: self.gradients(layer, keys, rule) for rule in self.rules}
        start = 0
        for c in group:
            count = len(tops[c])
            projected = {
                rule: [
                    padded_crop(grad, unit.box, 0.0)
                    for unit, grad in zip(tops[c], found[start : start + count], strict=True)
                ]
                for rule, found in gradients.items()
            }
            patches = [self.patch(unit) for unit in tops[c]]
            inside = [self.inside(unit) for unit in tops[c]]
            yield ChannelView(layer, c, tops[c], patches, projected, inside)
            start += count

    def project(self, layer: str, keys: list[tuple[int, TopUnit]], rule: str):
        """Projection ``Tensor[3, h, w]`` of each ``(channel, unit)`` by ``rule``, cut to its
        field (zero outside the image): the input gradient of the unit's activation with
        the rule at every rectifier (`gradients`)."""
        found = self.gradients(layer, keys, rule)
        return [
            padded_crop(grad, unit.box, 0.0) for (_, unit), grad in zip(keys, found, strict=True)
        ]

    def gradients(self, layer: str, keys: list[tuple[int, TopUnit]], rule: str):
        """Uncropped input gradient ``Tensor[3, H, W]`` (CPU) of each ``(channel, unit)``'s
        activation by ``rule``, in the order of ``keys``: one forward pass per distinct
        image, one backward pass per unit (`unit_gradients`)."""
        found: list[torch.Tensor | None] = [None] * len(keys)
        by_image: dict[int, list[int]] = {}
        for row, (_, unit) in enumerate(keys):
            by_image.setdefault(unit.index, []).append(row)
        with placed_on(self.module, self.device) as device:
            with (
                borrowed_model(self.module),
                backward_rule(self.module, rule, reused=True) as session,
            ):
                for index, rows in by_image.items():
                    image = self.cache(index)[1].to(device)
                    units = [(keys[r][0], keys[r][1].y, keys[r][1].x) for r in rows]
                    grads = unit_gradients(self.module, layer, image, units)
                    for row, grad in zip(rows, grads, strict=True):
                        found[row] = grad
        if keys:
            session.require_rectifiers(f"cannot project top units with {rule}")
        return found


def unit_gradients(
    module: nn.Module, layer: str, image: torch.Tensor, units: list[tuple[int, int, int]]
) -> list[torch.Tensor]:
    """Input gradient ``Tensor[3, H, W]`` (CPU) of the activation of each ``(channel, y,
    x)`` of ``layer`` for one image ``Tensor[3, H, W]``, under whatever backward rule is
    active: one forward pass, then one backward pass per unit through the same graph
    (kept between them). Plain backward passes, because on CPU a loop of them costs about
    half of one batched backward (``is_grads_batched``) of the same units, whose
    depthwise-convolution batching concatenates per-row results. The input is laid out
    channels-last, which the convolutions propagate (the weights are not touched): the same
    values, with about a tenth less time per unit on CPU. The forward pass runs inside
    `input_gradient_forward` and its batch-norm scales are folded into their convolutions
    (`fold_batch_norm_scales`), so each backward pass computes the input gradient alone;
    under ``backward_rule(..., reused=True)`` each guided rectifier costs one kernel."""
    inputs = image[None].detach().clone(memory_format=torch.channels_last).requires_grad_(True)
    with capture(module, layer, gradients=True, reshape=None) as cap:
        input_gradient_forward(lambda: run_until(module, [layer], inputs))
        activation = connected_grid(module, layer, cap.activation(layer))
    fold_batch_norm_scales(activation)
    found = []
    for number, (channel, y, x) in enumerate(units, 1):
        (gradient,) = torch.autograd.grad(
            activation[0, channel, y, x], inputs, retain_graph=number < len(units)
        )
        found.append(gradient[0].detach().cpu().contiguous())
    return found
