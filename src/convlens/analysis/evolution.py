"""Feature evolution during training (Zeiler & Fergus 2014, figure 4): for each saved epoch,
each chosen channel's strongest activation over a fixed image set, projected back to pixels.

Each epoch's model is scanned with `convlens.scan.top_activating` (k = 1: the single
strongest unit of each channel over the set) and that unit is projected to pixels with the
deconvnet (or guided-backprop) rule, cut to its receptive field. The channels shown are the
same at every epoch: by default the ``count`` channels whose strongest activation is largest
in the last epoch.

``convlens train head ... --keep-epochs`` writes the per-epoch files
(``OUT/epochs/epoch-NNN.pt``, epoch 0 = the initial weights) that `epoch_files` lists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convlens.analysis.data import analysis_dataset
from convlens.errors import DataError
from convlens.layers.find import LayerSpec
from convlens.models.loading import LoadedModel, load_model
from convlens.scan.topk import top_activating

_EPOCH_FILE = re.compile(r"epoch-(\d+)\.pt$")


def epoch_files(folder: str | Path) -> list[Path]:
    """The per-epoch model files of a training folder (``folder/epochs/epoch-NNN.pt``, or
    ``folder/epoch-NNN.pt``), in epoch order; `DataError` when there are none."""
    root = Path(folder)
    for place in (root / "epochs", root):
        files = sorted(
            (p for p in place.glob("epoch-*.pt") if _EPOCH_FILE.search(p.name)),
            key=lambda p: int(_EPOCH_FILE.search(p.name).group(1)),
        )
        if files:
            return files
    raise DataError(
        f"{root} holds no epoch-NNN.pt files; train with 'convlens train head ... "
        "--keep-epochs --out DIR' and pass DIR (or pass model files one by one)"
    )


def epoch_label(source: str | Path) -> str:
    """``"epoch 3"`` for ``.../epoch-003.pt``; otherwise the file or model name."""
    match = _EPOCH_FILE.search(str(source))
    return f"epoch {int(match.group(1))}" if match else Path(str(source)).stem


@dataclass(frozen=True)
class FeatureEvolution:
    """``columns`` (one label per model/epoch) x ``rows`` ((layer, channel) pairs):
    ``values`` ``Tensor[E, R]`` the strongest activation, ``sources`` ``[E][R]`` the image
    it came from, ``patches`` ``[E][R]`` ``uint8[h, w, 3]`` its receptive-field patch and
    ``projections`` ``[E][R]`` ``Tensor[3, h, w]`` (empty lists when ``rule`` is None),
    ``inside`` ``[E][R]`` the part ``(x0, y0, x1, y1)`` of each patch within its image;
    ``skipped``: (source, reason) of every data file left out because it could not be read."""

    columns: list[str]
    rows: list[tuple[str, int]]
    rule: str | None
    values: torch.Tensor
    sources: list[list[str]]
    patches: list[list[np.ndarray]]
    projections: list[list[torch.Tensor]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    inside: list[list[tuple[int, int, int, int]]] = field(default_factory=list)

    def record(self) -> dict:
        """JSON-ready: per row, its strongest activation and image at each column."""
        return {
            "columns": self.columns,
            "rule": self.rule,
            "rows": [
                {
                    "layer": layer,
                    "channel": channel,
                    "values": self.values[:, r].tolist(),
                    "sources": [column[r] for column in self.sources],
                }
                for r, (layer, channel) in enumerate(self.rows)
            ],
        }


def feature_evolution(
    models: Sequence[str | Path | nn.Module | LoadedModel],
    data,
    layers: Sequence[LayerSpec],
    *,
    channels: Sequence[int] | None = None,
    count: int = 4,
    rule: str | None = "deconvnet",
    columns: Sequence[str] | None = None,
    batch_size: int = 32,
) -> FeatureEvolution:
    """The strongest unit of each chosen channel of ``layers`` in each of ``models`` (the
    same network at successive epochs, e.g. `epoch_files`), over ``data`` (anything
    `convlens.analysis.data.analysis_dataset` reads: ``"shapes-test:N"``, ``"photos"``, a
    folder; read with the first model's preprocessing).

    Args:
        channels: the channel indices shown for every layer; default the ``count`` channels
            whose strongest activation is largest in the last model (per layer).
        rule: ``"deconvnet"`` or ``"guided"`` projections, or None (patches only).
        columns: a label per model (default: ``"epoch N"`` from ``epoch-NNN.pt`` names).

    Example:
        >>> # epoch_files("run") of a `convlens train head --keep-epochs` run; here the
        >>> # shipped model twice, as two "epochs" of one network:
        >>> runs = ["synthetic-shapes"] * 2
        >>> evo = feature_evolution(runs, "shapes-test:8", ["features.2"], count=2)
        >>> evo.values.shape  # [epochs, rows]
        torch.Size([2, 2])
    """
    if not models:
        raise DataError("pass at least one model (the epochs to compare)")
    if not layers:
        raise DataError("pass at least one layer whose channels to follow")
    if count < 1:
        raise DataError(f"count (channels per layer) must be >= 1, got {count}")
    loaded = [load_model(model) for model in models]
    labels = (
        list(columns)
        if columns is not None
        else [_label(m, lm) for m, lm in zip(models, loaded, strict=True)]
    )
    if len(labels) != len(loaded):
        raise DataError(f"{len(labels)} column labels for {len(loaded)} models")
    dataset = analysis_dataset(data, loaded[0].preprocess)
    rules = () if rule is None else (rule,)
    tops = [
        top_activating(model, dataset, list(layers), k=1, projections=rules, batch_size=batch_size)
        for model in loaded
    ]
    rows = [
        (name, channel)
        for name, layer_top in tops[-1].layers.items()
        for channel in _chosen(layer_top.channels, channels, count)
    ]
    return _collect(tops, rows, labels, rule)


def _label(model, loaded: LoadedModel) -> str:
    return epoch_label(model) if isinstance(model, (str, Path)) else loaded.name


def _chosen(units, channels: Sequence[int] | None, count: int) -> list[int]:
    """The given channels (checked), or the ``count`` with the largest top value."""
    if channels is not None:
        bad = [c for c in channels if not 0 <= c < len(units)]
        if bad:
            raise DataError(f"channels {bad} outside 0 .. {len(units) - 1}")
        return list(channels)
    values = torch.tensor([found[0].value if found else -torch.inf for found in units])
    return torch.argsort(values, descending=True, stable=True)[:count].tolist()


def _collect(tops, rows, labels, rule) -> FeatureEvolution:
    values, sources, patches, projections, inside = [], [], [], [], []
    for top in tops:
        views = {
            (layer, view.channel): view
            for layer in dict.fromkeys(layer for layer, _ in rows)
            for view in top.channel_views(layer, [c for name, c in rows if name == layer])
        }
        picked = [views[row] for row in rows]
        values.append([view.units[0].value for view in picked])
        sources.append([view.units[0].source for view in picked])
        patches.append([view.patches[0] for view in picked])
        inside.append([view.inside[0] for view in picked])
        projections.append([view.projections[rule][0] for view in picked] if rule else [])
    values = torch.tensor(values)
    skipped = list(tops[0].errors)  # every model read the same data
    return FeatureEvolution(
        labels, rows, rule, values, sources, patches, projections, skipped, inside
    )
