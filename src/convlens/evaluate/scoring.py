"""Scores that evaluation metrics track on perturbed inputs: the target class is resolved
once, on the unmodified images, and then held fixed (so "top1" keeps meaning the class the
model predicted for the original image, not whatever wins on a perturbed one)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from convlens.attribution.common import pin_ranked_targets
from convlens.errors import MetricError
from convlens.layers.borrow import borrowed_model
from convlens.models.loading import LoadedModel, as_module
from convlens.targets import Targets, resolve_targets

SCORES = ("probability", "sigmoid", "logit")


def pinned_targets_and_rows(
    model: nn.Module | LoadedModel, images: torch.Tensor, target: object
) -> tuple[Targets, torch.Tensor]:
    """``(targets, rows)``: targets whose classes are pinned to ids resolved on ``images``
    (``Tensor[B, C, H, W]``), and the input row of each explained target
    (``Tensor[N, C, H, W]``; ``N = B`` except for top-k targets). Target ``n`` belongs to
    row ``n``."""
    labels = model.labels if isinstance(model, LoadedModel) else None
    targets = resolve_targets(target, len(images), labels=labels)
    rows = targets.expand(images.detach())
    module = as_module(model)
    with borrowed_model(module):
        pinned = pin_ranked_targets(module, rows, targets)
    return replace(pinned, image_index=torch.arange(len(rows))), rows


def check_score(score: str, targets: Targets) -> None:
    if score not in SCORES:
        raise MetricError(f"score must be one of {SCORES}, got {score!r}")
    if score in ("probability", "sigmoid") and (
        targets.fn is not None or targets.negative is not None
    ):
        raise MetricError(
            f"score={score!r} needs a single-class target; use score='logit' with a "
            "callable or contrast target"
        )


def target_score(output: torch.Tensor, targets: Targets, score: str) -> torch.Tensor:
    """``Tensor[N]``: the softmax probability of each row's target class
    (``score="probability"``), its own sigmoid (``"sigmoid"``: multi-label models, one
    independent probability per class) or the raw target score (``score="logit"``)."""
    if score == "logit":
        return targets.score(output).float()
    if score == "sigmoid":
        return targets.score(output).float().sigmoid()
    ids = targets.class_ids(output).to(output.device)
    return output.float().softmax(dim=1).gather(1, ids[:, None])[:, 0]
