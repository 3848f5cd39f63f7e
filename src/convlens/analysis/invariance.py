"""Invariance curves (Zeiler & Fergus 2014, figure 5): transform images by vertical
translation, scaling or rotation and measure, per amount, how far each chosen layer's
features move and the probability of the true class.

The feature distance of image ``x`` at layer ``l`` for transform ``T`` is the relative
Euclidean distance ``||f_l(T x) - f_l(x)|| / ||f_l(x)||`` (0: unchanged; 1: as far as the
features are from zero). Transforms act on the normalised input; pixels that come from
outside the image are 0 there, the dataset mean colour:

- ``translate``: shift down by ``amount`` pixels (up when negative), exact integer shifts;
- ``scale``: zoom by ``amount`` about the centre (> 1 enlarges, < 1 shrinks), bilinear;
- ``rotate``: rotate by ``amount`` degrees anticlockwise about the centre, bilinear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convlens.analysis.scores import checked_labels, true_class_probability
from convlens.errors import DataError
from convlens.features.activations import stage_layers
from convlens.layers import borrowed_model, capture
from convlens.layers.find import LayerSpec
from convlens.models.devices import model_input
from convlens.models.loading import LoadedModel, as_module

TRANSFORMS = ("translate", "scale", "rotate")
SHIFT_FRACTIONS = (-0.25, -0.1875, -0.125, -0.0625, 0.0, 0.0625, 0.125, 0.1875, 0.25)
DEFAULT_AMOUNTS = {
    "scale": [0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8],
    "rotate": [0, 45, 90, 135, 180, 225, 270, 315, 360],
}


def default_amounts(kind: str, height: int) -> list[float]:
    """The amounts swept by default: shifts of -1/4 .. 1/4 of the image ``height`` in 9
    steps (Zeiler & Fergus: -60 .. 60 pixels of 224), zoom 0.6 .. 1.8, rotation 0 .. 360
    degrees in steps of 45."""
    if kind == "translate":
        return [float(round(f * height)) for f in SHIFT_FRACTIONS]
    return [float(a) for a in DEFAULT_AMOUNTS[kind]]


def transform(images: torch.Tensor, kind: str, amount: float) -> torch.Tensor:
    """``images`` ``Tensor[B, C, H, W]`` moved by ``kind`` (`TRANSFORMS`) by ``amount``
    (pixels, a zoom factor, or degrees); new pixels are 0. A new tensor."""
    if kind not in TRANSFORMS:
        raise DataError(f"unknown transform {kind!r}; use one of: {', '.join(TRANSFORMS)}")
    if kind == "translate":
        return _shift_down(images, int(round(amount)))
    if kind == "scale":
        if amount <= 0:
            raise DataError(f"a scale factor must be > 0, got {amount}")
        matrix = torch.tensor([[1 / amount, 0.0], [0.0, 1 / amount]])
    else:
        angle = math.radians(amount)
        cos, sin = math.cos(angle), math.sin(angle)
        height, width = images.shape[-2:]  # rotate in pixels, not in [-1, 1] units
        matrix = torch.tensor([[cos, -sin * height / width], [sin * width / height, cos]])
    return _resample(images, matrix)


def _shift_down(images: torch.Tensor, pixels: int) -> torch.Tensor:
    shifted = torch.zeros_like(images)
    height = images.shape[-2]
    if abs(pixels) < height:
        if pixels >= 0:
            shifted[..., pixels:, :] = images[..., : height - pixels, :]
        else:
            shifted[..., :pixels, :] = images[..., -pixels:, :]
    return shifted


def _resample(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Output pixel at normalised position ``p`` reads input position ``matrix @ p`` (the
    identity matrix returns an exact copy)."""
    if torch.equal(matrix, torch.eye(2)):
        return images.clone()
    theta = torch.cat([matrix, torch.zeros(2, 1)], dim=1).to(images)
    theta = theta.expand(len(images), 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass(frozen=True)
class InvarianceCurves:
    """One transform's curves: ``amounts`` ``[A]``; ``distances[layer]`` ``Tensor[A, N]``
    relative feature distances (>= 0); ``probabilities`` ``Tensor[A, N]`` of the true
    class; ``original`` ``Tensor[N]`` its probability on the untransformed images."""

    kind: str
    amounts: list[float]
    layers: list[str]
    distances: dict[str, torch.Tensor]
    probabilities: torch.Tensor
    original: torch.Tensor
    sources: list[str]

    def record(self) -> dict:
        """JSON-ready: per amount the mean distance per layer and mean probability."""
        return {
            "transform": self.kind,
            "amounts": self.amounts,
            "mean_distance": {k: v.mean(1).tolist() for k, v in self.distances.items()},
            "mean_probability": self.probabilities.mean(1).tolist(),
            "original_probability": self.original.tolist(),
            "sources": self.sources,
        }


def invariance_curves(
    model: nn.Module | LoadedModel,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    layers: Sequence[LayerSpec] | None,
    kind: str,
    amounts: Sequence[float] | None = None,
    *,
    sources: Sequence[str] | None = None,
    batch_size: int = 32,
) -> InvarianceCurves:
    """Feature distance at each of ``layers`` and true-class probability for ``inputs``
    ``Tensor[N, 3, H, W]`` (normalised) with class ids ``labels`` ``LongTensor[N]``, under
    ``kind`` (`TRANSFORMS`) by each of ``amounts`` (default `default_amounts`). ``layers``
    None: the first and the last stage (`convlens.features.stage_layers`). The model is
    borrowed (eval mode, hooks removed).

    Example:
        >>> from convlens import load_model
        >>> from convlens.analysis import labelled_images
        >>> model = load_model("synthetic-shapes")
        >>> data = labelled_images("shapes-test:20", model.preprocess)
        >>> curves = invariance_curves(model, data.inputs, data.labels, None, "rotate")
        >>> curves.probabilities.shape  # [amounts, images]
        torch.Size([9, 20])
    """
    labels = checked_labels(inputs, labels)
    if layers is not None and not layers:
        raise DataError("pass at least one layer to measure feature distances at")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    transform(inputs[:1], kind, 1.0)  # checks the kind before any work
    amounts = default_amounts(kind, inputs.shape[-2]) if amounts is None else list(amounts)
    module = as_module(model)
    if layers is None:
        stages = stage_layers(module, model_input(module, inputs[:1])[0])
        layers = list(dict.fromkeys([stages[0], stages[-1]]))
    reference, original, names = _features(module, inputs, labels, layers, batch_size)
    distances = {name: [] for name in names}
    probabilities = []
    for amount in amounts:
        moved = transform(inputs, kind, amount)
        features, probability, _ = _features(module, moved, labels, names, batch_size)
        for name in names:
            distances[name].append(_relative_distance(features[name], reference[name]))
        probabilities.append(probability)
    return InvarianceCurves(
        kind,
        [float(a) for a in amounts],
        names,
        {name: torch.stack(rows) for name, rows in distances.items()},
        torch.stack(probabilities),
        original,
        list(sources) if sources is not None else [str(i) for i in range(len(inputs))],
    )


@torch.no_grad()
def _features(module: nn.Module, inputs, labels, layers, batch_size):
    """One pass: each layer's output flattened per image (``{name: Tensor[N, D]}``), the
    true-class probabilities ``Tensor[N]`` and the layer names, all on the CPU."""
    parts: dict[str, list[torch.Tensor]] = {}
    probabilities = []
    with borrowed_model(module), capture(module, list(layers)) as cap:
        for chunk, classes in zip(inputs.split(batch_size), labels.split(batch_size), strict=True):
            logits = module(model_input(module, chunk))
            probabilities.append(true_class_probability(logits, classes))
            for name in cap.names:
                parts.setdefault(name, []).append(cap.activation(name).flatten(1).float().cpu())
            cap.clear()
    features = {name: torch.cat(rows) for name, rows in parts.items()}
    return features, torch.cat(probabilities), list(cap.names)


def _relative_distance(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``||f - f0|| / ||f0||`` per row (0 where ``f0`` is zero and ``f`` equals it)."""
    norm = reference.norm(dim=1)
    gap = (features - reference).norm(dim=1)
    return torch.where(norm > 0, gap / norm.clamp_min(1e-12), gap)
