"""Image sets of the concept tools: what ``--concept``, ``--random`` and ``--data`` name.

`image_set` reads, through the model's preprocessing:

- anything `convlens.data.datasets.open_dataset` takes (a folder, an ImageFolder tree, a
  ``.txt`` list, ``shapes:N``/``shapes-test:N``), unreadable files skipped;
- ``scenes:N`` / ``scenes-test:N``: the first N multi-object scenes (`convlens.data.scenes`,
  seed 0 / 1; item ``i`` is named ``scenes:i``);
- any of these with ``@CLASS`` appended: only the items of that class (a label of an
  ImageFolder tree or of ``shapes``; for scenes, the scenes where the shape is present),
  e.g. ``shapes:200@circle``;
- a ``Tensor[N, 3, H, W]`` already preprocessed (used as it is), or an `ImageSet`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from convlens.data.datasets import open_dataset
from convlens.data.preprocess import Preprocess
from convlens.data.scenes import SCENE_CLASSES, SceneBatch, make_scenes
from convlens.errors import DataError

SCENE_STREAMS = {"scenes": 0, "scenes-test": 1}


@dataclass(frozen=True)
class ImageSet:
    """``images`` ``Tensor[N, 3, H, W]`` (preprocessed), ``sources`` (one name per row)."""

    images: torch.Tensor
    sources: list[str]


def image_set(spec, preprocess: Preprocess) -> ImageSet:
    """The images ``spec`` names (module docstring), preprocessed; `DataError` naming the
    fix when it names none."""
    if isinstance(spec, ImageSet):
        return spec
    if isinstance(spec, torch.Tensor):
        if spec.dim() != 4 or spec.shape[1] != 3:
            raise DataError(f"an image set tensor must be [N, 3, H, W], got {tuple(spec.shape)}")
        return ImageSet(spec, [f"tensor:{i}" for i in range(len(spec))])
    text = os.fspath(spec) if isinstance(spec, os.PathLike) else str(spec)
    base, _, wanted = text.rpartition("@") if "@" in text else (text, "", "")
    name, _, count = base.partition(":")
    if name in SCENE_STREAMS:
        return _scene_set(base, name, count, wanted, preprocess)
    dataset = open_dataset(base, preprocess)
    keep = range(len(dataset))
    if wanted:
        if not dataset.classes or wanted not in dataset.classes:
            known = ", ".join(dataset.classes) if dataset.classes else "none (no labels)"
            raise DataError(f"{text}: no class {wanted!r} in {base}; its classes: {known}")
        label = dataset.classes.index(wanted)
        keep = [i for i in keep if dataset.label(i) == label]
    images, sources = [], []
    for i in keep:
        _, tensor, _, _ = dataset[i]
        if tensor is not None:
            images.append(tensor)
            sources.append(dataset.sources[i])
    if not images:
        raise DataError(f"{text}: no readable image in this set")
    return ImageSet(torch.stack(images), sources)


def scene_batch(spec: str) -> SceneBatch:
    """The scenes ``scenes:N`` / ``scenes-test:N`` names, as one `SceneBatch`."""
    name, _, count = spec.partition(":")
    if name not in SCENE_STREAMS or not count.isdigit() or int(count) < 1:
        raise DataError(f"{spec!r}: write scenes:N or scenes-test:N with N a positive count")
    return make_scenes(int(count), seed=SCENE_STREAMS[name])


def scene_images(batch: SceneBatch, preprocess: Preprocess) -> torch.Tensor:
    """``Tensor[B, 3, H, W]``: the scenes of ``batch`` through ``preprocess``."""
    return preprocess([Image.fromarray(np.asarray(pixels)) for pixels in batch.display])


def _scene_set(text: str, name: str, count: str, wanted: str, preprocess) -> ImageSet:
    batch = scene_batch(text)
    rows = list(range(len(batch.images)))
    if wanted:
        if wanted not in SCENE_CLASSES:
            raise DataError(f"{text}@{wanted}: scenes hold {', '.join(SCENE_CLASSES)}")
        rows = batch.present[:, SCENE_CLASSES.index(wanted)].nonzero()[:, 0].tolist()
        if not rows:
            raise DataError(f"{text}@{wanted}: no scene of these holds a {wanted}")
    images = scene_images(batch, preprocess)[rows]
    return ImageSet(images, [f"{name}:{i}" for i in rows])
