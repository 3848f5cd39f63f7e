"""Attach a localising head (`convlens.models.heads`: cam, nin, acol, scouter) to a backbone
cut at a named layer and train it on the synthetic shapes or an ImageFolder tree, through
`train_epochs` (resumable checkpoints, progress bar).

Data: ``synthetic``: items ``0 .. limit-1`` of ``SyntheticShapes(seed=0)`` for training and
``0 .. test-1`` of ``seed=1`` held out; a folder: an ImageFolder tree (one class per
sub-folder), shuffled by ``seed`` and split into training and validation parts
(``val_fraction``), the first ``limit`` training items used.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from convlens.data.datasets import open_dataset
from convlens.data.preprocess import Preprocess
from convlens.data.synthetic import SHAPES, TEST_SEED, TRAIN_SEED, SyntheticShapes
from convlens.errors import DataError
from convlens.models.heads import BackboneCut, HeadModel, new_head
from convlens.models.loading import LoadedModel, load_model
from convlens.train.loop import TrainingLog, accuracy, train_epochs

DEFAULT_BACKBONE, DEFAULT_LAYER = "synthetic-shapes", "features"


@dataclass(frozen=True)
class TrainTestImages:
    """Normalised ``train_inputs``/``test_inputs`` ``Tensor[N, 3, H, W]``, class ids
    ``train_labels``/``test_labels`` ``LongTensor[N]``, and the class names."""

    train_inputs: torch.Tensor
    train_labels: torch.Tensor
    test_inputs: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (source, reason) of unreadable files left out


def synthetic_data(preprocess: Preprocess, limit: int, test: int) -> TrainTestImages:
    """The synthetic shapes at ``preprocess``'s size: ``limit`` training, ``test`` held out."""
    size = preprocess.height_width[0]
    train = SyntheticShapes(limit, seed=TRAIN_SEED, size=size).batch()
    held_out = SyntheticShapes(test, seed=TEST_SEED, size=size).batch()
    return TrainTestImages(
        preprocess.normalize(train.display),
        train.labels,
        preprocess.normalize(held_out.display),
        held_out.labels,
        tuple(SHAPES),
    )


def folder_data(
    folder: str | Path, preprocess: Preprocess, limit: int | None, seed: int, val_fraction=0.2
) -> TrainTestImages:
    """An ImageFolder tree, split by ``seed`` into training and validation images (at least
    one of each); unreadable files are left out and listed in ``skipped``."""
    dataset = open_dataset(str(folder), preprocess)
    if dataset.labels is None or dataset.classes is None:
        raise DataError(
            f"{folder} is not an ImageFolder tree; put each class's images in its own "
            "sub-folder (folder/cat/1.jpg, folder/dog/2.jpg)"
        )
    if len(dataset) < 2:
        raise DataError(f"{folder} has {len(dataset)} image(s); training needs at least 2")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    held = max(1, round(val_fraction * len(dataset)))
    train_rows, test_rows = order[held:], order[:held]
    if limit is not None:
        train_rows = train_rows[:limit]
    skipped: list[tuple[str, str]] = []
    inputs, labels = _load_rows(dataset, train_rows, skipped)
    test_inputs, test_labels = _load_rows(dataset, test_rows, skipped)
    return TrainTestImages(
        inputs, labels, test_inputs, test_labels, dataset.classes, tuple(skipped)
    )


def _load_rows(
    dataset, rows: torch.Tensor, skipped: list[tuple[str, str]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The readable images of ``rows`` and their labels; each unreadable one is added to
    ``skipped`` as ``(source, reason)``. `DataError` when none is readable."""
    images, labels = [], []
    for row in rows.tolist():
        _, tensor, label, error = dataset[row]
        if error is not None:
            skipped.append((dataset.sources[row], str(error)))
            continue
        images.append(tensor)
        labels.append(label)
    if not images:
        raise DataError(
            f"none of {len(rows)} images could be read ({skipped[-1][0]}: {skipped[-1][1]})"
        )
    return torch.stack(images), torch.tensor(labels)


def feature_channels(backbone: nn.Module, preprocess: Preprocess) -> int:
    """The channel count ``K`` of ``backbone``'s output on one image of the model's size."""
    height, width = preprocess.height_width
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            features = backbone(torch.zeros(1, 3, height, width))
    finally:
        backbone.train(was_training)
    if features.dim() != 4:
        raise DataError(
            f"the backbone's cut layer gives a {features.dim()}-D output; cut at a "
            "convolutional layer (Tensor[B, K, h, w]), e.g. 'features' of synthetic-shapes"
        )
    return int(features.shape[1])


def build_head_model(
    kind: str,
    backbone: LoadedModel | nn.Module,
    layer: str,
    num_classes: int,
    *,
    freeze_backbone: bool = False,
    seed: int = 0,
    **head_options,
) -> HeadModel:
    """A `HeadModel`: ``backbone`` (loaded for this model alone: it is trained in place;
    a bare module is probed at its `load_model` preprocess size, 224 px unless told) cut at
    ``layer``, with a fresh ``kind`` head initialised from ``seed``."""
    backbone = load_model(backbone)
    cut = BackboneCut(backbone.module, layer)
    channels = feature_channels(cut, backbone.preprocess)
    torch.manual_seed(seed)
    return HeadModel(cut, new_head(kind, channels, num_classes, **head_options), freeze_backbone)


def train_head(
    model: HeadModel,
    data: TrainTestImages,
    *,
    epochs: int = 4,
    batch_size: int = 64,
    learning_rate: float = 4e-3,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    on_epoch=None,
    checkpoint_every: int = 1,
    identity: dict | None = None,
) -> TrainingLog:
    """Train ``model`` in place with its head's loss (cross-entropy; both classifiers for
    ACoL; plus the area loss for SCOUTER) through `train_epochs`."""
    return train_epochs(
        model,
        data.train_inputs,
        data.train_labels,
        loss=model.training_loss,
        hits=lambda logits, labels: (int((logits.argmax(1) == labels).sum()), len(labels)),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
        on_epoch=on_epoch,
        checkpoint_every=checkpoint_every,
        identity=identity,
    )


def head_record(log: TrainingLog, model: HeadModel, images: TrainTestImages, **settings) -> dict:
    """The training record: settings, per-epoch loss and accuracy, held-out accuracy, time,
    seed and versions."""
    from convlens.package import version

    return settings | {
        "head": model.kind,
        "head_config": dict(model.head.config),
        "losses": log.losses,
        "train_accuracy": log.accuracies,
        "test_accuracy": accuracy(model, images.test_inputs, images.test_labels),
        "train_items": len(images.train_inputs),
        "test_items": len(images.test_inputs),
        "train_seconds": log.seconds,
        "threads": torch.get_num_threads(),
        "versions": {
            "convlens": version(),
            "torch": str(torch.__version__),
            "python": platform.python_version(),
        },
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
