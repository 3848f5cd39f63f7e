"""A small, seeded supervised training loop for classifiers that fit in memory."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from convlens.errors import DataError


@dataclass
class TrainingLog:
    """Per-epoch mean training loss and accuracy, and the wall-clock seconds spent."""

    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 4,
    batch_size: int = 64,
    learning_rate: float = 4e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> TrainingLog:
    """Train ``model`` in place with AdamW, cross-entropy and a one-cycle learning-rate schedule.

    Args:
        images: inputs as the model takes them, ``Tensor[N, 3, H, W]``.
        labels: class ids ``Tensor[N]``.
        seed: seeds the shuffling order (and nothing else: initialise the model yourself).
        on_epoch: called as ``on_epoch(epoch, mean_loss, accuracy)`` after each epoch.

    Leaves the model in eval mode. Returns a `TrainingLog`.
    """
    if len(images) != len(labels):
        raise DataError(
            f"{len(images)} images but {len(labels)} labels; pass one class id per image"
        )
    if epochs < 1 or batch_size < 1:
        raise DataError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), learning_rate, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, learning_rate, total_steps=epochs * steps_per_epoch
    )
    log, start = TrainingLog(), time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total_loss, correct = 0.0, 0
        for batch in order.split(batch_size):
            logits = model(images[batch])
            loss = nn.functional.cross_entropy(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach()) * len(batch)
            correct += int((logits.argmax(1) == labels[batch]).sum())
        log.losses.append(total_loss / len(images))
        log.accuracies.append(correct / len(images))
        if on_epoch is not None:
            on_epoch(epoch, log.losses[-1], log.accuracies[-1])
    model.eval()
    log.seconds = time.perf_counter() - start
    return log


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256):
    """Fraction of ``images`` whose top class equals ``labels`` (model put in eval mode
    for the call and restored)."""
    was_training = model.training
    model.eval()
    try:
        hits = sum(
            int((model(chunk).argmax(1) == target).sum())
            for chunk, target in zip(
                images.split(batch_size), labels.split(batch_size), strict=True
            )
        )
    finally:
        model.train(was_training)
    return hits / max(1, len(labels))
