"""Localising classification heads on any backbone, and their trained-file format.

A `HeadModel` is ``head(backbone(images))``: the backbone is any network cut at a named
layer (`BackboneCut`), whose output ``F`` (``Tensor[B, K, h, w]``) the head turns into
logits ``Tensor[B, C]``. Each head can also give its class maps (``Tensor[B, h, w]`` for
one class per row), which `convlens.attribution.head_maps` registers as attribution methods.
Formulas and papers: docs/methods.md ("Heads that explain themselves").

- `CamHead` (Zhou et al. 2016): ``y_c = sum_k w_ck mean_xy F_k + b_c``; map
  ``M_c = sum_k w_ck F_k``.
- `NinHead` (Lin et al. 2014): 1x1 convolutions to one map per class ``M_c``, then
  ``y_c = mean_xy M_c``; the map is ``M_c`` itself.
- `AcolHead` (Zhang et al. 2018): classifier A gives maps ``M^A``; the features where A's
  min-max normalised map of the class reaches above ``delta`` are erased (set to 0) and
  classifier B sees the rest; ``y = mean M^A + mean M^B``; fused map
  ``max(norm M^A_c, norm M^B_c)``.
- `ScouterHead` (Li et al. 2021): slot attention with one slot per class; attention
  ``a_c = sigmoid(q_c . k_p / sqrt(d))`` over positions p; ``y_c = e * sum_d U_cd`` with
  ``U = a V / (h w)`` and ``e = +1`` (SCOUTER+) or ``-1`` (SCOUTER-); training adds
  ``lambda * mean(a)`` (the area loss).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from convlens.data.preprocess import Preprocess
from convlens.errors import ModelLoadError
from convlens.files import torch_save
from convlens.maps import normalize_maps
from convlens.models.loading import LoadedModel, load_model, register_file_format

HEADS = ("cam", "nin", "acol", "scouter")
FILE_FORMAT = "convlens-head"


class _StopForward(Exception):
    """Raised by `BackboneCut`'s hook once the cut layer has run (the rest is skipped)."""


class BackboneCut(nn.Module):
    """``module`` run up to its sub-module ``layer``: returns that layer's output
    ``Tensor[B, K, h, w]``; the layers after it do not run. The whole module is kept (its
    later parameters get no gradient), so any architecture can be cut without rewriting."""

    def __init__(self, module: nn.Module, layer: str) -> None:
        super().__init__()
        try:
            module.get_submodule(layer)
        except AttributeError as error:
            names = [name for name, _ in module.named_modules() if name][-8:]
            raise ModelLoadError(
                f"the backbone has no layer named {layer!r}; pass one of its named layers, "
                f"for example {', '.join(names)}"
            ) from error
        if not layer:
            raise ModelLoadError("cut the backbone at a named layer, not at its root")
        self.module, self.layer = module, layer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        found: list[torch.Tensor] = []

        def stop(_module, _inputs, output):
            found.append(output)
            raise _StopForward

        # registered at call time, so hooks others put on this layer run before it
        handle = self.module.get_submodule(self.layer).register_forward_hook(stop)
        try:
            self.module(images)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not found:
            raise ModelLoadError(f"the backbone's layer {self.layer!r} did not run in forward")
        return found[0]


def pick(maps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Row ``n``'s map of class ``classes[n]``: ``Tensor[B, C, h, w]`` -> ``[B, h, w]``."""
    return maps[torch.arange(len(maps)), classes]


class CamHead(nn.Module):
    """GAP + linear: ``Tensor[B, K, h, w]`` -> logits ``Tensor[B, C]``."""

    kind = "cam"

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self.config = {"channels": channels, "num_classes": num_classes}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(features).flatten(1))

    def class_maps(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``M_c = sum_k w_ck F_k`` for ``classes`` (``LongTensor[B]``): ``Tensor[B, h, w]``."""
        return torch.einsum("bk,bkhw->bhw", self.classifier.weight[classes], features)


def _class_map_layers(channels: int, num_classes: int, kernel: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel, padding=kernel // 2),
        nn.ReLU(),
        nn.Conv2d(channels, num_classes, 1),
    )


class NinHead(nn.Module):
    """1x1 conv, ReLU, 1x1 conv to ``C`` class maps ``M``, then GAP: ``y = mean_xy M``."""

    kind = "nin"

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.maps = _class_map_layers(channels, num_classes)
        self.config = {"channels": channels, "num_classes": num_classes}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.maps(features).mean(dim=(2, 3))

    def all_class_maps(self, features: torch.Tensor) -> torch.Tensor:
        """``M``: ``Tensor[B, C, h, w]`` (the logits are their spatial means)."""
        return self.maps(features)

    def class_maps(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return pick(self.maps(features), classes)


def erase_above(features: torch.Tensor, class_map: torch.Tensor, delta: float) -> torch.Tensor:
    """ACoL's erasing: ``F * [norm(M) <= delta]`` with ``norm`` the per-image min-max
    scaling; ``features`` ``Tensor[B, K, h, w]``, ``class_map`` ``Tensor[B, h, w]``."""
    keep = (normalize_maps(class_map) <= delta).to(features.dtype)
    return features * keep[:, None]


class AcolHead(nn.Module):
    """Two classifiers (3x3 conv, ReLU, 1x1 conv to class maps, GAP each); B sees the
    features with A's most discriminative region erased. The class erased is A's top
    class (a forward pass has no labels; the paper erases the true class in training)."""

    kind = "acol"

    def __init__(self, channels: int, num_classes: int, delta: float = 0.6) -> None:
        super().__init__()
        if not 0 < delta < 1:
            raise ModelLoadError(f"ACoL's erasing threshold delta must be in (0, 1), got {delta}")
        self.branch_a = _class_map_layers(channels, num_classes, kernel=3)
        self.branch_b = _class_map_layers(channels, num_classes, kernel=3)
        self.delta = delta
        self.config = {"channels": channels, "num_classes": num_classes, "delta": delta}
        self.last_logits: tuple[torch.Tensor, torch.Tensor] | None = None

    def both_maps(
        self, features: torch.Tensor, classes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M^A, M^B)``, each ``Tensor[B, C, h, w]``; B's input is erased by A's map of
        ``classes`` (``LongTensor[B]``; default: A's top class)."""
        maps_a = self.branch_a(features)
        if classes is None:
            classes = maps_a.mean(dim=(2, 3)).argmax(1)
        erased = erase_above(features, pick(maps_a, classes).detach(), self.delta)
        return maps_a, self.branch_b(erased)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps_a, maps_b = self.both_maps(features)
        logits_a, logits_b = maps_a.mean(dim=(2, 3)), maps_b.mean(dim=(2, 3))
        if self.training:  # kept for training_loss only; evaluation leaves no trace
            self.last_logits = (logits_a, logits_b)
        return logits_a + logits_b

    def class_maps(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The fused map ``max(norm M^A_c, norm M^B_c)`` in [0, 1]: ``Tensor[B, h, w]``."""
        maps_a, maps_b = self.both_maps(features, classes)
        return torch.maximum(
            normalize_maps(pick(maps_a, classes)), normalize_maps(pick(maps_b, classes))
        )

    def training_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of both classifiers (of the last forward pass)."""
        logits_a, logits_b = self.last_logits
        return F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels)


def position_embedding(dim: int, height: int, width: int) -> torch.Tensor:
    """Fixed sine/cosine embedding ``Tensor[h * w, dim]`` of (row, column) positions in [0, 1]
    (half the channels for rows, half for columns; ``dim`` divisible by 4)."""
    quarter = dim // 4
    frequencies = torch.pow(100.0, -torch.arange(quarter) / max(1, quarter)) * math.pi
    rows = torch.linspace(0, 1, height)[:, None].expand(height, width).reshape(-1, 1)
    cols = torch.linspace(0, 1, width)[None, :].expand(height, width).reshape(-1, 1)
    parts = [torch.sin(rows * frequencies), torch.cos(rows * frequencies)]
    parts += [torch.sin(cols * frequencies), torch.cos(cols * frequencies)]
    return torch.cat(parts, dim=1)


class ScouterHead(nn.Module):
    """Slot attention with one slot per class (SCOUTER). ``sign`` +1: SCOUTER+ (a class's
    attention is its positive evidence), -1: SCOUTER- (evidence against it)."""

    kind = "scouter"

    def __init__(
        self,
        channels: int,
        num_classes: int,
        dim: int = 32,
        iterations: int = 3,
        sign: int = 1,
        area_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if sign not in (1, -1) or dim % 4:
            raise ModelLoadError(
                f"SCOUTER needs sign +1 or -1 and dim divisible by 4, got {sign} and {dim}"
            )
        self.project = nn.Conv2d(channels, dim, 1)
        self.slots = nn.Parameter(torch.randn(num_classes, dim) * dim**-0.5)
        self.to_query = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.to_key = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.update = nn.GRUCell(dim, dim)
        self.dim, self.iterations, self.sign, self.area_weight = dim, iterations, sign, area_weight
        self.config = {
            "channels": channels,
            "num_classes": num_classes,
            "dim": dim,
            "iterations": iterations,
            "sign": sign,
            "area_weight": area_weight,
        }
        self.last_attention: torch.Tensor | None = None

    def attend(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(attention Tensor[B, C, h, w] in (0, 1), logits Tensor[B, C])``."""
        batch, _, height, width = features.shape
        values = F.relu(self.project(features)).flatten(2).transpose(1, 2)  # [B, hw, d]
        position = position_embedding(self.dim, height, width).to(values)
        keys = self.to_key(values + position)
        slots = self.slots.expand(batch, -1, -1)
        for _ in range(self.iterations):
            scores = self.to_query(slots) @ keys.transpose(1, 2) / math.sqrt(self.dim)
            attention = torch.sigmoid(scores)  # [B, C, hw]
            updates = attention @ values / (height * width)  # [B, C, d]
            slots = self.update(updates.reshape(-1, self.dim), slots.reshape(-1, self.dim)).view_as(
                updates
            )
        logits = self.sign * updates.sum(-1)
        return attention.view(batch, -1, height, width), logits

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        attention, logits = self.attend(features)
        if self.training:  # kept for training_loss only; evaluation leaves no trace
            self.last_attention = attention
        return logits

    def class_maps(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Class ``c``'s slot attention ``Tensor[B, h, w]`` in (0, 1): "why c" (SCOUTER+)
        or "why not c" (SCOUTER-)."""
        return pick(self.attend(features)[0], classes)

    def training_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy plus ``area_weight * mean attention`` (of the last forward pass)."""
        area = self.last_attention.mean()
        return F.cross_entropy(logits, labels) + self.area_weight * area


HEAD_CLASSES = {cls.kind: cls for cls in (CamHead, NinHead, AcolHead, ScouterHead)}


def new_head(kind: str, channels: int, num_classes: int, **options) -> nn.Module:
    """A fresh head of ``kind`` (one of `HEADS`) for ``channels`` input channels."""
    if kind not in HEAD_CLASSES:
        raise ModelLoadError(f"unknown head {kind!r}; use one of: {', '.join(HEADS)}")
    allowed = list(inspect.signature(HEAD_CLASSES[kind]).parameters)[2:]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ModelLoadError(
            f"the {kind} head has no option {', '.join(unknown)}; it takes: "
            f"{', '.join(allowed) or 'none'}"
        )
    return HEAD_CLASSES[kind](channels, num_classes, **options)


class HeadModel(nn.Module):
    """``head(backbone(images))``: ``Tensor[B, 3, H, W]`` -> logits ``Tensor[B, C]``.

    With ``freeze_backbone`` the backbone stays in eval mode (batch-norm statistics fixed)
    and its parameters are not trained."""

    def __init__(self, backbone: nn.Module, head: nn.Module, freeze_backbone: bool = False):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            for parameter in backbone.parameters():
                parameter.requires_grad_(False)

    @property
    def kind(self) -> str:
        return self.head.kind

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def train(self, mode: bool = True) -> HeadModel:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def training_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The head's training loss (cross-entropy, plus its own terms) for ``labels``."""
        if hasattr(self.head, "training_loss"):
            return self.head.training_loss(logits, labels)
        return F.cross_entropy(logits, labels)

    def class_maps(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The head's map of ``classes`` (``LongTensor[B]``) at feature resolution."""
        return self.head.class_maps(self.backbone(images), classes)


def save_head_model(
    model: HeadModel,
    path: str | Path,
    *,
    backbone: str,
    layer: str,
    classes: tuple[str, ...] | list[str],
    preprocess: Preprocess,
    record: dict | None = None,
) -> Path:
    """Write ``model`` (weights, the backbone's name and cut layer, the head's kind and
    settings, class names, preprocessing, training record) to ``path``; `load_model(path)`
    (``--model PATH``) reads it back."""
    path = Path(path)
    torch_save(
        {
            "format": FILE_FORMAT,
            "backbone": backbone,
            "layer": layer,
            "head": model.kind,
            "head_config": dict(model.head.config),
            "state_dict": model.state_dict(),
            "classes": list(classes),
            "preprocess": dataclasses.asdict(preprocess),
            "record": record or {},
        },
        path,
    )
    return path


def load_head_file(saved: dict, path: Path) -> LoadedModel:
    """The `LoadedModel` (eval mode) of a dict written by `save_head_model`."""
    keys = ("backbone", "layer", "head", "head_config", "state_dict", "classes", "preprocess")
    missing = [key for key in keys if key not in saved]
    if missing:
        raise ModelLoadError(
            f"{path} lacks {missing}; write head models with "
            "convlens.models.heads.save_head_model (convlens train head does)"
        )
    backbone = BackboneCut(load_model(saved["backbone"], pretrained=False).module, saved["layer"])
    config = dict(saved["head_config"])
    head = new_head(saved["head"], config.pop("channels"), config.pop("num_classes"), **config)
    module = HeadModel(backbone, head)
    module.load_state_dict(saved["state_dict"])
    preprocess = dict(saved["preprocess"])
    preprocess["mean"], preprocess["std"] = tuple(preprocess["mean"]), tuple(preprocess["std"])
    if isinstance(preprocess["size"], list):
        preprocess["size"] = tuple(preprocess["size"])
    classes = tuple(str(name) for name in saved["classes"])
    return LoadedModel(module.eval(), path.name, Preprocess(**preprocess), classes)


register_file_format(FILE_FORMAT, load_head_file)
