"""Tiny hand-built networks the tests share (seeded: the same weights on every call)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def small_convnet() -> nn.Module:
    """A seeded 3-class conv net on 3-channel images of any size: conv(3->4) BatchNorm
    ReLU(inplace) conv(4->4) ReLU GAP linear(4->3); parametrised layers, top-down, are
    "7", "3", "1", "0"."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def tiny_gap_classifier() -> nn.Module:
    """A seeded 5-class conv -> ReLU -> conv -> ReLU -> global average pool -> linear net
    (strides 4 and 2: inputs of at least 16 px), small enough for CLI tests that save it to
    a file; every method applies to it."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )


class CountingNet(nn.Module):
    """Runs ``net`` (default: `small_convnet`) and records each forward pass in ``calls`` as
    ``(rows, grad enabled)``; ``seen`` is the number of rows in all passes. Tests count
    passes with it instead of timing them."""

    def __init__(self, net: nn.Module | None = None) -> None:
        super().__init__()
        self.net = small_convnet() if net is None else net
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((len(x), torch.is_grad_enabled()))
        return self.net(x)

    @property
    def seen(self) -> int:
        return sum(rows for rows, _ in self.calls)


def hand_net() -> nn.Sequential:
    """x -> 1x1 conv with weights (1, -1), no bias -> ReLU ("1") -> GAP -> Linear
    W = [[2, 1], [-1, 3]], no bias: the CAM family's exact-value network.

    On x = [[1, 2], [3, -4]]: A_0 = relu(x) = [[1, 2], [3, 0]], A_1 = relu(-x) = [[0, 0],
    [0, 4]], GAP = (1.5, 1), logits = (4, 1.5). dy_c/dA_k = W[c, k] / 4 everywhere.
    """
    net = nn.Sequential(
        nn.Conv2d(1, 2, 1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 2, bias=False),
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        net[4].weight.copy_(torch.tensor([[2.0, 1.0], [-1.0, 3.0]]))
    return net


@dataclass
class NetOutput:
    """A ``ModelOutput``-like result: named tensors, some of them absent (None)."""

    logits: torch.Tensor
    hidden: torch.Tensor | None = None
    loss: torch.Tensor | None = None


class StructuredOutputNet(nn.Module):
    """`tiny_gap_classifier` whose output is wrapped: ``kind`` ``"dict"`` gives
    ``{"logits", "features"}`` (two tensors, one named logits), ``"dataclass"`` a
    `NetOutput` with only ``logits`` set, ``"tuple"`` ``(logits, 2 * logits)`` (ambiguous
    without a key), ``"ambiguous"`` ``{"scores", "other"}``. The logits are those of
    ``self.net``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.net = tiny_gap_classifier()

    def forward(self, x: torch.Tensor):
        logits = self.net(x)
        if self.kind == "dict":
            return {"features": logits.detach() * 0 + 1, "logits": logits}
        if self.kind == "dataclass":
            return NetOutput(logits)
        if self.kind == "tuple":
            return logits, 2 * logits
        return {"scores": logits, "other": -logits}


def embedding_net() -> nn.Sequential:
    """An embedding model: `tiny_gap_classifier` without its linear head, ``Tensor[B, 6]``
    (the pooled features of its last conv, "2")."""
    return tiny_gap_classifier()[:-1]


def regression_net(keep_dim: bool = False) -> nn.Sequential:
    """A seeded scalar regressor on `tiny_gap_classifier`'s features: ``Tensor[B]``
    (``keep_dim``: ``Tensor[B, 1]``)."""
    net = tiny_gap_classifier()
    torch.manual_seed(2)
    head = [nn.Linear(5, 1)] + ([] if keep_dim else [nn.Flatten(0)])
    return nn.Sequential(net, *head)
