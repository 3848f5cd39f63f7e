"""A small, seeded supervised training loop for data that fits in memory: `train_epochs`
(any loss; resumable checkpoints, progress bar) and `train_classifier` on top of it."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from convlens.data.progress import is_terminal
from convlens.errors import DataError
from convlens.files import torch_save


@dataclass
class TrainingLog:
    """Per-epoch mean training loss and accuracy, and the wall-clock seconds spent."""

    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_epochs(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    hits: Callable[[torch.Tensor, torch.Tensor], tuple[int, int]],
    epochs: int = 4,
    batch_size: int = 64,
    learning_rate: float = 4e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    on_epoch: Callable[[int, float, float], None] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    checkpoint_every: int = 1,
    identity: dict | None = None,
) -> TrainingLog:
    """Train ``model`` in place on ``(inputs, targets)`` with AdamW and a one-cycle schedule.

    Args:
        inputs: ``Tensor[N, ...]`` as the model takes them; ``targets``: ``Tensor[N, ...]``.
        loss: ``loss(output, targets_of_batch)`` -> scalar tensor.
        hits: ``hits(output, targets_of_batch)`` -> ``(right, counted)``; the epoch's
            accuracy is ``sum right / sum counted`` (images for a classifier, pixels for a
            segmentation model).
        seed: seeds the shuffling order (and nothing else: initialise the model yourself).
        on_epoch: called as ``on_epoch(epoch, mean_loss, accuracy)`` after each epoch.
        checkpoint: a file rewritten after every epoch with the model, optimizer, schedule
            and shuffling state and the log so far. With ``resume=True`` and an existing
            file, training continues after its last epoch and ends with exactly the weights
            an uninterrupted run gets (settings must match the file's: `DataError` if not).
        checkpoint_every: write the checkpoint after every this many epochs (and after the
            last one); a resumed run still ends with the uninterrupted run's weights.
        progress: a tqdm bar over the steps (with the running loss).
        identity: what else makes the model what it is (its head, backbone, data: plain
            values), stored in the checkpoint; resuming with other values is refused.

    Leaves the model in eval mode. Returns a `TrainingLog` (all epochs, resumed ones too).
    """
    if len(inputs) != len(targets):
        raise DataError(
            f"{len(inputs)} inputs but {len(targets)} targets; pass one target per input"
        )
    if epochs < 1 or batch_size < 1 or checkpoint_every < 1:
        raise DataError(
            "epochs, batch_size and checkpoint_every must be >= 1, got "
            f"{epochs}, {batch_size} and {checkpoint_every}"
        )
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = (len(inputs) + batch_size - 1) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), learning_rate, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, learning_rate, total_steps=epochs * steps_per_epoch
    )
    settings = {
        "items": len(inputs),
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "weight_decay": weight_decay,
        "seed": seed,
    } | ({"model": identity} if identity is not None else {})
    log, first = TrainingLog(), 0
    if checkpoint is not None and resume and Path(checkpoint).is_file():
        first = _restore(Path(checkpoint), settings, model, optimizer, schedule, generator, log)
    begun = time.perf_counter() - log.seconds
    bar = tqdm(
        total=epochs * steps_per_epoch,
        initial=first * steps_per_epoch,
        disable=not progress or not is_terminal(sys.stderr),  # logs get the epoch lines
        desc="train",
        unit="step",
        leave=False,
    )
    model.train()
    try:
        for epoch in range(first, epochs):
            order = torch.randperm(len(inputs), generator=generator)
            total_loss, right, counted = 0.0, 0, 0
            for batch in order.split(batch_size):
                output = model(inputs[batch])
                value = loss(output, targets[batch])
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                schedule.step()
                total_loss += float(value.detach()) * len(batch)
                batch_right, batch_counted = hits(output.detach(), targets[batch])
                right, counted = right + batch_right, counted + batch_counted
                bar.update(1)
                bar.set_postfix(loss=f"{float(value.detach()):.4f}", refresh=False)
            log.losses.append(total_loss / len(inputs))
            log.accuracies.append(right / max(1, counted))
            log.seconds = time.perf_counter() - begun
            if checkpoint is not None and (
                (epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs
            ):
                _save_checkpoint(
                    Path(checkpoint),
                    settings,
                    epoch + 1,
                    model,
                    optimizer,
                    schedule,
                    generator,
                    log,
                )
            if on_epoch is not None:
                on_epoch(epoch, log.losses[-1], log.accuracies[-1])
    finally:
        bar.close()
        model.eval()
    log.seconds = time.perf_counter() - begun
    return log


def _save_checkpoint(
    path: Path, settings, epochs_done, model, optimizer, schedule, generator, log
) -> None:
    """Write the training state to ``path`` all or nothing (`convlens.files.torch_save`: a
    partial file never replaces it, and a full disk is `DiskFullError`)."""
    state = {
        "settings": settings,
        "epochs_done": epochs_done,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "generator": generator.get_state(),
        "log": {"losses": log.losses, "accuracies": log.accuracies, "seconds": log.seconds},
    }
    torch_save(state, path)


def _changed_settings(stored: dict, given: dict) -> str:
    """``"upsample: bilinear -> nearest, ..."``: the settings (the model's nested under
    ``model``) that differ between a checkpoint's ``stored`` and this run's ``given``."""
    flat = [
        {**{k: v for k, v in d.items() if k != "model"}, **(d.get("model") or {})}
        for d in (stored, given)
    ]
    keys = sorted(set(flat[0]) | set(flat[1]))
    return ", ".join(
        f"{k}: {flat[0].get(k)!r} -> {flat[1].get(k)!r}"
        for k in keys
        if flat[0].get(k) != flat[1].get(k)
    )


def _restore(path: Path, settings, model, optimizer, schedule, generator, log) -> int:
    """Load a checkpoint into the training objects; returns the epochs it had done."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file: say which and what to do
        raise DataError(
            f"cannot read the checkpoint {path} ({error}); delete it to start afresh"
        ) from error
    if state.get("settings") != settings:
        changed = _changed_settings(state.get("settings") or {}, settings)
        raise DataError(
            f"the checkpoint {path} was written with other settings ({changed}); resume "
            "with the same settings, or delete it (or leave out --resume) to start afresh"
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:  # another architecture than the one it was written for
        raise DataError(
            f"the checkpoint {path} holds weights of another model ({str(error)[:200]}); "
            "resume with the settings it was written with, or leave out --resume"
        ) from error
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    generator.set_state(state["generator"])
    log.losses[:] = state["log"]["losses"]
    log.accuracies[:] = state["log"]["accuracies"]
    log.seconds = state["log"]["seconds"]
    return int(state["epochs_done"])


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
    multilabel: bool = False,
) -> TrainingLog:
    """Train ``model`` in place with AdamW, cross-entropy and a one-cycle learning-rate schedule.

    Args:
        images: inputs as the model takes them, ``Tensor[N, 3, H, W]``.
        labels: class ids ``Tensor[N]``; with ``multilabel=True`` multi-hot float
            ``Tensor[N, C]`` instead, trained with per-class sigmoid cross-entropy
            (``binary_cross_entropy_with_logits``), and the accuracy an image counts
            towards is exact match of ``logits > 0`` with the labels.
        seed: seeds the shuffling order (and nothing else: initialise the model yourself).
        on_epoch: called as ``on_epoch(epoch, mean_loss, accuracy)`` after each epoch.

    Leaves the model in eval mode. Returns a `TrainingLog`.
    """
    if len(images) != len(labels):
        raise DataError(
            f"{len(images)} images but {len(labels)} labels; pass one class id per image"
        )
    return train_epochs(
        model,
        images,
        labels,
        loss=lambda logits, batch: _loss(logits, batch, multilabel),
        hits=lambda logits, batch: (_hits(logits, batch, multilabel), len(batch)),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        seed=seed,
        on_epoch=on_epoch,
    )


def _loss(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool) -> torch.Tensor:
    if multilabel:
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
    return nn.functional.cross_entropy(logits, labels)


def _hits(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool) -> int:
    if multilabel:
        return int(((logits > 0) == (labels > 0.5)).all(1).sum())
    return int((logits.argmax(1) == labels).sum())


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


def save_weights(model: nn.Module, path: str | Path, **metadata) -> Path:
    """Write ``model``'s weights (floating-point tensors as float16) to ``path`` as
    ``{"state_dict": ..., **metadata}`` (parent folders made); returns the path."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    return torch_save({"state_dict": state, **metadata}, path)
