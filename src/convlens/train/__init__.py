"""Training: a small loop and the run that trains the shipped synthetic-shapes model.

The names below load on first use (PEP 562, as the package's own), so importing
`convlens.train.settings` (the command line's defaults) does not import torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from convlens.train.loop import TrainingLog, accuracy, train_classifier

__all__ = ["TrainingLog", "accuracy", "train_classifier"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("convlens.train.loop"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
