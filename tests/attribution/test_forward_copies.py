"""Perturbed copies of RISE, occlusion, Score-CAM and the superpixel methods go through the
model in channels-last layout on the CPU (`forward_copies`): the maps equal those of
contiguous copies, a model whose forward cannot take that layout falls back to contiguous
copies, and a model's own error still surfaces."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.layouts import LayoutBlind, ViewNet
from torch import nn

from convlens import explain
from convlens.attribution.common import _CONTIGUOUS_ONLY, forward_copies

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {
    "occlusion": {"patch": 6, "stride": 4},
    "rise": {"n_masks": 12, "cells": 4},
    "scorecam": {"layer": "conv"},
    "superpixel_ablation": {"n_segments": 6, "compactness": 100.0},
    "kernel_shap": {"n_samples": 10, "n_segments": 6, "compactness": 100.0},
    "lime": {"n_samples": 10, "n_segments": 6, "compactness": 100.0},
}


class Refuses(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        raise RuntimeError("the model's own error")


def _images() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_a_view_model_falls_back_to_contiguous_copies_with_the_same_result():
    torch.manual_seed(0)
    net = ViewNet().eval()
    x = _images()
    with pytest.raises(RuntimeError):  # the premise: this model cannot take channels-last
        net(x.contiguous(memory_format=torch.channels_last))
    expected = net(x)
    assert net not in _CONTIGUOUS_ONLY
    torch.testing.assert_close(forward_copies(net, x), expected, rtol=0, atol=0)
    assert net in _CONTIGUOUS_ONLY  # later batches skip the failing try
    torch.testing.assert_close(forward_copies(net, x), expected, rtol=0, atol=0)


def test_copies_already_channels_last_fall_back_too():
    """A metric hands over its reused channels-last buffer: a view model still gets a
    contiguous batch."""
    torch.manual_seed(0)
    net = ViewNet().eval()
    x = _images()
    laid_out = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(forward_copies(net, laid_out), net(x), rtol=0, atol=0)
    assert net in _CONTIGUOUS_ONLY


def test_channels_last_copies_give_the_contiguous_scores():
    torch.manual_seed(0)
    model = LayoutBlind(ViewNet()).eval()
    x = _images()
    torch.testing.assert_close(forward_copies(model, x), model(x), rtol=1e-5, atol=1e-6)
    assert model.layouts == [True, False] and model not in _CONTIGUOUS_ONLY


def test_a_model_error_is_raised_once_not_retried():
    model = Refuses()
    with pytest.raises(RuntimeError, match="the model's own error"):
        forward_copies(model, _images())
    assert model.calls == 1 and model not in _CONTIGUOUS_ONLY


@pytest.mark.parametrize("method", sorted(SMALL))
def test_perturbation_maps_run_on_a_view_model_and_match_a_reshape_model(method, unchanged):
    """The same weights flattened by ``view`` (falls back) and by ``reshape`` (channels-last):
    equal maps up to float rounding, model and images untouched."""
    torch.manual_seed(0)
    net = ViewNet().eval()
    blind = LayoutBlind(ViewNet().eval()).eval()
    blind.net.load_state_dict(net.state_dict())
    x = _images()
    with unchanged(net, x):
        fallback = explain(net, x, method=method, target=1, **SMALL[method]).maps
    options = {"layer": "net.conv"} if method == "scorecam" else SMALL[method]
    with unchanged(blind, x):
        laid_out = explain(blind, x, method=method, target=1, **options).maps
    assert fallback.abs().amax() > 0
    assert any(blind.layouts) and net in _CONTIGUOUS_ONLY
    torch.testing.assert_close(fallback, laid_out, rtol=1e-4, atol=1e-5)
