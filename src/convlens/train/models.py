"""Small networks trained by convlens itself.

`ShapesNet` is the benchmark model of `convlens evaluate`: a plain conv stack, global average
pooling (GAP) and one linear layer, the architecture the CAM paper (Zhou et al., 2016,
"Learning Deep Features for Discriminative Localization") needs: the class score is
``y_c = sum_k w_ck * mean_xy A_k(x, y) + b_c``, so ``CAM_c(x, y) = sum_k w_ck A_k(x, y)``.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_block(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(),
    ]


class ShapesNet(nn.Module):
    """conv(3->16) pool conv(16->32) conv(32->32) pool conv(32->48) conv(48->48) -> GAP -> linear.

    Input ``Tensor[B, 3, H, W]`` (any H, W; trained at 64x64, normalised with mean 0.5 and
    std 0.5). ``features`` ends at ``H/4 x W/4`` (16x16 for 64x64 inputs), the layer CAM
    methods use by default. Output: logits ``Tensor[B, num_classes]``. 49,462 parameters with
    the defaults (6 classes, width 16).
    """

    def __init__(self, num_classes: int = 6, width: int = 16) -> None:
        super().__init__()
        c1, c2, c3 = width, 2 * width, 3 * width
        self.features = nn.Sequential(
            *_conv_block(3, c1),
            nn.MaxPool2d(2),
            *_conv_block(c1, c2),
            *_conv_block(c2, c2),
            nn.MaxPool2d(2),
            *_conv_block(c2, c3),
            *_conv_block(c3, c3),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c3, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(images)).flatten(1))
