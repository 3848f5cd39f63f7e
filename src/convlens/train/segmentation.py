"""Train the DeepLabv3+-style `SegmentationNet` on the multi-object scenes, from true masks or
from CAM pseudo-masks of a multi-label classifier (weak supervision), and score it.

Data: scenes ``0 .. train-1`` of ``SyntheticScenes(seed=0)`` for training, scenes
``0 .. test-1`` of ``seed=1`` (never seen) for the held-out scores. Label maps hold 0 for
background and ``k + 1`` for shape class ``k`` (`convlens.data.scenes`).

CAM pseudo-masks (`cam_pseudo_masks`), from a classifier and each image's class labels only:

1. for every class present in the image, its CAM (Zhou et al. 2016) at input resolution,
   rectified and divided by its maximum (so each lies in [0, 1]);
2. optionally refined by the image's own colour affinities (no CRF): ``refine_steps`` rounds
   of ``s <- W s`` with ``W_ij`` proportional to ``exp(-|I_i - I_j|^2 / (2 sigma^2))`` over a
   ``(2 radius + 1)^2`` window, rows summing to 1, so scores spread within regions of one
   colour and stop at colour edges;
3. each pixel takes the present class of the highest score, or background where no score
   reaches ``threshold``;
4. per class, only the ``components`` largest connected components are kept (the rest turns
   background).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from convlens.attribution.explain import explain
from convlens.data.scenes import SCENE_CLASSES, SyntheticScenes
from convlens.errors import DataError
from convlens.localize.segmentation import ConfusionMatrix
from convlens.models.segmentation import SegmentationNet
from convlens.models.shapes import shapes_preprocess
from convlens.train.loop import TrainingLog, train_epochs

SEGMENTATION_CLASSES = ("background", *SCENE_CLASSES)
IGNORE_INDEX = 255


@dataclass(frozen=True)
class SceneTensors:
    """Scenes as a model sees them: ``inputs`` normalised ``Tensor[N, 3, H, W]``,
    ``label_maps`` ``LongTensor[N, H, W]``, ``labels`` multi-hot ``Tensor[N, C]``,
    ``images`` in [0, 1] ``Tensor[N, 3, H, W]`` (for colour affinities and pictures),
    ``display`` the same as ``uint8[N, H, W, 3]`` (what any model's preprocess takes)."""

    inputs: torch.Tensor
    label_maps: torch.Tensor
    labels: torch.Tensor
    images: torch.Tensor
    display: np.ndarray


def scene_tensors(count: int, seed: int, size: int = 64, start: int = 0) -> SceneTensors:
    """Scenes ``start .. start + count - 1`` of stream ``seed`` as `SceneTensors`."""
    batch = SyntheticScenes(count, seed=seed, size=size, start=start).batch()
    inputs = shapes_preprocess(size).normalize(batch.display)
    return SceneTensors(inputs, batch.label_maps, batch.labels, batch.images, batch.display)


def train_segmentation(
    model: nn.Module,
    inputs: torch.Tensor,
    label_maps: torch.Tensor,
    *,
    epochs: int = 8,
    batch_size: int = 32,
    learning_rate: float = 4e-3,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    on_epoch=None,
    checkpoint_every: int = 1,
    identity: dict | None = None,
) -> TrainingLog:
    """Train ``model`` in place with per-pixel cross-entropy (pixels labelled
    `IGNORE_INDEX` count nowhere) through `train_epochs` (checkpoints, resume, progress bar).
    ``inputs``: ``Tensor[N, 3, H, W]``; ``label_maps``: ``LongTensor[N, H, W]``. The log's
    accuracies are training pixel accuracies."""
    if label_maps.dim() != 3 or label_maps.shape[-2:] != inputs.shape[-2:]:
        raise DataError(
            f"label maps must be LongTensor[N, H, W] at the input size {tuple(inputs.shape[-2:])}, "
            f"got {tuple(label_maps.shape)}"
        )

    def loss(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, truth, ignore_index=IGNORE_INDEX)

    def hits(logits: torch.Tensor, truth: torch.Tensor) -> tuple[int, int]:
        counted = truth != IGNORE_INDEX
        return int(((logits.argmax(1) == truth) & counted).sum()), int(counted.sum())

    return train_epochs(
        model,
        inputs,
        label_maps,
        loss=loss,
        hits=hits,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        on_epoch=on_epoch,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
        checkpoint_every=checkpoint_every,
        identity=identity,
    )


@torch.no_grad()
def segmentation_report(
    model: nn.Module, inputs: torch.Tensor, label_maps: torch.Tensor, num_classes: int
) -> dict:
    """`convlens.localize.segmentation_scores` of ``model``'s argmax on ``inputs`` against
    ``label_maps``, accumulated in chunks of 64 (model in eval mode, then restored)."""
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
    try:
        for chunk, truth in zip(inputs.split(64), label_maps.split(64), strict=True):
            matrix.update(model(chunk).argmax(1), truth)
    finally:
        model.train(was_training)
    return matrix.scores()


def cam_pseudo_masks(
    classifier: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    images: torch.Tensor | None = None,
    *,
    threshold: float = 0.3,
    components: int = 1,
    refine_steps: int = 0,
    radius: int = 2,
    sigma: float = 0.1,
    chunk: int = 64,
) -> torch.Tensor:
    """Label maps ``LongTensor[N, H, W]`` (0 background, ``k + 1`` class ``k``) from the CAMs
    of ``classifier`` (a GAP + linear model) for the classes marked in ``labels`` (multi-hot
    ``Tensor[N, C]``); steps in the module docstring. ``images`` (``Tensor[N, 3, H, W]`` in
    [0, 1]) are needed for ``refine_steps > 0``. Runs ``chunk`` images at a time (the
    refinement holds ``C * (2 radius + 1)^2`` values per pixel)."""
    if refine_steps and images is None:
        raise DataError("colour refinement needs the images in [0, 1]; pass images=")
    parts = []
    for rows in torch.arange(len(inputs)).split(chunk):
        scores = _class_cams(classifier, inputs[rows], labels[rows] > 0.5)
        if refine_steps:
            scores = colour_affinity_refine(images[rows], scores, refine_steps, radius, sigma)
        best, label = (scores * (labels[rows] > 0.5)[:, :, None, None]).max(1)
        parts.append(torch.where(best >= threshold, label + 1, 0))
    return keep_largest_components(torch.cat(parts), components)


def _class_cams(classifier: nn.Module, inputs: torch.Tensor, present: torch.Tensor):
    """``Tensor[N, C, H, W]``: each present class's CAM, rectified, divided by its maximum
    (0 for absent classes)."""
    scores = torch.zeros(len(inputs), present.shape[1], *inputs.shape[-2:])
    for cls in range(present.shape[1]):
        rows = present[:, cls].nonzero()[:, 0]
        if len(rows):
            maps = explain(classifier, inputs[rows], method="cam", target=cls).maps.clamp_min(0)
            peak = maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
            scores[rows, cls] = maps / peak
    return scores


def colour_affinity_refine(
    images: torch.Tensor, scores: torch.Tensor, steps: int, radius: int = 2, sigma: float = 0.1
) -> torch.Tensor:
    """``steps`` rounds of ``scores <- W scores``: each pixel's scores ``Tensor[N, C, H, W]``
    become the average over its ``(2 radius + 1)^2`` window weighted by colour similarity
    ``exp(-|I_i - I_j|^2 / (2 sigma^2))`` of ``images`` ``Tensor[N, 3, H, W]`` in [0, 1]
    (pixels outside the image take no part)."""
    size = 2 * radius + 1
    height, width = images.shape[-2:]
    patches = F.unfold(images, size, padding=radius).view(len(images), 3, size * size, -1)
    centre = images.flatten(2)[:, :, None]
    inside = F.unfold(torch.ones(1, 1, height, width), size, padding=radius)
    weights = torch.exp(-(patches - centre).square().sum(1) / (2 * sigma**2)) * inside
    weights = weights / weights.sum(1, keepdim=True)
    channels = scores.shape[1]
    for _ in range(steps):
        unfolded = F.unfold(scores, size, padding=radius).view(len(scores), channels, size**2, -1)
        scores = (unfolded * weights[:, None]).sum(2).view_as(scores)
    return scores


def keep_largest_components(label_maps: torch.Tensor, components: int) -> torch.Tensor:
    """``label_maps`` with each class's pixels cut to its ``components`` largest
    8-connected components (the rest set to background 0)."""
    if components < 1:
        raise DataError(f"components must be >= 1, got {components}")
    kept = label_maps.clone()
    structure = np.ones((3, 3), dtype=bool)
    for image, labels in enumerate(label_maps.numpy()):
        for cls in np.unique(labels[labels > 0]):
            parts, count = ndimage.label(labels == cls, structure)
            if count <= components:
                continue
            sizes = np.bincount(parts.ravel())[1:]
            drop = np.argsort(sizes)[::-1][components:] + 1
            kept[image][torch.from_numpy(np.isin(parts, drop))] = 0
    return kept


def new_segmentation_model(
    width: int = 16, output_stride: int = 16, upsample: str = "bilinear", seed: int = 0
) -> SegmentationNet:
    """A freshly initialised `SegmentationNet` for the scene classes (background + 6)."""
    torch.manual_seed(seed)
    return SegmentationNet(len(SEGMENTATION_CLASSES), width, output_stride, upsample)


def run_record(log: TrainingLog, **settings) -> dict:
    """The training record saved with a model: settings, per-epoch loss and pixel accuracy,
    seconds, torch threads and the machine's load average while it ran."""
    return settings | {
        "losses": log.losses,
        "train_pixel_accuracy": log.accuracies,
        "train_seconds": log.seconds,
        "threads": torch.get_num_threads(),
        "load_average_1min": _load_average(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
