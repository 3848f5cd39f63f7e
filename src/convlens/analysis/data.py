"""Labelled images for the analyses: the photos installed packages ship (with their ImageNet
class), held-out synthetic shapes, or an ImageFolder tree."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from convlens.data.datasets import FileDataset, ScanDataset, open_dataset
from convlens.data.photos import package_photos
from convlens.data.preprocess import Preprocess
from convlens.data.synthetic import SyntheticShapes
from convlens.errors import DataError
from convlens.train.heads import TEST_SEED

PHOTOS = "photos"
SHAPES = "shapes"


@dataclass(frozen=True)
class LabelledImages:
    """``inputs`` normalised ``Tensor[N, 3, H, W]``, ``labels`` class ids ``LongTensor[N]``,
    ``display`` ``uint8[N, H, W, 3]`` (the pixels the model sees) and a ``source`` each;
    ``skipped``: (source, reason) of every file left out because it could not be read."""

    inputs: torch.Tensor
    labels: torch.Tensor
    display: np.ndarray
    sources: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def labelled_images(
    data: str, preprocess: Preprocess, limit: int | None = None, shapes_seed: int = TEST_SEED
) -> LabelledImages:
    """Read ``data`` at ``preprocess``'s size: ``"photos"`` (the package photos whose class
    is known, `convlens.data.photos`; ImageNet ids), ``"shapes:N"`` (items ``0 .. N-1`` of
    the held-out synthetic stream, seed 1; ``shapes_seed=0`` for the training stream) or an
    ImageFolder tree (class = sorted folder index). ``limit``: the first N readable items.
    A file that cannot be read is left out and listed in ``skipped``; `DataError` when no
    item is readable."""
    dataset = analysis_dataset(data, preprocess, shapes_seed)
    if dataset.labels is None:
        raise DataError(
            f"{data} has no labels; pass an ImageFolder tree (folder/CLASS/image.jpg), "
            "'photos' or 'shapes:N'"
        )
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count < 1:
        raise DataError(f"{data!r} holds no labelled image; pass photos, shapes:N or a folder")
    inputs, labels, display, sources, skipped = [], [], [], [], []
    for index in range(len(dataset)):
        if len(inputs) == count:
            break
        _, tensor, label, error = dataset[index]
        if error is not None:
            skipped.append((dataset.sources[index], error))
            continue
        inputs.append(tensor)
        labels.append(label)
        display.append(dataset.display(index))
        sources.append(dataset.sources[index])
    if not inputs:
        raise DataError(f"no readable image in {data!r}: {skipped[0][1]}")
    return LabelledImages(
        torch.stack(inputs), torch.tensor(labels), np.stack(display), sources, skipped
    )


def analysis_dataset(
    data: str, preprocess: Preprocess, shapes_seed: int = TEST_SEED
) -> ScanDataset:
    """The `ScanDataset` behind `labelled_images` (``photos``, ``shapes:N`` held out, or
    anything `open_dataset` reads; labels required only by `labelled_images`)."""
    if data == PHOTOS:
        photos = [photo for photo in package_photos() if photo.class_id is not None]
        if not photos:
            raise DataError(
                "no package photo with a known class is installed; install the 'photos' extra "
                "(foolbox) or pass an ImageFolder tree"
            )
        sources = [str(photo.path) for photo in photos]
        return FileDataset(sources, preprocess, labels=[photo.class_id for photo in photos])
    if data == SHAPES or data.startswith(SHAPES + ":"):
        count = data.partition(":")[2] or "100"
        if not count.isdigit() or int(count) < 1:
            raise DataError(f"{data!r}: write shapes:N with N >= 1 (e.g. shapes:100)")
        return open_dataset(SyntheticShapes(int(count), seed=shapes_seed), preprocess)
    return open_dataset(data, preprocess)
