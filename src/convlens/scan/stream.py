"""One streaming pass over a dataset: batches through the model, layer outputs to a reducer.

A *reducer* keeps what a pass needs (top-k units, pooled features) and nothing else, so
memory does not grow with the dataset. It has ``update(indices, outputs)``,
``state_dict()``, ``load_state_dict(state)`` and ``merge(states)`` (the other ranks'
states, merged exactly). `stream_pass` runs this rank's shard (`convlens.scan.distributed`),
saves the reducer's state every ``save_every`` batches when given a ``checkpoint`` path,
continues from it with ``resume``, then merges every rank's state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from convlens.data.datasets import ScanDataset, batch_loader
from convlens.data.progress import Progress
from convlens.errors import DataError
from convlens.files import flush_ledgers, write_bytes
from convlens.layers import borrowed_model
from convlens.layers.capture import Capture
from convlens.layers.early_stop import run_until
from convlens.models.devices import cpu_passes
from convlens.models.digest import weights_sha256
from convlens.scan.distributed import gather_objects, rank_and_world, shard

STATE_MAGIC = b"convlens scan state 2\n"
DIGEST_BYTES = 32
RESTART_HINT = "start over with --restart (resume=False in Python)"
STATE_KEYS = {"fingerprint", "batches", "scanned", "errors", "reducer"}


class Reducer(Protocol):
    def update(self, indices: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def merge(self, states: list[dict]) -> None: ...


@dataclass(frozen=True)
class RunOptions:
    """How a pass runs. ``device``: where the batches go (the model must be there);
    ``checkpoint``: state file prefix (one file per rank) saved every ``save_every``
    batches; ``resume``: continue from it; ``progress``: a tqdm bar (images/s) on rank 0;
    ``on_batch``: called with the number of batches done after each one (tests stop a run
    with it, as a kill would)."""

    device: torch.device = torch.device("cpu")
    batch_size: int = 32
    workers: int = 0
    checkpoint: str | os.PathLike | None = None
    save_every: int = 50
    resume: bool = False
    progress: bool = False
    on_batch: Callable[[int], None] | None = None


@dataclass(frozen=True)
class PassResult:
    """``scanned``: images that went through the model (all ranks); ``errors``: (item
    index, message) of every item that could not be read, in index order."""

    scanned: int
    errors: list[tuple[int, str]]


def stream_pass(
    module: nn.Module,
    dataset: ScanDataset,
    open_capture: Callable[[nn.Module], AbstractContextManager[Capture]],
    reducer: Reducer,
    options: RunOptions,
    settings: dict[str, Any],
) -> PassResult:
    """Run ``dataset`` (this rank's shard) through ``module`` in eval mode without autograd,
    as far as the captured layers (`convlens.layers.early_stop.run_until`), each batch on
    the CPU in even passes of at most eight 224 px images (`cpu_passes`: per image cheaper
    there than one pass of the whole batch); after each pass, ``reducer.update(indices,
    {layer: output})`` with the outputs that ``open_capture(module)`` recorded. Returns
    when every rank is done and merged.

    ``settings``: the options that change the results (plain values), saved with the state
    beside the model's weights and the items (`run_fingerprint`); resuming with any of them
    changed is a `DataError` naming the change."""
    with borrowed_model(module), torch.no_grad(), open_capture(module) as cap:

        def step(indices: torch.Tensor, images: torch.Tensor) -> None:
            for rows in cpu_passes(images):
                cap.clear()
                run_until(module, cap.names, images[rows])
                reducer.update(indices[rows], {name: cap.activation(name) for name in cap.names})

        return stream_batches(module, dataset, step, reducer, options, settings)


def stream_batches(
    module: nn.Module,
    dataset: ScanDataset,
    step: Callable[[torch.Tensor, torch.Tensor], None],
    reducer: Reducer,
    options: RunOptions,
    settings: dict[str, Any],
) -> PassResult:
    """The loop of every pass: this rank's shard of ``dataset`` in batches, each readable
    batch handed to ``step(indices Tensor[B], images Tensor[B, 3, H, W] on the device)``;
    ``reducer``'s state saved every ``save_every`` batches and restored with ``resume``
    (see `stream_pass` for ``settings``); every rank's state merged at the end. The caller
    sets up the model (eval mode, autograd or not, hooks): `stream_pass` captures layers
    without autograd, ``convlens.scan.attribute`` computes attribution maps."""
    if options.save_every < 1:
        raise DataError(f"save_every must be >= 1 batch, got {options.save_every}")
    rank, world = rank_and_world()
    items = shard(len(dataset))
    state_file = _state_file(options.checkpoint, rank, world)
    done, scanned, errors = 0, 0, []
    fingerprint = None if state_file is None else run_fingerprint(module, dataset, settings)
    if options.resume and state_file is not None and state_file.is_file():
        done, scanned, errors = _restore(state_file, reducer, fingerprint, dataset.sources)
    size = options.batch_size
    loader = batch_loader(dataset, items[done * size :], size, options.workers)
    total = math.ceil(len(items) / size)
    shown = options.progress and rank == 0
    label = {"top_activating": "scan"}.get(settings["kind"], settings["kind"])
    with _progress(shown, len(dataset), done * size * world, label) as bar:
        for batch in loader:
            errors.extend(batch.errors)
            if len(batch.indices):
                step(batch.indices, batch.images.to(options.device))
                scanned += len(batch.indices)
            done += 1
            bar.update((len(batch.indices) + len(batch.errors)) * world)
            if state_file is not None and (done % options.save_every == 0 or done == total):
                _save(state_file, reducer, fingerprint, done, scanned, errors)
            if options.on_batch is not None:
                options.on_batch(done)
    parts = gather_objects((reducer.state_dict(), scanned, errors))
    reducer.merge([state for r, (state, _, _) in enumerate(parts) if r != rank])
    all_errors = sorted(error for _, _, part in parts for error in part)
    return PassResult(sum(count for _, count, _ in parts), all_errors)


def _state_file(checkpoint, rank: int, world: int) -> Path | None:
    if checkpoint is None:
        return None
    base = Path(checkpoint)
    return base.with_name(f"{base.name}.rank{rank}-of-{world}.pt")


def _save(path: Path, reducer: Reducer, fingerprint, done, scanned, errors) -> None:
    """Write the state all or nothing (`convlens.files.write_bytes`), as `STATE_MAGIC`, the
    SHA-256 of the payload, then the payload (``torch.save`` bytes)."""
    state = {
        "fingerprint": fingerprint,
        "batches": done,
        "scanned": scanned,
        "errors": errors,
        "reducer": reducer.state_dict(),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    write_bytes(path, STATE_MAGIC + hashlib.sha256(payload).digest() + payload)
    # recorded in the folder's ledger now, not at the next periodic flush: a run killed in
    # between would leave a state that --resume must refuse as not convlens's
    flush_ledgers()


def _restore(path: Path, reducer: Reducer, fingerprint, sources) -> tuple[int, int, list]:
    state = read_state(path)
    change = fingerprint_change(state.get("fingerprint"), fingerprint, sources)
    if change is not None:
        raise DataError(f"cannot resume from {path}: {change}; {RESTART_HINT}")
    reducer.load_state_dict(state["reducer"])
    return state["batches"], state["scanned"], [tuple(error) for error in state["errors"]]


def read_state(path: str | os.PathLike) -> dict:
    """The state dict of a file written by a pass, checked against its SHA-256 and read with
    ``weights_only=True`` (tensors and plain containers only: no code runs). An empty,
    truncated, altered or foreign file is a `DataError` saying so."""
    path = Path(path)
    data = path.read_bytes()
    header = len(STATE_MAGIC) + DIGEST_BYTES
    if not data:
        problem = "is empty"
    elif not data.startswith(STATE_MAGIC):
        problem = "is not a convlens scan state"
    elif (
        len(data) < header
        or hashlib.sha256(data[header:]).digest() != data[len(STATE_MAGIC) : header]
    ):
        problem = "is damaged (its checksum does not match: the file was cut short or altered)"
    else:
        problem = "is not a convlens scan state"
        try:
            state = torch.load(io.BytesIO(data[header:]), map_location="cpu", weights_only=True)
        except Exception as error:  # a checksummed payload that still does not load
            state, problem = None, f"cannot be read ({type(error).__name__})"
        if isinstance(state, dict) and STATE_KEYS <= state.keys():
            return state
    raise DataError(f"the saved scan state {path} {problem}; {RESTART_HINT}")


def run_fingerprint(
    module: nn.Module, dataset: ScanDataset, settings: dict[str, Any]
) -> dict[str, Any]:
    """What a resumed pass must share with the saved one: ``settings`` (the options that
    change results) with the dataset's preprocessing, the SHA-256 of the model's weights,
    and each item's source, size and modification time (``LongTensor[N]`` each; -1 for
    items that are not files)."""
    paths, sizes, times = [], [], []
    for source in dataset.sources:
        key = hashlib.blake2b(source.encode(), digest_size=8).digest()
        paths.append(int.from_bytes(key, "little", signed=True))
        try:
            stat = os.stat(source)
            sizes.append(stat.st_size)
            times.append(stat.st_mtime_ns)
        except (OSError, ValueError):
            sizes.append(-1)
            times.append(-1)
    items = {
        name: torch.tensor(values, dtype=torch.long)
        for name, values in (("paths", paths), ("sizes", sizes), ("times", times))
    }
    settings = dict(settings) | {"preprocess": dataclasses.asdict(dataset.preprocess)}
    return {"settings": settings, "model": weights_sha256(module), "items": items}


def fingerprint_change(saved, current: dict[str, Any], sources: list[str]) -> str | None:
    """What differs between a saved and a current `run_fingerprint` of the items
    ``sources``, in words (None: the same run)."""
    if not isinstance(saved, dict) or set(saved) != set(current):
        return "it was saved by another convlens version or another kind of run"
    if saved["settings"] != current["settings"]:
        old, new = saved["settings"], current["settings"]
        changed = [
            f"{key} {old.get(key)!r} -> {new.get(key)!r}"
            for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)
        ]
        return "the options changed (" + ", ".join(changed) + ")"
    if saved["model"] != current["model"]:
        return "the model's weights are not those the state was saved with"
    return _items_change(saved["items"], current["items"], sources)


def _items_change(saved: dict, current: dict, sources: list[str]) -> str | None:
    count, now = len(saved["paths"]), len(current["paths"])
    if count != now:
        return f"the dataset changed (it has {now} items, the state was saved with {count})"
    for key, what in (("paths", ""), ("sizes", "size"), ("times", "modification time")):
        differs = (saved[key] != current[key]).nonzero()
        if len(differs):
            index = int(differs[0])
            if not what:
                return f"the dataset changed (item {index} is now {sources[index]})"
            return f"{sources[index]} changed since the state was saved (its {what})"
    return None


def _progress(enabled: bool, total: int, initial: int, label: str):
    """The bar of a pass, labelled with its kind (``scan``, ``embed``, ``attribute``)."""
    return Progress(total, initial=min(initial, total), disable=not enabled, unit="img", desc=label)
