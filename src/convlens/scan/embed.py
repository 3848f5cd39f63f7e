"""Embeddings of a dataset: pooled features of one layer for every item, streamed.

The default features are the input of the classifier (the model's last ``nn.Linear``):
the pooled vector a linear head reads. Another layer's ``[B, C, h, w]`` output is averaged
over positions (global average pooling); a ``[B, D]`` output is taken as it is. Vectors
are stored as float16 (``embeddings.npy``) with ``index.json`` (sources, labels and
classes in row order, model, layer) beside them; `convlens.scan.knn` searches them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convlens.data.datasets import open_dataset
from convlens.errors import DataError, ModelLoadError
from convlens.files import atomic_file, write_json
from convlens.layers import capture, resolve_layer
from convlens.layers.inputs import capture_inputs, classifier_layer
from convlens.models.devices import placed_on
from convlens.models.digest import file_sha256
from convlens.models.loading import LoadedModel, load_model, model_file
from convlens.scan.knn import Neighbours, nearest
from convlens.scan.stream import RunOptions, stream_pass

VECTORS_FILE = "embeddings.npy"
INDEX_FILE = "index.json"


@dataclass(frozen=True)
class Embeddings:
    """``vectors`` ``Tensor[N, D]`` float16 (row i is item ``sources[i]``), ``labels``
    (-1 where unknown), ``classes`` (label names or None), ``layer`` and ``inputs`` (True:
    the layer's input, else its pooled output), ``model`` name, ``data`` (the dataset as
    given, when it was a name or path), ``errors``: (source, message) of skipped items,
    ``model_sha256``: the SHA-256 of the model file when the model was one (`model_spec`
    loads it again only if it is the same file)."""

    vectors: torch.Tensor
    sources: list[str]
    labels: list[int]
    classes: tuple[str, ...] | None
    layer: str
    inputs: bool
    model: str
    data: str | None = None
    errors: tuple[tuple[str, str], ...] = ()
    model_sha256: str | None = None

    def neighbours(self, item: int | str, k: int = 5, metric: str = "cosine") -> Neighbours:
        """The ``k`` stored items nearest stored item ``item`` (a row, or a source), itself
        left out (`convlens.scan.knn.nearest`)."""
        row = item if isinstance(item, int) else _row_of(self.sources, item)
        if not 0 <= row < len(self.sources):
            raise DataError(f"item {row} is not a row of these {len(self.sources)} embeddings")
        rows, distances = nearest(
            self.vectors, self.vectors[row : row + 1], k, metric, exclude=torch.tensor([row])
        )
        return Neighbours(
            self.sources[row],
            [self.sources[r] for r in rows[0].tolist()],
            distances[0].tolist(),
            metric,
        )

    def _repr_html_(self) -> str:
        """A notebook shows embeddings as a summary: size, layer, model, items per class."""
        from convlens.render.scans import embeddings_html

        return embeddings_html(self)

    def save(self, folder: str | Path) -> Path:
        """Write ``embeddings.npy`` (float16 ``[N, D]``) and ``index.json`` under ``folder``."""
        folder = Path(folder)
        with atomic_file(folder / VECTORS_FILE) as handle:
            np.save(handle, self.vectors.numpy().astype(np.float16))
        index = {
            "sources": self.sources,
            "labels": self.labels,
            "classes": list(self.classes) if self.classes else None,
            "layer": self.layer,
            "inputs": self.inputs,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "data": self.data,
            "dim": int(self.vectors.shape[1]),
            "skipped": [{"source": s, "message": m} for s, m in self.errors],
        }
        write_json(folder / INDEX_FILE, index, indent=1)
        return folder


def _row_of(sources: list[str], source: str) -> int:
    if source not in sources:
        raise DataError(f"no stored item {source!r}; give a row number or a stored source")
    return sources.index(source)


def load_embeddings(folder: str | Path) -> Embeddings:
    """Read a folder written by `Embeddings.save`; `DataError` naming the fix otherwise."""
    folder = Path(folder)
    if not (folder / VECTORS_FILE).is_file() or not (folder / INDEX_FILE).is_file():
        raise DataError(
            f"{folder} holds no {VECTORS_FILE} and {INDEX_FILE}; make them with "
            "'convlens embed DATA --out DIR'"
        )
    index = json.loads((folder / INDEX_FILE).read_text())
    vectors = torch.from_numpy(np.load(folder / VECTORS_FILE))
    if len(vectors) != len(index["sources"]):
        raise DataError(f"{folder}: {len(vectors)} vectors for {len(index['sources'])} sources")
    return Embeddings(
        vectors,
        index["sources"],
        index["labels"],
        tuple(index["classes"]) if index.get("classes") else None,
        index["layer"],
        index["inputs"],
        index["model"],
        index.get("data"),
        tuple((e["source"], e["message"]) for e in index.get("skipped", [])),
        index.get("model_sha256"),
    )


def model_file_sha256(model) -> str | None:
    """The SHA-256 of the file ``model`` names when `load_model` would read it from a file
    (None for a registered name, a module or a `LoadedModel`)."""
    if not isinstance(model, (str, Path)):
        return None
    path = model_file(model)
    return None if path is None else file_sha256(path)


def model_spec(stored: Embeddings, folder: str | Path) -> str:
    """The model an embedding names, to load again: a registered name as it is; a file only
    when it is the file the embedding was made with (the same SHA-256), else a
    `ModelLoadError` saying to pass the model (``--model``)."""
    path = model_file(stored.model)
    if path is None:
        return stored.model
    index = Path(folder) / INDEX_FILE
    if stored.model_sha256 is None:
        raise ModelLoadError(
            f"{index} names the model file {path} but records no SHA-256 of it, so it may not "
            "be the file the embedding was made with; pass the model with --model"
        )
    if file_sha256(path) != stored.model_sha256:
        raise ModelLoadError(
            f"{path} is not the model file {index} was made with (its SHA-256 differs); "
            "pass the model with --model"
        )
    return stored.model


def pooled(features: torch.Tensor) -> torch.Tensor:
    """``Tensor[B, C, h, w]`` averaged over positions, ``Tensor[B, D]`` as it is, anything
    else flattened: ``Tensor[B, D]`` float32."""
    if features.dim() == 4:
        return features.float().mean(dim=(2, 3))
    return features.float().flatten(1)


class PooledReducer:
    """Keeps every item's pooled vector (float16) with its index (see `stream_pass`)."""

    def __init__(self) -> None:
        self.indices: list[torch.Tensor] = []
        self.vectors: list[torch.Tensor] = []

    def update(self, indices: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        (features,) = outputs.values()
        self.indices.append(indices.clone())
        self.vectors.append(pooled(features).half().cpu())

    def state_dict(self) -> dict:
        if not self.indices:
            return {"indices": torch.empty(0, dtype=torch.long), "vectors": None}
        return {"indices": torch.cat(self.indices), "vectors": torch.cat(self.vectors)}

    def load_state_dict(self, state: dict) -> None:
        self.indices, self.vectors = [], []
        if state["vectors"] is not None:
            self.indices, self.vectors = [state["indices"]], [state["vectors"]]

    def merge(self, states: list[dict]) -> None:
        for state in states:
            if state["vectors"] is not None:
                self.indices.append(state["indices"])
                self.vectors.append(state["vectors"])

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices Tensor[N], vectors Tensor[N, D])`` sorted by item index."""
        state = self.state_dict()
        if state["vectors"] is None:
            raise DataError("no item of the dataset could be read, so nothing was embedded")
        order = torch.argsort(state["indices"])
        return state["indices"][order], state["vectors"][order]


def feature_capture(module: nn.Module, layer) -> tuple[str, bool, partial]:
    """``(layer name, inputs?, open_capture)``: the classifier's input when ``layer`` is None,
    else the output of ``layer``."""
    if layer is None:
        name = classifier_layer(module)
        return name, True, partial(_open_inputs, name=name)
    name, _ = resolve_layer(module, layer)
    return name, False, partial(_open_outputs, name=name)


def _open_inputs(module: nn.Module, name: str):
    return capture_inputs(module, name)


def _open_outputs(module: nn.Module, name: str):
    return capture(module, name)


def embed(
    model: nn.Module | LoadedModel | str,
    data,
    layer=None,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    workers: int = 0,
    checkpoint=None,
    save_every: int = 50,
    resume: bool = False,
    progress: bool = False,
    on_batch=None,
) -> Embeddings:
    """Pooled features ``Tensor[N, D]`` (float16) of every readable item of ``data`` (see
    `convlens.data.datasets.open_dataset`), rows in item order. ``layer``: default the
    classifier's input, else that layer's output pooled over positions. The run options
    are those of `convlens.scan.top_activating` (torchrun shards merge exactly).

    Example:
        >>> emb = embed("synthetic-shapes", "shapes:6")
        >>> emb.vectors.shape
        torch.Size([6, 48])
    """
    loaded = load_model(model)
    dataset = open_dataset(data, loaded.preprocess)
    name, inputs, open_capture = feature_capture(loaded.module, layer)
    reducer = PooledReducer()
    settings = {
        "kind": "embed",
        "layer": name,
        "inputs": inputs,
        "batch_size": batch_size,
    }
    with placed_on(loaded.module, device) as run_device:
        options = RunOptions(
            run_device, batch_size, workers, checkpoint, save_every, resume, progress, on_batch
        )
        run = stream_pass(loaded.module, dataset, open_capture, reducer, options, settings)
    indices, vectors = reducer.rows()
    labels = [dataset.label(i) for i in indices.tolist()]
    return Embeddings(
        vectors,
        [dataset.sources[i] for i in indices.tolist()],
        labels,
        dataset.classes,
        name,
        inputs,
        loaded.name,
        str(data) if isinstance(data, (str, Path)) else None,
        tuple((dataset.sources[i], message) for i, message in run.errors),
        model_file_sha256(model),
    )
