"""Class names: ImageNet-1k names ship as package data."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (``imagenet_labels()[281] == 'tabby'``)."""
    text = resources.files("convlens.models").joinpath("data/imagenet_classes.txt").read_text()
    return tuple(line for line in text.splitlines() if line)
