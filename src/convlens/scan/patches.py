"""Patches and projections of top units: the exact receptive-field crop of each unit's
preprocessed image (grey `PAD_VALUE` where the field leaves the image) and its deconvnet or
guided-backprop projection (`convlens.layers.rules`), cut the same way (zero outside)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from convlens.data.datasets import ScanDataset
from convlens.errors import DataError, ImageLoadError, LayerError
from convlens.layers import Field, borrowed_model, capture, layer_table
from convlens.layers.rules import backward_rule
from convlens.scan.distributed import gather_objects, rank_and_world

PAD_VALUE = 128  # grey display pixels where a receptive field reaches outside the image


@dataclass(frozen=True)
class TopUnit:
    """One of a channel's top k: item ``index`` (named ``source``), its ``value``, the
    unit's position ``(y, x)`` in the layer's output, ``box`` ``(x0, y0, x1, y1)`` (x1/y1
    exclusive) its receptive field in the preprocessed input (may reach outside it),
    ``patch`` ``uint8[y1 - y0, x1 - x0, 3]`` and ``projections`` (rule -> ``Tensor[3,
    y1 - y0, x1 - x0]``)."""

    index: int
    source: str
    value: float
    y: int
    x: int
    box: tuple[int, int, int, int]
    patch: np.ndarray | None = None
    projections: dict[str, torch.Tensor] = field(default_factory=dict)


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


def attach_patches(
    module: nn.Module,
    dataset: ScanDataset,
    units: dict[str, list[list[TopUnit]]],
    rules: Sequence[str],
    device: torch.device,
    batch_size: int,
) -> dict[str, list[list[TopUnit]]]:
    """Every unit with its patch and projections; under torchrun each rank computes every
    N-th unit and the pieces are gathered."""
    rank, world = rank_and_world()
    flat = [
        (name, c, j)
        for name, chans in units.items()
        for c, us in enumerate(chans)
        for j in range(len(us))
    ]
    mine = flat[rank::world]
    cache = DisplayCache(dataset)
    pieces: dict[tuple[str, int, int], tuple[np.ndarray, dict]] = {}
    for key in mine:
        name, c, j = key
        unit = units[name][c][j]
        display, _ = cache(unit.index)
        patch = padded_crop(torch.from_numpy(display).permute(2, 0, 1), unit.box, PAD_VALUE)
        pieces[key] = (patch.permute(1, 2, 0).numpy(), {})
    for rule in rules:
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            _project_chunk(module, units, chunk, rule, cache, device, pieces)
    merged = {}
    for part in gather_objects(pieces):
        merged.update(part)
    return {
        name: [
            [_with_pieces(unit, merged[(name, c, j)]) for j, unit in enumerate(us)]
            for c, us in enumerate(chans)
        ]
        for name, chans in units.items()
    }


def _with_pieces(unit: TopUnit, piece: tuple[np.ndarray, dict]) -> TopUnit:
    patch, projections = piece
    return TopUnit(
        unit.index, unit.source, unit.value, unit.y, unit.x, unit.box, patch, projections
    )


def _project_chunk(module, units, chunk, rule, cache, device, pieces) -> None:
    """Projections of the units in ``chunk`` (one image copy each, one backward pass)."""
    by_layer: dict[str, list] = {}
    for key in chunk:
        by_layer.setdefault(key[0], []).append(key)
    for name, keys in by_layer.items():
        chosen = [units[name][c][j] for name, c, j in keys]
        images = torch.stack([cache(unit.index)[1] for unit in chosen]).to(device)
        inputs = images.requires_grad_(True)
        rows = torch.arange(len(keys), device=device)
        channels = torch.tensor([c for _, c, _ in keys], device=device)
        ys = torch.tensor([unit.y for unit in chosen], device=device)
        xs = torch.tensor([unit.x for unit in chosen], device=device)
        with borrowed_model(module), backward_rule(module, rule) as session:
            with capture(module, name, gradients=True) as cap:
                module(inputs)
                picked = cap.activation(name)[rows, channels, ys, xs]
                (gradient,) = torch.autograd.grad(picked.sum(), inputs)
        session.require_rectifiers(f"cannot project top units with {rule}")
        for key, unit, grad in zip(keys, chosen, gradient.detach().cpu(), strict=True):
            pieces[key][1][rule] = padded_crop(grad, unit.box, 0.0)
