"""Labelled images for the analyses: the photos installed packages ship (with their ImageNet
class), synthetic shapes (``shapes-test:N`` for the held-out stream), or an ImageFolder tree."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from convlens.data.datasets import FileDataset, ScanDataset, open_dataset
from convlens.data.photos import package_photos
from convlens.data.preprocess import Preprocess
from convlens.errors import DataError

PHOTOS = "photos"


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


def labelled_images(data: str, preprocess: Preprocess, limit: int | None = None) -> LabelledImages:
    """Read ``data`` at ``preprocess``'s size: ``"photos"`` (the package photos whose class
    is known, `convlens.data.photos`; ImageNet ids), ``"shapes-test:N"`` (the held-out synthetic
    shapes, seed 1; ``"shapes:N"`` is the training stream: `convlens.data.datasets`) or an
    ImageFolder tree (class = sorted folder index). ``limit``: the first N readable items.
    A file that cannot be read is left out and listed in ``skipped``; `DataError` when no
    item is readable."""
    dataset = analysis_dataset(data, preprocess)
    if dataset.labels is None:
        raise DataError(
            f"{data} has no labels; pass an ImageFolder tree (folder/CLASS/image.jpg), "
            "'photos' or 'shapes-test:N'"
        )
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count < 1:
        raise DataError(f"{data!r} holds no labelled image; pass photos, shapes-test:N or a folder")
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


def analysis_dataset(data: str, preprocess: Preprocess) -> ScanDataset:
    """The `ScanDataset` behind `labelled_images` (``photos``, or anything `open_dataset`
    reads, ``shapes-test:N`` included; labels required only by `labelled_images`)."""
    if data == PHOTOS:
        photos = [photo for photo in package_photos() if photo.class_id is not None]
        if not photos:
            raise DataError(
                "no package photo with a known class is installed; install the 'photos' extra "
                "(foolbox) or pass an ImageFolder tree"
            )
        sources = [str(photo.path) for photo in photos]
        return FileDataset(sources, preprocess, labels=[photo.class_id for photo in photos])
    return open_dataset(data, preprocess)
