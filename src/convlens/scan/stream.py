"""One streaming pass over a dataset: batches through the model, layer outputs to a reducer.

A *reducer* keeps what a pass needs (top-k units, pooled features) and nothing else, so
memory does not grow with the dataset. It has ``update(indices, outputs)``,
``state_dict()``, ``load_state_dict(state)`` and ``merge(states)`` (the other ranks'
states, merged exactly). `stream_pass` runs this rank's shard (`convlens.scan.distributed`),
saves the reducer's state every ``save_every`` batches when given a ``checkpoint`` path,
continues from it with ``resume``, then merges every rank's state.
"""

from __future__ import annotations

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
from convlens.errors import DataError
from convlens.layers import borrowed_model
from convlens.layers.capture import Capture
from convlens.layers.early_stop import run_until
from convlens.scan.distributed import gather_objects, rank_and_world, shard


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
    fingerprint: dict[str, Any],
) -> PassResult:
    """Run ``dataset`` (this rank's shard) through ``module`` in eval mode without autograd,
    as far as the captured layers (`convlens.layers.early_stop.run_until`); after each
    batch, ``reducer.update(indices, {layer: output})`` with the outputs that
    ``open_capture(module)`` recorded. Returns when every rank is done and merged."""
    if options.save_every < 1:
        raise DataError(f"save_every must be >= 1 batch, got {options.save_every}")
    rank, world = rank_and_world()
    items = shard(len(dataset))
    state_file = _state_file(options.checkpoint, rank, world)
    done, scanned, errors = 0, 0, []
    if options.resume and state_file is not None and state_file.is_file():
        done, scanned, errors = _restore(state_file, reducer, fingerprint)
    size = options.batch_size
    loader = batch_loader(dataset, items[done * size :], size, options.workers)
    total = math.ceil(len(items) / size)
    with (
        _progress(options.progress and rank == 0, len(dataset), done * size * world) as bar,
        borrowed_model(module),
        torch.no_grad(),
        open_capture(module) as cap,
    ):
        for batch in loader:
            errors.extend(batch.errors)
            if len(batch.indices):
                cap.clear()
                run_until(module, cap.names, batch.images.to(options.device))
                reducer.update(batch.indices, {name: cap.activation(name) for name in cap.names})
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
    """Write the state atomically (a temporary file renamed over the old state)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "fingerprint": fingerprint,
        "batches": done,
        "scanned": scanned,
        "errors": errors,
        "reducer": reducer.state_dict(),
    }
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def _restore(path: Path, reducer: Reducer, fingerprint) -> tuple[int, int, list]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fingerprint:
        raise DataError(
            f"{path} was saved by a different scan ({state.get('fingerprint')}); run without "
            "--resume (resume=False) to start over, or delete the state file"
        )
    reducer.load_state_dict(state["reducer"])
    return state["batches"], state["scanned"], [tuple(error) for error in state["errors"]]


def _progress(enabled: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=min(initial, total), disable=not enabled, unit="img", desc="scan"
    )
