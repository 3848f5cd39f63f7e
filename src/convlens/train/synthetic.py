"""Train the benchmark model on the synthetic shapes, and load the shipped weights.

Command (a maintainer tool; writes ``src/convlens/models/weights/synthetic_shapes.pt``)::

    convlens train shapes-model [--train 9000] [--epochs 4] [--out FILE]

``--test-only`` measures the test accuracy of the weights in ``--out`` (default: the
shipped file) without training.

Training data: items ``0 .. train-1`` of ``SyntheticShapes(seed=0)``; test data: items
``0 .. test-1`` of ``seed=1`` (never seen in training). The weights are stored as float16
(about 100 kB) together with the class names, input size and normalisation (which the loader
uses: the file is the one source of truth for a trained model) and the training record.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from convlens.data.synthetic import SHAPES, TEST_SEED, TRAIN_SEED, SyntheticShapes
from convlens.models.shapes import (
    MEAN,
    SIZE,
    STD,
    WEIGHTS_FILE,
    ShapesNet,
    load_shapes_model,
    shapes_preprocess,
)
from convlens.train.loop import accuracy, save_weights, train_classifier


def train_shapes_model(
    train: int = 9000, epochs: int = 4, test: int = 1200, seed: int = 0, verbose: bool = True
) -> tuple[ShapesNet, dict]:
    """Train a fresh `ShapesNet`; returns it (eval mode) and a record of the run."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    train_set = SyntheticShapes(train, seed=TRAIN_SEED, size=SIZE).batch()
    generate_seconds = time.perf_counter() - start
    model = ShapesNet(num_classes=len(SHAPES))
    preprocess = shapes_preprocess()

    def report(epoch: int, loss: float, acc: float) -> None:
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: loss {loss:.4f}, train accuracy {acc:.4f}")

    log = train_classifier(
        model,
        preprocess.normalize(train_set.display),
        train_set.labels,
        epochs=epochs,
        seed=seed,
        on_epoch=report,
    )
    test_accuracy = _held_out_accuracy(model, preprocess, test)
    record = {
        "train_items": train,
        "epochs": epochs,
        "test_items": test,
        "test_seed": TEST_SEED,
        "test_accuracy": test_accuracy,
        "train_seconds": log.seconds,
        "generate_seconds": generate_seconds,
        "threads": torch.get_num_threads(),
    }
    return model, record


def held_out_accuracy(path: str | Path | None = None, test: int = 1200) -> float:
    """Top-1 accuracy in [0, 1] of the weights at ``path`` (default: the shipped file) on
    items ``0 .. test-1`` of the held-out stream (``seed=1``), through the model's own
    preprocess."""
    loaded = load_shapes_model(path=path)
    return _held_out_accuracy(loaded.module, loaded.preprocess, test)


def _held_out_accuracy(model: ShapesNet, preprocess, test: int) -> float:
    size = preprocess.height_width[0]
    held_out = SyntheticShapes(test, seed=TEST_SEED, size=size).batch()
    return accuracy(model, preprocess.normalize(held_out.display), held_out.labels)


def save_shapes_model(model: ShapesNet, record: dict, path: str | Path = WEIGHTS_FILE) -> Path:
    """Write float16 weights plus metadata (classes, size, mean, std, training record)."""
    return save_weights(
        model,
        path,
        classes=list(SHAPES),
        size=SIZE,
        mean=list(MEAN),
        std=list(STD),
        record=record,
    )
