"""What activation maximisation maximises (`convlens.features.optimize.visualize`): an
`Objective` maps what one forward pass saw (`Seen`: layer activations, logits, the image)
to one score per image, ``Tensor[B]``; objectives compose with ``+``, ``-`` and scalar
``*``. Class logits, channels, single units, DeepDream, the L2 and total-variation
penalties, and the diversity term of a batch.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from convlens.errors import MethodError, TargetError
from convlens.features.activations import channel_maps
from convlens.features.gram import gram_from_activation
from convlens.layers.find import LayerSpec
from convlens.targets import Contrast, Targets, resolve_targets


@dataclass
class Seen:
    """What one forward pass saw: ``images`` ``Tensor[B, 3, H, W]`` in [0, 1] (before the
    transforms), ``activations`` keyed by each layer as the objectives name it, the model
    ``output`` and the model's class ``labels`` (``None`` when unknown). ``crops``: rows of
    the forward pass per image (`convlens.features.maco` scores several crops of each
    picture, image-major: rows ``b * crops .. (b + 1) * crops - 1`` are picture ``b``)."""

    images: torch.Tensor
    activations: dict[LayerSpec, torch.Tensor]
    output: torch.Tensor
    labels: Sequence[str] | None = None
    crops: int = 1


class Objective:
    """A score per image, ``fn(seen) -> Tensor[B]``, to be maximised; ``layers`` are the
    layers it reads. Compose with ``a + b``, ``a - b``, ``k * a``, ``-a`` (``k`` a real
    number); any other operand raises `MethodError` when the expression is built."""

    def __init__(
        self,
        fn: Callable[[Seen], torch.Tensor],
        layers: Sequence[LayerSpec] = (),
        name: str = "objective",
    ) -> None:
        self.fn, self.layers, self.name = fn, tuple(layers), name

    def __call__(self, seen: Seen) -> torch.Tensor:
        return self.fn(seen)

    def __add__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            raise MethodError(
                f"cannot add a {type(other).__name__} to an Objective; add another Objective "
                "(class_logit, channel, total_variation, ...)"
            )
        return Objective(
            lambda s: self(s) + other(s), self.layers + other.layers, f"{self.name} + {other.name}"
        )

    def __sub__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            raise MethodError(
                f"cannot subtract a {type(other).__name__} from an Objective; subtract "
                "another Objective"
            )
        return self + (-1.0) * other

    def __neg__(self) -> Objective:
        return (-1.0) * self

    def __mul__(self, weight: float) -> Objective:
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise MethodError(
                f"an Objective can be multiplied by a real number only, not a "
                f"{type(weight).__name__}"
            )
        weight = float(weight)
        return Objective(lambda s: weight * self(s), self.layers, f"{weight:g} * {self.name}")

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def class_logit(target: int | str | Contrast) -> Objective:
    """``output[b, k]``: the logit (pre-softmax score) of class ``target``, an id or a class
    name (``"goldfish"``), or ``contrast(i, j)`` for ``output[b, i] - output[b, j]``.
    Resolved by `convlens.targets` once per run (against the model's classes and labels,
    on the first step; `TargetError` naming the allowed range). Ranked targets (``None``,
    ``"top1"``, ``"top3"``, ``contrast("top1", k)``) and callables are refused with
    `TargetError`: they would follow whichever class is on top at each step."""
    try:  # the form now; class names wait for the model's labels
        early = resolve_targets(target, 1)
    except TargetError:
        if not _holds_a_string(target):
            raise
        early = None
    if early is not None:
        _fixed_classes(target, early)
    resolved: dict = {}

    def score(s: Seen) -> torch.Tensor:
        classes = s.output.shape[1] if s.output.dim() == 2 else None
        key = (s.output.shape[0], classes)
        if resolved.get("key") != key or resolved.get("labels") is not s.labels:
            targets = resolve_targets(target, key[0], s.labels, classes)
            resolved.update(key=key, labels=s.labels, targets=_fixed_classes(target, targets))
        return resolved["targets"].score(s.output)

    return Objective(score, (), f"class {target}")


def _holds_a_string(target: object) -> bool:
    """Whether ``target`` (or a side of a contrast) is a string, which may be a class name
    that only the model's labels resolve (on the first step, before any update)."""
    parts = (target.positive, target.negative) if isinstance(target, Contrast) else (target,)
    return any(isinstance(part, str) for part in parts)


def _fixed_classes(target: object, targets: Targets) -> Targets:
    """``targets`` unless they are ranked (``"topK"``, ``None``) or a callable."""
    selectors = [s for s in (targets.positive, targets.negative) if s is not None]
    if targets.fn is not None or any(bool((s.ranks >= 0).any()) for s in selectors):
        raise TargetError(
            f"class_logit takes one fixed class, not {target!r}: a ranked target or a "
            "callable would chase whichever class is on top at each step; give a class id "
            "or name (or contrast(a, b) of two)"
        )
    return targets


def _check_index(index: int, what: str) -> int:
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):
        raise MethodError(f"{what} must be an integer, got {index!r}")
    return int(index)


def channel(layer: LayerSpec, index: int) -> Objective:
    """Mean of channel ``index`` of ``layer`` over positions: ``mean_{i,j} A[b, c, i, j]``."""
    index = _check_index(index, "a channel index")
    return Objective(
        lambda s: channel_maps(s.activations[layer], layer, index).mean((1, 2)),
        (layer,),
        f"{layer}:{index}",
    )


def neuron(
    layer: LayerSpec, index: int, row: int | None = None, col: int | None = None
) -> Objective:
    """One unit ``A[b, c, row, col]`` (default: the centre position)."""
    index = _check_index(index, "a channel index")
    row = None if row is None else _check_index(row, "row")
    col = None if col is None else _check_index(col, "col")

    def score(s: Seen) -> torch.Tensor:
        maps = channel_maps(s.activations[layer], layer, index)
        height, width = maps.shape[1:]
        i = height // 2 if row is None else row
        j = width // 2 if col is None else col
        if not (0 <= i < height and 0 <= j < width):
            raise MethodError(
                f"position ({i}, {j}) is outside layer {layer!r}'s {height}x{width} map: "
                f"row 0..{height - 1}, col 0..{width - 1}"
            )
        return maps[:, i, j]

    return Objective(score, (layer,), f"{layer}:{index}@{row},{col}")


def deepdream(layer: LayerSpec) -> Objective:
    """Layer L2 (DeepDream, Mordvintsev et al. 2015): ``mean A[b]^2`` over channels and
    positions."""
    return Objective(
        lambda s: s.activations[layer].pow(2).flatten(1).mean(1), (layer,), f"deepdream {layer}"
    )


def diversity(layer: LayerSpec, weight: float = 1.0) -> Objective:
    """The diversity term of Olah et al. 2017 for a batch of pictures of one unit:
    ``-w * mean_{j != b} cos(G_b, G_j)`` for picture ``b``, ``G`` the Gram matrix of
    ``layer``'s activations (`convlens.features.gram.gram_from_activation`, flattened; a
    picture scored on several crops: the mean of its crops' Grams). Added to a unit's
    objective it pushes the pictures towards different styles of the same unit. Zero for a
    single picture; ``-w`` when all pictures have the same Gram; returns one value per
    row of the forward pass (``Tensor[B * crops]``)."""
    weight = float(weight)

    def score(s: Seen) -> torch.Tensor:
        grams = gram_from_activation(s.activations[layer]).flatten(1)
        pictures = grams.view(-1, s.crops, grams.shape[1]).mean(1)
        count = pictures.shape[0]
        if count < 2:
            return torch.zeros(grams.shape[0], device=grams.device)
        unit = torch.nn.functional.normalize(pictures, dim=1)
        cosines = unit @ unit.T
        others = (cosines.sum(1) - cosines.diagonal()) / (count - 1)
        return (-weight * others).repeat_interleave(s.crops)

    return Objective(score, (layer,), f"diversity {layer}")


def l2_decay(weight: float = 1.0) -> Objective:
    """``-w * mean (x - 0.5)^2``: keeps pixels near grey (add to an objective)."""
    return Objective(lambda s: -weight * (s.images - 0.5).pow(2).flatten(1).mean(1), (), "l2 decay")


def total_variation(weight: float = 1.0) -> Objective:
    """``-w * mean(|x[i+1, j] - x[i, j]| + |x[i, j+1] - x[i, j]|)``: penalises noise."""

    def score(s: Seen) -> torch.Tensor:
        x = s.images
        rows = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
        cols = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
        return -weight * (rows + cols)

    return Objective(score, (), "total variation")
