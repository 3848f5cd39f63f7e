"""Attribution maps of a whole dataset, streamed to float16 shards.

`attribute_dataset` runs one registered method (`convlens.attribution.explain`) over every
readable item of a dataset, batch by batch, and writes each map at ``size x size`` pixels
into ``.npy`` shards under ``out/maps/``, beside ``out/index.json``. Memory stays flat in
the dataset's size: a shard is written as soon as it holds ``shard_rows`` maps (and at
every state save), so only one shard's maps and a few numbers per item are kept.

Each stored map is the method's raw map, resized (area average when it shrinks, bilinear
when it grows), divided by its largest absolute value and stored as float16 in [-1, 1];
``index.json`` keeps that ``scale`` per row, so ``stored * scale`` is the resized raw map
(float16 alone would flush the small raw values of gradient maps to zero).

Channel relevances: when the method hands back per-row extras ``"channel_relevance"``
``Tensor[N, K]`` (`convlens.attribution.lrp.lrp` with the option ``relevance_layer=LAYER``:
LRP's relevance at that layer summed over space, one value per channel), they are stored
too, float32, in ``out/channels/`` shards named and ordered as the map shards (row ``r`` of
``channels/X.npy`` belongs to row ``r`` of ``maps/X.npy``); `load_attributions` reads them
into ``Attributions.channels``. They are what `convlens.spray` clusters with
``features="channels"``.

The pass is `convlens.scan.stream.stream_batches`: sharded under ``torchrun`` (rank r
attributes items r, r + N, ...; each rank writes its own shards, named by rank), saved
every ``save_every`` batches and resumed with ``resume``. `load_attributions` reads the
maps back in item order, the same whatever the number of processes that wrote them.

``index.json``: ``{"method", "layer", "target", "model", "data", "size", "count",
"channel_layer", "channels", "channel_pool",
"shards": [file, ...], "rows": [{"source", "label", "class", "class_name", "score",
"scale", "shard", "row"}, ...], "skipped": [{"source", "message"}]}``, rows in item order;
``class`` is the explained class (its name in ``class_name`` when the model has labels),
``score`` its score on the unmodified image, ``label`` the dataset's label (-1 without);
``channel_layer`` the layer of the stored channel relevances, ``channels`` their count
K (None and 0 without) and ``channel_pool`` how each was pooled over space (lrp's
``relevance_pool``: ``"sum"`` or ``"peak"``; None without).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from convlens.attribution.explain import check_method_options, explain
from convlens.attribution.methods import get_method
from convlens.data.datasets import open_dataset
from convlens.errors import DataError, TargetError
from convlens.files import atomic_file, keep_output, owned, write_json
from convlens.maps import full_precision, resize_maps
from convlens.models.devices import placed_on
from convlens.models.loading import LoadedModel, load_model
from convlens.scan.distributed import rank_and_world
from convlens.scan.stream import RunOptions, stream_batches
from convlens.targets import parse_target

INDEX_FILE = "index.json"
MAPS_FOLDER = "maps"
CHANNELS_FOLDER = "channels"
CHANNEL_EXTRA = "channel_relevance"
DEFAULT_SIZE = 56
DEFAULT_SHARD_ROWS = 1024
LABEL_TARGET = "label"


@dataclass(frozen=True)
class Attributions:
    """A dataset's maps read back by `load_attributions`: ``maps`` ``Tensor[N, S, S]``
    float32 (the resized raw maps: stored value times scale), ``rows`` the index's rows
    (item order), ``index`` the whole ``index.json`` document, ``channels`` the channel
    relevances ``Tensor[N, K]`` float32 (None when the pass stored none)."""

    maps: torch.Tensor
    rows: list[dict]
    index: dict
    channels: torch.Tensor | None = None


def shrink_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """``Tensor[N, H, W]`` to ``Tensor[N, size, size]``: the mean over each output cell's
    share of the map when it shrinks (every input pixel counts once, where bilinear
    sampling would skip most of them), bilinear (`convlens.maps.resize_maps`) otherwise."""
    maps = full_precision(maps)
    if maps.shape[-2] >= size and maps.shape[-1] >= size:
        return F.adaptive_avg_pool2d(maps[:, None], size)[:, 0]
    return resize_maps(maps, (size, size))


class _ShardWriter:
    """The reducer of an attribution pass: buffers this rank's maps and writes them as a
    shard when ``shard_rows`` are buffered or when its state is taken (so a saved state
    only ever names maps that are on disk). Its state is one small record per item."""

    def __init__(self, out: Path, size: int, shard_rows: int) -> None:
        rank, world = rank_and_world()
        self.out, self.size, self.shard_rows = out, size, shard_rows
        self.prefix = f"r{rank}of{world}"
        self.records: list[tuple] = []  # (item, class, score, scale, shard, row)
        self.shards: list[str] = []
        self.buffer: list[torch.Tensor] = []
        self.channel_buffer: list[torch.Tensor] = []
        self.pending: list[tuple] = []

    def add(
        self,
        items: list[int],
        maps: torch.Tensor,
        classes: list,
        scores: list,
        channels: torch.Tensor | None = None,
    ) -> None:
        """Buffer a batch: ``maps`` ``Tensor[B, S, S]``, ``channels`` ``Tensor[B, K]`` or
        None (the same for every batch of a pass)."""
        flat = maps.flatten(1).abs().amax(1)
        scales = torch.where(flat > 0, flat, torch.ones_like(flat))
        self.buffer.append((maps / scales[:, None, None]).half().cpu())
        if channels is not None:
            self.channel_buffer.append(channels.detach().float().cpu())
        for item, c, s, scale in zip(items, classes, scores, flat.tolist(), strict=True):
            self.pending.append((item, c, s, scale))
        if len(self.pending) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"{self.prefix}-{len(self.shards):05d}.npy"
        if self.channel_buffer:  # first, so a map shard on disk always has its channels
            with atomic_file(self.out / CHANNELS_FOLDER / name) as handle:
                np.save(handle, torch.cat(self.channel_buffer).numpy())
        with atomic_file(self.out / MAPS_FOLDER / name) as handle:
            np.save(handle, torch.cat(self.buffer).numpy())
        self.shards.append(name)
        for row, (item, c, s, scale) in enumerate(self.pending):
            self.records.append((item, c, s, scale, name, row))
        self.buffer, self.channel_buffer, self.pending = [], [], []

    # the state of `stream_batches` (the maps come through `add`, not ``update``)
    def state_dict(self) -> dict:
        self.flush()
        return {"records": list(self.records), "shards": list(self.shards)}

    def load_state_dict(self, state: dict) -> None:
        self.records = [tuple(record) for record in state["records"]]
        self.shards = list(state["shards"])
        for name in self.shards:  # an unchanged shard of the stopped run is this run's
            for path in shard_paths(self.out, name):
                if not owned(path):
                    raise DataError(
                        f"cannot resume: {path} is missing or was changed since the state was "
                        "saved; start over with --restart (resume=False in Python)"
                    )
                keep_output(path)

    def merge(self, states: list[dict]) -> None:
        self.flush()
        for state in states:
            self.records.extend(tuple(record) for record in state["records"])
            self.shards.extend(state["shards"])


def shard_paths(out: Path, name: str) -> list[Path]:
    """The files of shard ``name``: its maps, and its channel relevances when they exist."""
    channels = out / CHANNELS_FOLDER / name
    return [out / MAPS_FOLDER / name, *([channels] if channels.exists() else [])]


def _check_target(target: object) -> None:
    text = str(target).strip().lower()
    if text.startswith("top") and text[3:].isdigit() and int(text[3:]) > 1:
        raise TargetError(
            f"target {target!r} gives {text[3:]} maps per image; a dataset pass stores one map "
            "per image: pass top1, a class, a contrast A-B or 'label'"
        )


def attribute_dataset(
    model: torch.nn.Module | LoadedModel | str,
    data,
    out: str | Path,
    method: str = "gradcam",
    target: object = None,
    layer=None,
    *,
    size: int = DEFAULT_SIZE,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    options: dict | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    workers: int = 0,
    checkpoint=None,
    save_every: int = 50,
    resume: bool = False,
    progress: bool = False,
    on_batch=None,
) -> dict:
    """Attribute every readable item of ``data`` (see `convlens.data.datasets.open_dataset`)
    with ``method`` and write the maps under ``out`` (module docstring). Returns the
    ``index.json`` document (written by rank 0 under torchrun).

    ``target``: as in `explain` (a class id or name, ``top1`` (default), a contrast, one
    per image), or ``"label"``: each item's label in the dataset (an ImageFolder tree,
    ``shapes:N``). ``size``: the side of the stored maps in pixels (default 56).
    ``shard_rows``: maps per shard file. ``options``: the method's keyword options
    (``{"relevance_layer": LAYER}`` with ``lrp`` stores each item's channel relevances
    too; module docstring). The run options are those of `convlens.scan.top_activating`.

    Example:
        >>> import tempfile
        >>> index = attribute_dataset("synthetic-shapes", "shapes:4", tempfile.mkdtemp(),
        ...                           "gradcam", size=8)
        >>> len(index["rows"]), index["size"]
        (4, 8)
    """
    if size < 1 or shard_rows < 1:
        raise DataError(f"size and shard_rows must be >= 1, got {size} and {shard_rows}")
    options = dict(options or {})
    info = get_method(method)
    check_method_options(info, options, layer)
    loaded = load_model(model)
    dataset = open_dataset(data, loaded.preprocess)
    by_label = isinstance(target, str) and target.strip().lower() == LABEL_TARGET
    if by_label and dataset.classes is None and dataset.label(0) < 0:
        raise TargetError(
            f"target 'label' needs a dataset with labels (an ImageFolder tree or shapes:N); "
            f"{data} has none: pass a class or top1"
        )
    if isinstance(target, str) and not by_label:
        target = parse_target(target, loaded.labels)
    _check_target(target)
    out = Path(out)
    writer = _ShardWriter(out, size, shard_rows)
    settings = {
        "kind": "attribute",
        "method": method,
        "layer": None if layer is None else str(layer),
        "target": str(target),
        "options": {k: repr(v) for k, v in sorted(options.items())},
        "size": size,
        "shard_rows": shard_rows,
        "batch_size": batch_size,
    }
    layer_used: list[str | None] = [None]
    widths = [0]  # channel relevances per row (0: none)

    def step(indices: torch.Tensor, images: torch.Tensor) -> None:
        items = indices.tolist()
        wanted = [dataset.label(i) for i in items] if by_label else target
        result = explain(loaded, images, method, wanted, layer, **options)
        layer_used[0] = result.layer
        classes = [None] * len(items) if result.class_ids is None else result.class_ids.tolist()
        channels = result.extras.get(CHANNEL_EXTRA)
        writer.add(items, shrink_maps(result.maps, size), classes, result.scores.tolist(), channels)
        widths[0] = 0 if channels is None else channels.shape[1]

    with placed_on(loaded.module, device) as run_device:
        run_options = RunOptions(
            run_device, batch_size, workers, checkpoint, save_every, resume, progress, on_batch
        )
        run = stream_batches(loaded.module, dataset, step, writer, run_options, settings)
    records = sorted(writer.records)
    rows = [
        {
            "source": dataset.sources[item],
            "label": dataset.label(item),
            "class": c,
            "class_name": None if c is None or not loaded.labels else loaded.label(c),
            "score": score,
            "scale": scale,
            "shard": shard,
            "row": row,
        }
        for item, c, score, scale, shard, row in records
    ]
    index = {
        "method": method,
        "layer": layer_used[0] if info.uses_layer else None,
        "target": LABEL_TARGET if by_label else str(target if target is not None else "top1"),
        "model": loaded.name,
        "data": str(data) if isinstance(data, (str, Path)) else None,
        "size": size,
        "count": len(rows),
        "channel_layer": _channel_layer(options, widths[0]),
        "channels": widths[0],
        "channel_pool": (options.get("relevance_pool") or "sum") if widths[0] else None,
        "shards": sorted({row["shard"] for row in rows}),
        "rows": rows,
        "skipped": [{"source": dataset.sources[i], "message": m} for i, m in run.errors],
    }
    rank, _ = rank_and_world()
    if rank == 0:
        for shard in index["shards"]:
            for path in shard_paths(out, shard):
                keep_output(path)
        write_json(out / INDEX_FILE, index, indent=1)
    return index


def _channel_layer(options: dict, width: int) -> str | None:
    layer = options.get("relevance_layer")
    return None if layer is None or not width else str(layer)


def load_attributions(folder: str | Path) -> Attributions:
    """The maps of a folder written by `attribute_dataset`, in item order: ``Tensor[N, S,
    S]`` float32 (stored value times the row's scale), and its channel relevances
    ``Tensor[N, K]`` when it stored them. `DataError` naming the fix when the folder holds
    no such output or a shard is missing."""
    folder = Path(folder)
    path = folder / INDEX_FILE
    try:
        index = json.loads(path.read_text())
        rows, size = index["rows"], int(index["size"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(
            f"{path} is not the index of 'convlens attribute DATA --out {folder}' "
            f"({type(error).__name__}); run that command first"
        ) from None
    width = int(index.get("channels") or 0)
    shards, channel_shards = {}, {}
    for name in index["shards"]:
        shards[name] = _read_shard(folder, MAPS_FOLDER, name)
        if width:
            channel_shards[name] = _read_shard(folder, CHANNELS_FOLDER, name)
    maps = torch.zeros(len(rows), size, size)
    for i, row in enumerate(rows):
        maps[i] = shards[row["shard"]][row["row"]].float() * row["scale"]
    channels = None
    if width:
        channels = torch.stack([channel_shards[r["shard"]][r["row"]].float() for r in rows])
    return Attributions(maps, rows, index, channels)


def _read_shard(folder: Path, kind: str, name: str) -> torch.Tensor:
    try:
        return torch.from_numpy(np.load(folder / kind / name))
    except (OSError, ValueError) as error:
        raise DataError(
            f"{folder / kind / name} cannot be read ({error}); run 'convlens attribute' again"
        ) from None
