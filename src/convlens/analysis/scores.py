"""The one forward pass every analysis scores with: true-class probabilities and top-1
classes of a batch, on a borrowed model."""

from __future__ import annotations

import torch
from torch import nn

from convlens.errors import DataError
from convlens.layers import borrowed_model
from convlens.models.devices import model_input


@torch.no_grad()
def class_scores(
    module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probability, predicted)`` of ``inputs`` ``Tensor[N, 3, H, W]``: the softmax
    probability of each row's class ``labels[n]`` (``Tensor[N]`` in [0, 1]) and the top-1
    class (``LongTensor[N]``), both on the CPU. The model runs in eval mode (borrowed)."""
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    probabilities, predicted = [], []
    with borrowed_model(module):
        for chunk, classes in zip(inputs.split(batch_size), labels.split(batch_size), strict=True):
            logits = module(model_input(module, chunk))
            probabilities.append(true_class_probability(logits, classes))
            predicted.append(logits.argmax(1).cpu())
    return torch.cat(probabilities), torch.cat(predicted)


def checked_labels(inputs: torch.Tensor, labels: object) -> torch.Tensor:
    """``labels`` as ``LongTensor[N]`` for ``inputs`` ``Tensor[N, ...]``: `DataError` unless
    there is one integer class id per image and at least one image."""
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DataError(
            f"labels must be integer class ids, got {labels.dtype}; pass labels.long() "
            "(or torch.tensor(ids))"
        )
    if labels.dim() != 1 or len(inputs) != len(labels) or len(inputs) == 0:
        raise DataError(
            f"{len(inputs)} images but labels of shape {tuple(labels.shape)}; pass one label each"
        )
    return labels.long()


def true_class_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax probability of class ``labels[n]`` in row n of ``logits`` ``Tensor[B, C]``:
    ``Tensor[B]`` in [0, 1] on the CPU. `DataError` for an output that is not ``[B, C]`` or
    a label outside ``0 .. C-1``."""
    logits = logits.detach().float().cpu()
    if logits.dim() != 2:
        raise DataError(
            f"the model outputs {tuple(logits.shape)}, not class scores [B, C]; "
            "these analyses need a classifier"
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise DataError(
            f"class ids {int(labels.min())} .. {int(labels.max())} but the model has "
            f"{logits.shape[1]} classes; pass images labelled with the model's classes"
        )
    return logits.softmax(1)[torch.arange(len(labels)), labels.cpu()]
