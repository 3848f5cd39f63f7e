"""Train the planted-shortcut models and measure their reliance on the cue.

Command (a maintainer tool; writes ``src/convlens/models/weights/shortcut_R.pt`` for each
rate ``R``, loadable as ``shortcut-R``)::

    convlens train shortcut-model [--rate 0.9 ...] [--train 2000] [--epochs 2] [--out-dir DIR]

Each model starts from the shipped multi-label ``synthetic-scenes`` model and is fine-tuned
(multi-label, per-class sigmoid) on scenes ``0 .. train-1`` of
``ShortcutScenes(seed=0, rate=R)`` (`convlens.data.shortcuts`: the cue co-occurs with the
shortcut class, "triangle", at rate ``R``). Every rate sees the same scenes in the same
order; only which of them carry the cue differs.

Reliance (`cue_reliance`), measured on the held-out scenes ``0 .. test-1`` of
``ShortcutScenes(seed=1, rate=0)`` (cue independent of the class) that carry the cue: the
mean drop of the shortcut class's logit when the cue is removed,
``logit_c(image) - logit_c(image_without_cue)``; also split by whether the class is in the
scene, and the held-out mAP on the images as shown.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from convlens.data.scenes import SCENE_CLASSES
from convlens.data.shortcuts import CUE_CHECK, CUE_SIZE, SHORTCUT_CLASS, ShortcutScenes
from convlens.data.synthetic import TEST_SEED, TRAIN_SEED
from convlens.layers.borrow import borrowed_model
from convlens.models.scenes import load_scenes_model
from convlens.models.shapes import SIZE, ShapesNet, shapes_preprocess
from convlens.models.shortcuts import shortcut_command
from convlens.train.loop import train_classifier
from convlens.train.scenes import average_precision, save_scenes_model


@torch.no_grad()
def logits_of(model: torch.nn.Module, preprocess, display, batch_size: int = 256):
    """Logits ``Tensor[B, C]`` of ``model`` (borrowed: eval mode, restored) on display
    pixels uint8[B, H, W, 3]."""
    inputs = preprocess.normalize(display)
    with borrowed_model(model):
        return torch.cat([model(chunk).float() for chunk in inputs.split(batch_size)])


def cue_effects(model: torch.nn.Module, preprocess, batch, shortcut_class: int = SHORTCUT_CLASS):
    """``Tensor[B]``: ``logit_c(image_with_cue) - logit_c(image_without_cue)`` of class
    ``shortcut_class`` for every scene of the `ShortcutBatch` ``batch`` (the cue's
    counterfactual effect were it painted; the scene is the same pixel for pixel outside the
    cue), and the logits ``Tensor[B, C]`` of the images as shown."""
    with_cue = logits_of(model, preprocess, batch.display("images_with_cue"))
    without = logits_of(model, preprocess, batch.display("images_without_cue"))
    shown = torch.where(batch.has_cue[:, None], with_cue, without)
    return with_cue[:, shortcut_class] - without[:, shortcut_class], shown


def cue_reliance(
    model: torch.nn.Module,
    preprocess,
    test: int = 600,
    seed: int = TEST_SEED,
    shortcut_class: int = SHORTCUT_CLASS,
) -> dict:
    """The model's reliance on the cue, measured on scenes ``0 .. test-1`` of
    ``ShortcutScenes(seed=seed, rate=0)`` (see the module docstring): ``reliance`` (mean
    logit drop over the scenes carrying the cue), ``reliance_class_present`` and
    ``reliance_class_absent``, ``cue_scenes`` (how many carried it) and ``test_map``."""
    size = preprocess.height_width[0]
    held_out = ShortcutScenes(test, seed=seed, rate=0.0, size=size).batch()
    effects, shown = cue_effects(model, preprocess, held_out, shortcut_class)
    cued = held_out.has_cue
    present = held_out.labels[:, shortcut_class] > 0
    per_class = [
        average_precision(shown[:, c], held_out.labels[:, c] > 0) for c in range(shown.shape[1])
    ]
    return {
        "reliance": float(effects[cued].mean()),
        "reliance_class_present": float(effects[cued & present].mean()),
        "reliance_class_absent": float(effects[cued & ~present].mean()),
        "cue_scenes": int(cued.sum()),
        "test_map": sum(per_class) / len(per_class),
        "test_items": test,
        "test_seed": seed,
    }


def train_shortcut_model(
    rate: float,
    train: int = 2000,
    epochs: int = 2,
    test: int = 600,
    seed: int = 0,
    learning_rate: float = 2e-3,
    verbose: bool = True,
) -> tuple[ShapesNet, dict]:
    """Fine-tune a copy of ``synthetic-scenes`` on shortcut scenes at ``rate``; returns the
    model (eval mode) and its record (reliance, settings, the command that remakes it)."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    data = ShortcutScenes(train, seed=TRAIN_SEED, rate=rate, size=SIZE).batch()
    generate_seconds = time.perf_counter() - start
    model = load_scenes_model().module  # a fresh module: the shipped file is not touched
    preprocess = shapes_preprocess(SIZE)

    def report(epoch: int, loss: float, exact: float) -> None:
        if verbose:
            print(f"rate {rate}: epoch {epoch + 1}/{epochs}: loss {loss:.4f}, exact {exact:.4f}")

    log = train_classifier(
        model,
        preprocess.normalize(data.display()),
        data.labels,
        epochs=epochs,
        seed=seed,
        learning_rate=learning_rate,
        on_epoch=report,
        multilabel=True,
    )
    _round_to_float16(model)  # the reliance stored is that of the shipped (float16) weights
    record = cue_reliance(model, preprocess, test) | {
        "rate": float(rate),
        "seed": seed,
        "command": shortcut_command(rate, train, epochs, test, seed, learning_rate),
        "shortcut_class": SHORTCUT_CLASS,
        "shortcut_class_name": SCENE_CLASSES[SHORTCUT_CLASS],
        "cue": f"{CUE_SIZE}x{CUE_SIZE} px black/white checkerboard of {CUE_CHECK} px squares",
        "train_items": train,
        "train_cue_share": float(data.has_cue.float().mean()),
        "epochs": epochs,
        "learning_rate": learning_rate,
        "init": "synthetic-scenes",
        "train_seconds": log.seconds,
        "generate_seconds": generate_seconds,
        "threads": torch.get_num_threads(),
    }
    return model, record


@torch.no_grad()
def _round_to_float16(model: torch.nn.Module) -> None:
    """Round every floating-point parameter and buffer to float16 precision in place (what
    `save_weights` stores), so measurements describe the file."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point():
            tensor.copy_(tensor.half().float())


def save_shortcut_model(model: ShapesNet, record: dict, path: str | Path) -> Path:
    """Write float16 weights plus classes, width, size, mean, std and the record: a
    fine-tuned scenes model, stored as `save_scenes_model` stores one."""
    return save_scenes_model(model, record, path)
