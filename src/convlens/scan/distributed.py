"""Sharding for ``torchrun``: which items this process scans, and gathering partial results.

Under ``torchrun --nproc_per_node N`` every process sees ``RANK``/``WORLD_SIZE`` in its
environment; `init_from_env` opens the process group (gloo on CPU, nccl on CUDA). Rank
``r`` of ``N`` scans items ``r, r + N, r + 2N, ...``; partial results travel as Python
objects (`gather_objects`) and merge exactly. Without torchrun (or with one process)
everything here is a no-op: rank 0 of 1.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: torch.device) -> bool:
    """Open the default process group when ``torchrun`` started this process with more than
    one worker and no group is open yet: nccl for a CUDA ``device`` (each rank on
    ``cuda:LOCAL_RANK``), gloo otherwise. Returns whether this call opened it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def shard(count: int) -> list[int]:
    """The item indices of ``0 .. count - 1`` that this rank scans (every N-th)."""
    rank, world = rank_and_world()
    return list(range(rank, count, world))


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (``[value]`` in a single process)."""
    rank, world = rank_and_world()
    if world == 1:
        return [value]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if rank_and_world()[1] > 1:
        dist.barrier()
