"""The dataset patches that excite each channel most (Zeiler & Fergus 2014, figure 2).

`top_activating` makes one streaming pass over a dataset for every channel of every
requested layer at once. Per channel it keeps k ``(value, image, position)`` triples, one
per image: an image's value is its largest activation of the channel (``by="max"``, at the
first position in row-major order that reaches it) or its mean over positions
(``by="mean"``; the position of its maximum is kept for the patch). Ranking is by value,
larger first, ties to the lower image index; memory is O(layers x channels x k).

Then each kept unit's patch is cut from the exact receptive field
(`convlens.layers.receptive`) of the preprocessed image, padded with grey
(`convlens.scan.patches.PAD_VALUE`) where the field leaves the image, and a second pass
over only the kept images computes each unit's deconvnet and guided-backprop projection
(`convlens.layers.rules`), cut the same way (zero outside the image). The second pass runs
on demand, a batch of units at a time (`TopActivations.channel_views`): a late layer's
field can be several times the image, and k patches of every channel would not fit in
memory at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from convlens.data.datasets import open_dataset
from convlens.errors import DataError, LayerError, MethodError
from convlens.features.activations import stage_layers
from convlens.layers import Field, capture, resolve_layer
from convlens.layers.rules import RULES
from convlens.models.devices import placed_on
from convlens.models.loading import LoadedModel, load_model
from convlens.scan.patches import (
    ChannelView,
    TopUnit,
    UnitViews,
    field_box,
    first_readable,
    layer_fields,
)
from convlens.scan.stream import RunOptions, stream_pass

BY = ("max", "mean")
DEFAULT_STAGES = 3  # stages a scan covers when no layer is named


@dataclass(frozen=True)
class LayerTop:
    """A layer's result: ``channels[c]`` lists channel c's top units, best first (fewer
    than k when the dataset has fewer readable images)."""

    layer: str
    k: int
    by: str
    field: Field
    channels: list[list[TopUnit]]


@dataclass(frozen=True)
class TopActivations:
    """``layers`` by name, in the order asked; ``scanned`` images; ``errors``: (source,
    message) of every item that could not be read and was skipped; ``views``: the second
    pass (patches and projections), run on demand by `patches`, `projections` and
    `channel_views` so that memory stays at one batch of units."""

    layers: dict[str, LayerTop]
    scanned: int
    errors: list[tuple[str, str]]
    views: UnitViews

    def patches(self, layer: str, channel: int) -> list[np.ndarray]:
        """``uint8[y1 - y0, x1 - x0, 3]`` receptive-field patch of each of the channel's top
        units (grey where the field leaves the image)."""
        return [self.views.patch(unit) for unit in self.layers[layer].channels[channel]]

    def projections(self, layer: str, channel: int, rule: str = "deconvnet"):
        """``Tensor[3, y1 - y0, x1 - x0]`` projection (``"deconvnet"`` or ``"guided"``) of
        each of the channel's top units, cut like its patch (zero outside the image)."""
        units = self.layers[layer].channels[channel]
        return self.views.project(layer, [(channel, unit) for unit in units], rule)

    def channel_views(self, layer: str, channels=None) -> Iterator[ChannelView]:
        """Patches and projections (the rules given to `top_activating`) of ``channels``
        (default: all) of ``layer``, one `ChannelView` at a time."""
        tops = self.layers[layer].channels
        chosen = range(len(tops)) if channels is None else channels
        return self.views.channels(layer, tops, chosen)

    def picture(
        self, layer: str | None = None, channels: Sequence[int] | int = 4, tile: int = 48
    ) -> np.ndarray:
        """``uint8[H, W, 3]``: Zeiler & Fergus's top-k patch grid of ``channels`` (indices,
        or a count from channel 0) of ``layer`` (default: every scanned layer), one panel
        per channel (`convlens.render.scans.top_units_panel`, patches only: no second
        pass), stacked. What a notebook shows for a scan (`_repr_png_`)."""
        from convlens.render.images import stacked
        from convlens.render.scans import top_units_panel

        panels = []
        for name in [layer] if layer is not None else list(self.layers):
            top = self.layers[name]
            chosen = (
                range(min(channels, len(top.channels))) if isinstance(channels, int) else channels
            )
            for c in chosen:
                if top.channels[c]:
                    title = f"{name} channel {c}: top {len(top.channels[c])} by {top.by}"
                    panels.append(top_units_panel(self.patches(name, c), None, title, tile))
        if not panels:
            raise DataError("the scan kept no unit to draw (no readable image)")
        return stacked(panels)

    def _repr_png_(self) -> bytes:
        """PNG bytes of `picture` with its defaults."""
        from convlens.render.images import png_bytes

        return png_bytes(self.picture())


def merge_top(
    values: torch.Tensor, images: torch.Tensor, positions: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of ``Tensor[C, M]`` candidates, the k best: larger value first, ties to the
    lower image index (NaN counts as -inf). Returns three ``Tensor[C, min(k, M)]``."""
    values = values.masked_fill(values.isnan(), -torch.inf)  # -inf itself stays -inf
    order = torch.argsort(images, dim=1, stable=True)
    values, images, positions = (t.gather(1, order) for t in (values, images, positions))
    order = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    return tuple(t.gather(1, order) for t in (values, images, positions))


class TopUnitsReducer:
    """Streaming top-k per channel of each layer (see `stream_pass` for the protocol)."""

    def __init__(self, k: int, by: str) -> None:
        self.k, self.by = k, by
        self.tops: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def update(self, indices: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        for name, output in outputs.items():
            flat = output.detach().flatten(2).float()  # [B, C, h * w]
            peak, where = flat.max(dim=2)
            value = peak if self.by == "max" else flat.mean(dim=2)
            images = indices.view(-1, 1).expand_as(value)
            self._add(name, value.T.cpu(), images.T.contiguous(), where.T.cpu())

    def _add(self, name: str, values, images, positions) -> None:
        if name in self.tops:
            old = self.tops[name]
            values, images, positions = (
                torch.cat([a, b], dim=1)
                for a, b in zip(old, (values, images, positions), strict=True)
            )
        self.tops[name] = merge_top(values, images, positions, self.k)

    def state_dict(self) -> dict:
        return {"tops": {name: tuple(t.clone() for t in top) for name, top in self.tops.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.tops = {name: tuple(top) for name, top in state["tops"].items()}

    def merge(self, states: list[dict]) -> None:
        for state in states:
            for name, top in state["tops"].items():
                self._add(name, *top)


def check_settings(k: int, by: str, rules: Sequence[str]) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"k (patches per channel) must be an integer >= 1, got {k!r}")
    if by not in BY:
        raise DataError(f"by must be one of {', '.join(BY)}, got {by!r}")
    unknown = [rule for rule in rules if rule not in RULES]
    if unknown:
        raise MethodError(f"unknown projection rule(s) {unknown}; use {', '.join(RULES)} or none")


def resolve_layers(module: nn.Module, layers) -> list[str]:
    specs = layers if isinstance(layers, (list, tuple)) else [layers]
    if not specs:
        raise LayerError("pass at least one layer (or layers=None for the default stages)")
    names = [resolve_layer(module, spec)[0] for spec in specs]
    return list(dict.fromkeys(names))


def representative_stages(stages: Sequence[str], count: int = DEFAULT_STAGES) -> list[str]:
    """``count`` of a network's stages (`convlens.features.stage_layers`, in forward order)
    for a default scan: with at least ``count + 2`` stages the first and the last are left
    out (the stem, whose fields are a few pixels, and the head, usually the widest
    layer: EfficientNet-Lite0's ``bn2`` has 1,280 channels), then the middle stage of each
    of ``count`` equal parts of the rest. EfficientNet-Lite0: ``blocks.1``, ``blocks.3``,
    ``blocks.5``."""
    stages = list(stages)
    if len(stages) <= count:
        return stages
    inner = stages[1:-1] if len(stages) > count + 1 else stages
    return [inner[(2 * part + 1) * len(inner) // (2 * count)] for part in range(count)]


def capture_layers(names: list[str]):
    """``open_capture`` for `stream_pass`: the outputs of ``names``."""
    return partial(_capture_outputs, names=names)


def _capture_outputs(module: nn.Module, names: list[str]):
    return capture(module, names)


def units_of(tops: dict, geometry: dict, sources: list[str]) -> dict[str, list[list[TopUnit]]]:
    """The merged top-k tensors as `TopUnit` lists (no patches yet), per layer and channel."""
    result = {}
    for name, (values, images, positions) in tops.items():
        field, (_, width) = geometry[name]
        channels = []
        for c in range(values.shape[0]):
            units = []
            for value, image, flat in zip(
                values[c].tolist(), images[c].tolist(), positions[c].tolist(), strict=True
            ):
                y, x = divmod(flat, width)
                box = field_box(field, y, x)
                units.append(TopUnit(image, sources[image], value, y, x, box))
            channels.append(units)
        result[name] = channels
    return result


def top_activating(
    model: nn.Module | LoadedModel | str,
    data,
    layers=None,
    k: int = 9,
    by: str = "max",
    *,
    projections: Sequence[str] = ("deconvnet", "guided"),
    device: str | torch.device | None = None,
    batch_size: int = 32,
    workers: int = 0,
    checkpoint=None,
    save_every: int = 50,
    resume: bool = False,
    progress: bool = False,
    on_batch=None,
) -> TopActivations:
    """The k images that excite each channel of each of ``layers`` most, with patches.

    Args:
        model: a network (module, `LoadedModel` or name); its preprocessing reads ``data``.
        data: anything `convlens.data.datasets.open_dataset` takes (folder, ImageFolder
            tree, ``.txt`` list, ``"shapes:N"``, a ``Dataset``).
        layers: layer names/indices/modules with ``[B, C, h, w]`` outputs (default: a few
            representative stages, `representative_stages`).
        k: patches per channel, each from a different image. by: ``"max"`` or ``"mean"``.
        projections: rules for the second pass (``"deconvnet"``, ``"guided"``; ``()`` none).
        device: where to run (default: where the model is); the model is moved there for
            the call and back after it.
        batch_size, workers: the ``DataLoader``'s. checkpoint, save_every, resume: save the
            state every ``save_every`` batches under ``checkpoint`` and continue from it.
        progress: a tqdm bar with images/s (rank 0). on_batch: called after each batch.

    Under ``torchrun`` (process group open) each rank scans every N-th item and the results
    merge exactly. Returns `TopActivations`; unreadable items are in ``errors``.

    Example:
        >>> top = top_activating("synthetic-shapes", "shapes:8", ["features.5"], k=2)
        >>> len(top.layers["features.5"].channels), len(top.layers["features.5"].channels[0])
        (32, 2)
    """
    check_settings(k, by, projections)
    loaded = load_model(model)
    module = loaded.module
    dataset = open_dataset(data, loaded.preprocess)
    with placed_on(module, device) as run_device:
        sample = first_readable(dataset).to(run_device)
        names = (
            representative_stages(stage_layers(module, sample[0]))
            if layers is None
            else resolve_layers(module, layers)
        )
        geometry = layer_fields(module, names, sample)
        reducer = TopUnitsReducer(k, by)
        options = RunOptions(
            run_device, batch_size, workers, checkpoint, save_every, resume, progress, on_batch
        )
        settings = _settings(names, k, by, batch_size)
        run = stream_pass(module, dataset, capture_layers(names), reducer, options, settings)
        units = units_of(reducer.tops, geometry, dataset.sources)
    return TopActivations(
        {name: LayerTop(name, k, by, geometry[name][0], units[name]) for name in names},
        run.scanned,
        [(dataset.sources[index], message) for index, message in run.errors],
        UnitViews(module, dataset, projections, device, batch_size),
    )


def _settings(names, k, by, batch_size) -> dict:
    """The options that change a top-k pass's results (its resume fingerprint)."""
    return {
        "kind": "top_activating",
        "layers": list(names),
        "k": k,
        "by": by,
        "batch_size": batch_size,
    }
