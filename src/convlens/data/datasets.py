"""Datasets for dataset-wide passes (scans, embeddings), streamed through a ``DataLoader``.

`open_dataset` turns what a user points at into a `ScanDataset`:

- a folder: every image file below it, recursively, sorted by path;
- an ImageFolder tree (a folder whose images all sit in its direct sub-folders): one class
  per sub-folder, labels kept;
- a text file (``.txt``): one image path per line (relative paths are read from the file's
  folder; blank lines and lines starting with ``#`` are skipped);
- ``shapes:N``: items ``0 .. N-1`` of the synthetic shapes' training stream (seed 0, the
  images the shipped shapes model learned from); ``shapes-test:N``: the same items of the
  held-out stream (seed 1, never trained on: use it to measure). ``N`` defaults to 1,000.
  Every command and function that takes data reads these names here, with this meaning;
  item ``i`` is named ``shapes:i`` (``shapes-test:i``);
- a list of paths, or a list of in-memory images (PIL, arrays, tensors in [0, 1]);
- any ``torch.utils.data.Dataset`` whose items are images or tuples with the image first
  and, when it is one whole number, the label second (``(image,)``, ``(image, label)``,
  ``(image, label, index)``).

Every item goes through the model's `Preprocess`. A file that cannot be read (empty,
truncated, not an image, above ``max_pixels``) does not stop the pass: its item comes back
as an error, `collate_items` drops it from the batch and keeps its (source, message).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from convlens.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    ImageSource,
    image_files,
    read_rgb,
)
from convlens.data.preprocess import Preprocess
from convlens.data.synthetic import SHAPES, TEST_SEED, TRAIN_SEED, SyntheticShapes
from convlens.errors import DataError, ImageLoadError

SHAPES_NAME = "shapes"
# the synthetic shapes streams by name (see the module docstring)
SHAPES_STREAMS = {SHAPES_NAME: TRAIN_SEED, "shapes-test": TEST_SEED}
DEFAULT_SHAPES_COUNT = 1000


class ScanDataset(Dataset):
    """Items ``(index, Tensor[3, H, W] | None, label, error | None)``: the normalised image
    (None when it could not be read, with the reason in ``error``); ``label`` is -1 where
    the data has no labels. ``sources[i]`` names item i (a path as given, or ``name:i``)."""

    def __init__(
        self,
        sources: Sequence[str],
        preprocess: Preprocess,
        labels: Sequence[int] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.sources = list(sources)
        self.preprocess = preprocess
        self.labels = None if labels is None else [int(label) for label in labels]
        self.classes = None if classes is None else tuple(classes)

    def __len__(self) -> int:
        return len(self.sources)

    def rgb(self, index: int) -> Image.Image:
        """Item ``index`` as an 8-bit RGB image; `ImageLoadError` when it cannot be read."""
        raise NotImplementedError

    def display(self, index: int) -> np.ndarray:
        """The pixels the model sees for item ``index``: ``uint8[H, W, 3]``."""
        return self.preprocess.display(self.rgb(index))

    def label(self, index: int) -> int:
        return -1 if self.labels is None else self.labels[index]

    def __getitem__(self, index: int):
        try:
            tensor = self.preprocess.normalize(self.display(index))
        except ImageLoadError as error:
            return index, None, self.label(index), str(error)
        return index, tensor, self.label(index), None


class FileDataset(ScanDataset):
    """Image files by path (``sources``), read with the ``max_pixels`` guard."""

    def __init__(self, sources, preprocess, labels=None, classes=None, max_pixels=None):
        super().__init__(sources, preprocess, labels, classes)
        self.max_pixels = max_pixels or DEFAULT_MAX_PIXELS

    def rgb(self, index: int) -> Image.Image:
        return read_rgb(self.sources[index], self.max_pixels, reduce_for=self.preprocess)


class ShapesDataset(ScanDataset):
    """The synthetic shapes set (`convlens.data.synthetic`): sources ``shapes:i``."""

    def __init__(self, shapes: SyntheticShapes, preprocess: Preprocess, name: str = SHAPES_NAME):
        indices = range(shapes.start, shapes.start + len(shapes))
        labels = [i % len(SHAPES) for i in indices]
        super().__init__([f"{name}:{i}" for i in indices], preprocess, labels, SHAPES)
        self.shapes = shapes

    def rgb(self, index: int) -> Image.Image:
        image = self.shapes[index].image
        return Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy())


class WrappedDataset(ScanDataset):
    """Any ``torch.utils.data.Dataset`` of images or ``(image, label)`` pairs."""

    def __init__(self, dataset: Dataset, preprocess: Preprocess, name: str | None = None):
        count = len(dataset)  # type: ignore[arg-type]
        name = name or type(dataset).__name__
        classes = getattr(dataset, "classes", None)
        super().__init__([f"{name}:{i}" for i in range(count)], preprocess, None, classes)
        self.dataset = dataset
        self.labels = self._labels(count)

    def _labels(self, count: int) -> list[int] | None:
        targets = getattr(self.dataset, "targets", None)
        if targets is not None and len(targets) == count:
            return [int(t) for t in targets]
        return None

    def _item(self, index: int) -> tuple[ImageSource, int]:
        """``(image, label)`` of an item: an image, or a tuple whose first entry is the
        image and whose second, when it is one integer, the label (``(image,)``,
        ``(image, label, index)`` and the like); -1 where there is no label."""
        item = self.dataset[index]
        if not isinstance(item, (tuple, list)) or not item:
            return item, -1
        label = item[1] if len(item) > 1 else None
        if isinstance(label, torch.Tensor) and label.numel() == 1:
            label = label.item()
        elif isinstance(label, np.ndarray) and label.size == 1:
            label = label.item()
        whole = isinstance(label, numbers.Integral) or (
            isinstance(label, float) and label.is_integer()
        )
        return item[0], int(label) if whole and not isinstance(label, bool) else -1

    def rgb(self, index: int) -> Image.Image:
        return read_rgb(self._item(index)[0], reduce_for=self.preprocess)

    def label(self, index: int) -> int:
        if self.labels is not None:
            return self.labels[index]
        try:
            return self._item(index)[1]
        except Exception:  # the image is reported when it is read, not here
            return -1


def open_dataset(
    data: str | os.PathLike | Dataset | Sequence,
    preprocess: Preprocess,
    *,
    max_pixels: int | None = None,
) -> ScanDataset:
    """A `ScanDataset` from a folder, an ImageFolder tree, a ``.txt`` list of paths,
    ``shapes:N``/``shapes-test:N``, a list of paths, or any ``Dataset`` (see the module
    docstring)."""
    if isinstance(data, ScanDataset):
        return data
    if isinstance(data, SyntheticShapes):
        return ShapesDataset(data, preprocess)
    if isinstance(data, Dataset):
        return WrappedDataset(data, preprocess)
    if isinstance(data, (list, tuple)):
        if all(isinstance(source, (str, os.PathLike)) for source in data):
            return FileDataset([str(source) for source in data], preprocess, max_pixels=max_pixels)
        if any(isinstance(source, (str, os.PathLike)) for source in data):
            raise DataError(
                "a list to scan holds either paths or images (tensors, arrays, PIL images), "
                "not both; split it"
            )
        return WrappedDataset(data, preprocess, name="list")  # in-memory images
    if not isinstance(data, (str, os.PathLike)):
        raise DataError(
            f"cannot scan a {type(data).__name__}; pass a folder, a .txt list of paths, "
            "'shapes:N' or a torch Dataset"
        )
    text, path = str(data), Path(data)
    if path.is_dir():
        return _folder_dataset(path, preprocess, max_pixels)
    if path.is_file():
        return FileDataset(_listed_paths(path), preprocess, max_pixels=max_pixels)
    name, _, count = text.partition(":")
    if name in SHAPES_STREAMS:
        shapes = SyntheticShapes(_shapes_count(text, count), seed=SHAPES_STREAMS[name])
        return ShapesDataset(shapes, preprocess, name)
    raise DataError(
        f"{text}: no such folder or file; pass a folder of images, an ImageFolder tree, "
        "a .txt file with one path per line, or 'shapes:N' / 'shapes-test:N'"
    )


def _shapes_count(text: str, count: str) -> int:
    if not count:
        return DEFAULT_SHAPES_COUNT
    if not count.isdigit() or int(count) < 1:
        raise DataError(f"{text!r}: write shapes:N with N a positive item count")
    return int(count)


def _folder_dataset(folder: Path, preprocess: Preprocess, max_pixels) -> FileDataset:
    files = image_files(folder)
    if not files:
        raise DataError(
            f"{folder}: no image files below this folder "
            f"(suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    depths = {len(path.relative_to(folder).parts) for path in files}
    sources = [str(path) for path in files]
    if depths != {2}:  # images at several depths or at the top: a plain folder
        return FileDataset(sources, preprocess, max_pixels=max_pixels)
    classes = sorted({path.relative_to(folder).parts[0] for path in files})
    position = {name: i for i, name in enumerate(classes)}
    labels = [position[path.relative_to(folder).parts[0]] for path in files]
    return FileDataset(sources, preprocess, labels, classes, max_pixels=max_pixels)


def _listed_paths(listing: Path) -> list[str]:
    if listing.suffix.lower() != ".txt":
        raise DataError(
            f"{listing}: a single file is not a dataset; pass a folder, or a .txt file "
            "with one image path per line"
        )
    lines = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines()]
    paths = [line for line in lines if line and not line.startswith("#")]
    if not paths:
        raise DataError(f"{listing}: lists no image paths (one path per line)")
    base = listing.parent
    return [path if Path(path).is_absolute() else str(base / path) for path in paths]


@dataclass(frozen=True)
class LoaderBatch:
    """One collated batch: ``indices`` Tensor[B] (item ids), ``images`` Tensor[B, 3, H, W]
    (normalised), ``labels`` Tensor[B] (-1 without labels), ``errors`` (index, message) of
    the items of this batch that could not be read (not in ``images``)."""

    indices: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    errors: list[tuple[int, str]]


def collate_items(items) -> LoaderBatch:
    """Stack the readable items of a batch; keep (index, message) for the others."""
    good = [item for item in items if item[1] is not None]
    errors = [(item[0], item[3]) for item in items if item[1] is None]
    if not good:
        return LoaderBatch(torch.empty(0, dtype=torch.long), torch.empty(0), torch.empty(0), errors)
    return LoaderBatch(
        indices=torch.tensor([item[0] for item in good], dtype=torch.long),
        images=torch.stack([item[1] for item in good]),
        labels=torch.tensor([item[2] for item in good], dtype=torch.long),
        errors=errors,
    )


def batch_loader(
    dataset: ScanDataset, indices: Sequence[int], batch_size: int = 32, workers: int = 0
) -> DataLoader:
    """A ``DataLoader`` over items ``indices`` of ``dataset``, in that order, yielding
    `LoaderBatch` objects (``workers`` background processes read and preprocess)."""
    if batch_size < 1 or workers < 0:
        raise DataError(f"batch_size must be >= 1 and workers >= 0, got {batch_size}, {workers}")
    subset = torch.utils.data.Subset(dataset, list(indices))
    return DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_items,
        persistent_workers=False,
    )
