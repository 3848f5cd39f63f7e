"""TCAV on a hand-built net whose class 0 reads only the red channel: a red concept is
significant for class 0, a random one is not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convlens.concepts.tcav import tcav

pytestmark = pytest.mark.usefixtures("one_thread")


def _red_reader() -> nn.Module:
    """conv 1x1 (channel 0 = red, channel 1 = green), ReLU ("1"), GAP, identity head."""
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0
        conv.weight[1, 1] = 1.0
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def test_a_planted_concept_is_significant_and_a_random_one_is_not(unchanged):
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(60, 3, 6, 6, generator=generator)
    red = noise[:10].clone()
    red[:, 0] += 1.0  # red above the noise everywhere
    model = _red_reader()
    with unchanged(model, noise):
        planted = tcav(model, red, noise[10:], noise[:10], 0, "1", runs=10)
        random = tcav(model, noise[:10], noise[10:], noise[:10], 0, "1", runs=10)
    assert planted[0].score == 1.0 and planted[0].significant
    assert planted[0].p_value < 0.01
    assert not random[0].significant
