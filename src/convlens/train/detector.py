"""Train the synthetic-scenes detector (`convlens.models.detector.SceneDetector`).

Command (a maintainer tool; writes ``src/convlens/models/weights/synthetic_detector.pt``)::

    convlens train detector-model [--train 3000] [--epochs 8] [--out FILE]

Training data: scenes ``0 .. train-1`` of ``SyntheticScenes(seed=0)``; the backbone starts
from the shipped ``synthetic-scenes`` classifier (same conv stack, same six classes). The
losses are CenterNet's (Zhou et al. 2019): a penalty-reduced focal loss (alpha 2, beta 4) on
the class heatmaps against Gaussian peaks at each object's box centre (std ``max(0.8,
0.15 * sqrt(w h) / 4)`` cells), and L1 losses on the log box size and the centre offset at
each object's centre cell (weights 1 and 1). Adam, one thread by default (about three
minutes for the defaults on an idle core).

Held-out record (`detection_scores`, scenes ``0 .. test-1`` of ``seed=1``): ``top_hit``,
the share of scenes whose first detection has IoU >= 0.5 with the true box of its class
(the object being present); ``recall``, the share of true objects matched by some
detection of their class at IoU >= 0.5; ``mean_iou`` of the first detections with their
class's true box (0 when the class is absent).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from convlens.data.scenes import SCENE_CLASSES, SceneBatch, SyntheticScenes
from convlens.data.synthetic import TEST_SEED, TRAIN_SEED
from convlens.detections import box_iou
from convlens.models.detector import (
    SIZE,
    SIZE_UNIT,
    STRIDE,
    WEIGHTS_FILE,
    WIDTH,
    SceneDetector,
)
from convlens.models.scenes import load_scenes_model
from convlens.train.loop import save_weights


def encode(batch: SceneBatch, cells: int) -> dict[str, torch.Tensor]:
    """The training targets of a `SceneBatch`: ``heat`` ``Tensor[B, C, cells, cells]``
    (Gaussian peaks, 1 at each object's centre cell), and per object (``N`` objects) its
    ``image``, ``cy``, ``cx`` centre cell, ``size`` log(side / SIZE_UNIT) ``Tensor[N, 2]``
    (w, h) and ``offset`` ``Tensor[N, 2]`` (centre inside its cell, in (0, 1))."""
    count, classes = batch.labels.shape
    heat = torch.zeros(count, classes, cells, cells)
    grid = torch.arange(cells, dtype=torch.float32) + 0.5
    images, ys, xs, sizes, offsets = [], [], [], [], []
    for image, k in batch.present.nonzero().tolist():
        x0, y0, x1, y1 = batch.boxes[image, k].tolist()
        w, h = x1 - x0, y1 - y0
        cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
        sigma = max(0.8, 0.15 * math.sqrt(w * h) / STRIDE)
        gauss = torch.exp(-((grid[None, :] - cx) ** 2 + (grid[:, None] - cy) ** 2) / (2 * sigma**2))
        cell_x, cell_y = min(int(cx), cells - 1), min(int(cy), cells - 1)
        gauss[cell_y, cell_x] = 1.0
        heat[image, k] = torch.maximum(heat[image, k], gauss)
        images.append(image)
        ys.append(cell_y)
        xs.append(cell_x)
        sizes.append([math.log(w / SIZE_UNIT), math.log(h / SIZE_UNIT)])
        offsets.append([min(max(cx - cell_x, 0.01), 0.99), min(max(cy - cell_y, 0.01), 0.99)])
    return {
        "heat": heat,
        "image": torch.tensor(images),
        "cy": torch.tensor(ys),
        "cx": torch.tensor(xs),
        "size": torch.tensor(sizes),
        "offset": torch.tensor(offsets),
    }


def detector_loss(model: SceneDetector, images: torch.Tensor, targets: dict) -> torch.Tensor:
    """CenterNet's loss (module docstring) of ``model`` on ``images`` in [0, 1]."""
    heat_logits, sizes, offsets = model.heads(images)
    heat = heat_logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    target = targets["heat"]
    positive = target.eq(1).float()
    focal = -(
        positive * (1 - heat) ** 2 * heat.log()
        + (1 - positive) * (1 - target) ** 4 * heat**2 * (1 - heat).log()
    ).sum() / positive.sum().clamp_min(1)
    at = (targets["image"], slice(None), targets["cy"], targets["cx"])
    size_loss = (sizes[at] - targets["size"]).abs().mean()
    offset_loss = (offsets[at].sigmoid() - targets["offset"]).abs().mean()
    return focal + size_loss + offset_loss


@torch.no_grad()
def detection_scores(model: SceneDetector, test: int = 500) -> dict:
    """``top_hit``, ``recall`` and ``mean_iou`` (module docstring) of ``model`` on held-out
    scenes ``0 .. test-1`` of seed 1 (eval mode, restored)."""
    held_out = SyntheticScenes(test, seed=TEST_SEED, size=SIZE).batch()
    was_training = model.training
    model.eval()
    try:
        found = [d for chunk in held_out.images.split(128) for d in model(chunk)]
    finally:
        model.train(was_training)
    hits, ious, matched, objects = 0, [], 0, 0
    for image, item in enumerate(found):
        present = held_out.present[image]
        for k in present.nonzero()[:, 0].tolist():
            objects += 1
            own = item["labels"] == k
            if bool(own.any()):
                best = box_iou(item["boxes"][own], held_out.boxes[image, k]).max()
                matched += int(best >= 0.5)
        if len(item["boxes"]):
            k = int(item["labels"][0])
            iou = float(box_iou(item["boxes"][:1], held_out.boxes[image, k])[0])
            iou = iou if bool(present[k]) else 0.0
            hits += int(iou >= 0.5)
            ious.append(iou)
        else:
            ious.append(0.0)
    return {
        "top_hit": hits / len(found),
        "recall": matched / max(objects, 1),
        "mean_iou": sum(ious) / len(ious),
    }


def train_detector_model(
    train: int = 3000,
    epochs: int = 8,
    test: int = 500,
    seed: int = 0,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    verbose: bool = True,
) -> tuple[SceneDetector, dict]:
    """Train a `SceneDetector` (module docstring); returns it (eval mode) and a record."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    scenes = SyntheticScenes(train, seed=TRAIN_SEED, size=SIZE).batch()
    targets = encode(scenes, SIZE // STRIDE)
    generate_seconds = time.perf_counter() - start
    model = SceneDetector()
    model.backbone.load_state_dict(load_scenes_model().module.features.state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    steps = epochs * math.ceil(train / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(train, generator=generator)
        total = 0.0
        for first in range(0, train, batch_size):
            rows = order[first : first + batch_size]
            keep = torch.isin(targets["image"], rows)
            remap = torch.full((train,), -1, dtype=torch.long)
            remap[rows] = torch.arange(len(rows))
            chosen = {
                "heat": targets["heat"][rows],
                "image": remap[targets["image"][keep]],
                **{k: targets[k][keep] for k in ("cy", "cx", "size", "offset")},
            }
            images = scenes.images[rows]
            if bool(torch.rand((), generator=generator) < 0.5):  # flips keep the boxes exact
                images, chosen = _flipped(images, chosen)
            loss = detector_loss(model, images, chosen)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(rows)
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: loss {total / train:.4f}")
    train_seconds = time.perf_counter() - start
    model.eval()
    record = detection_scores(model, test) | {
        "train_items": train,
        "epochs": epochs,
        "test_items": test,
        "test_seed": TEST_SEED,
        "train_seconds": train_seconds,
        "generate_seconds": generate_seconds,
        "threads": torch.get_num_threads(),
    }
    return model, record


def _flipped(images: torch.Tensor, targets: dict) -> tuple[torch.Tensor, dict]:
    """``images`` and their targets mirrored left-right."""
    cells = targets["heat"].shape[-1]
    flipped = dict(targets)
    flipped["heat"] = targets["heat"].flip(-1)
    centre = targets["cx"] + targets["offset"][:, 0]  # in cells
    mirrored = cells - centre
    flipped["cx"] = mirrored.floor().long().clamp(0, cells - 1)
    offset = targets["offset"].clone()
    offset[:, 0] = (mirrored - flipped["cx"]).clamp(0.01, 0.99)
    flipped["offset"] = offset
    return images.flip(-1), flipped


def save_detector_model(model: SceneDetector, record: dict, path: str | Path | None = None) -> Path:
    """Write float16 weights, the classes and the training record."""
    return save_weights(
        model,
        path or WEIGHTS_FILE,
        classes=list(SCENE_CLASSES),
        width=WIDTH,
        size=SIZE,
        record=record,
    )
