"""Two networks with the same weights that differ only in how they flatten a convolution's
output: ``ViewNet`` with ``view`` (fails on a channels-last batch), ``LayoutBlind`` with
``reshape`` (any layout; it records each batch's layout). Inputs ``Tensor[B, 3, 16, 16]``."""

from __future__ import annotations

import torch
from torch import nn


class ViewNet(nn.Module):
    """Flattens a convolution's 4 x 4 output with ``view``: fails on a channels-last batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        return self.fc(y.view(len(y), -1))


class LayoutBlind(nn.Module):
    """The same network flattened with ``reshape``: any layout works."""

    def __init__(self, net: ViewNet) -> None:
        super().__init__()
        self.net = net
        self.layouts: list[bool] = []  # per call: was the batch channels-last?

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.layouts.append(x.is_contiguous(memory_format=torch.channels_last))
        y = torch.relu(self.net.conv(x))
        return self.net.fc(y.reshape(len(y), -1))
