"""Scans stopped part-way, to resume: ``stop_after`` for ``top_activating``'s ``on_batch``,
and ``stopped_cli_scan``, the scan ``convlens scan *SCAN_ARGS --top 2`` runs, stopped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from convlens.scan.topk import top_activating

# 12 training shapes through the bundled model's features.2, 3 images a batch (4 batches),
# a state saved after each.
SCAN_ARGS = [
    "shapes:12",
    "--model",
    "synthetic-shapes",
    "--layers",
    "features.2",
    "--projections",
    "none",
    "--batch-size",
    "3",
    "--save-every",
    "1",
]


class Stop(Exception):
    """Raised by `stop_after`'s callback: the interruption of a run."""


def stop_after(batches: int) -> Callable[[int], None]:
    """An ``on_batch`` callback that raises `Stop` once ``batches`` batches are done."""

    def stop(done: int) -> None:
        if done == batches:
            raise Stop

    return stop


def stopped_cli_scan(out: Path) -> None:
    """Runs the scan of ``convlens scan *SCAN_ARGS --top 2 --out out``, stopped after 2 of its
    4 batches: its state is left under ``out/.state/scan`` for ``--resume``."""
    with pytest.raises(Stop):
        top_activating(
            "synthetic-shapes",
            "shapes:12",
            ["features.2"],
            k=2,
            projections=(),
            batch_size=3,
            checkpoint=out / ".state" / "scan",
            save_every=1,
            on_batch=stop_after(2),
        )
