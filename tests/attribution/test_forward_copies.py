"""Perturbed copies of RISE, occlusion, Score-CAM and the superpixel methods go through the
model in channels-last layout on the CPU (`forward_copies`): the maps equal those of
contiguous copies, a model whose forward cannot take that layout falls back to contiguous
copies, and a model's own error still surfaces. On the CPU a large batch of copies goes
through in passes of at most `CPU_PASS_PIXELS` pixels, joined in order, and so do the
explained rows of the gradient and CAM methods (`in_cpu_passes`)."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.layouts import LayoutBlind, ViewNet
from tests.helpers.networks import CountingNet
from torch import nn

from convlens import explain
from convlens.attribution.common import _CONTIGUOUS_ONLY, forward_copies
from convlens.models.devices import CPU_PASS_PIXELS

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


class Recorder(nn.Module):
    """A small conv net that records the batch size of each forward pass; ``output`` picks
    what it returns: logits, a detector's list of dicts, or a tuple convlens cannot join."""

    def __init__(self, output: str = "logits") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.output, self.batches = output, []

    def forward(self, x: torch.Tensor):
        self.batches.append(len(x))
        logits = self.conv(x).mean((2, 3))
        if self.output == "detections":
            return [
                {"boxes": row[None, :4], "scores": row[:1], "labels": row.argmax()[None]}
                for row in logits
            ]
        if self.output == "tuple":
            return logits, logits.sum(1)
        return logits


def _copies(count: int, size: int) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("size", "per_pass", "passes"),
    [(224, 8, [7, 7, 5]), (112, 32, [20, 20]), (672, 1, [1, 1, 1])],
)
def test_cpu_copies_go_through_in_even_passes_of_the_chunk_pixels(size, per_pass, passes):
    torch.manual_seed(0)
    model = Recorder().eval()
    x = _copies({224: 19, 112: 40, 672: 3}[size], size)
    with torch.no_grad():
        expected = model(x)
        model.batches.clear()
        found = forward_copies(model, x)
    assert per_pass == max(1, CPU_PASS_PIXELS // (size * size))
    assert model.batches == passes  # never a lone last copy where a pass holds more
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-6)


def test_a_batch_within_the_chunk_runs_in_one_pass():
    model = Recorder().eval()
    with torch.no_grad():
        forward_copies(model, _copies(8, 224))
    assert model.batches == [8]


def test_a_detectors_lists_are_joined_in_order():
    torch.manual_seed(0)
    model = Recorder("detections").eval()
    x = _copies(11, 224)
    with torch.no_grad():
        expected = model(x)
        model.batches.clear()
        found = forward_copies(model, x)
    assert model.batches == [6, 5] and len(found) == 11
    for got, want in zip(found, expected, strict=True):
        torch.testing.assert_close(got["scores"], want["scores"], rtol=1e-5, atol=1e-6)
        assert torch.equal(got["labels"], want["labels"])


def test_an_output_convlens_cannot_join_is_recomputed_in_one_pass():
    torch.manual_seed(0)
    model = Recorder("tuple").eval()
    x = _copies(11, 224)
    with torch.no_grad():
        logits, sums = forward_copies(model, x)
    assert model.batches == [6, 11]  # the split stops after the first pass
    assert logits.shape == (11, 4) and sums.shape == (11,)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("saliency", {}),
        ("guided_backprop", {}),
        ("gradcam", {"layer": "net.3"}),
        ("lrp", {}),
        ("lrp", {"relevance_layer": "net.2"}),
    ],
)
def test_gradient_methods_explain_eight_224_pixel_rows_a_pass_with_per_image_maps(
    method, options, unchanged
):
    torch.manual_seed(0)
    net = CountingNet().eval()
    x = _copies(11, 224)
    with unchanged(net, x):
        maps = explain(net, x, method=method, target=1, **options).maps
    assert [rows for rows, _ in net.calls] == [6, 5]
    alone = torch.cat(
        [explain(net, x[i : i + 1], method=method, target=1, **options).maps for i in (0, 9)]
    )
    torch.testing.assert_close(maps[[0, 9]], alone, rtol=1e-4, atol=1e-6)


def test_a_callable_target_keeps_the_batch_whole():
    """A callable target gets the whole batch's output, as without passes."""
    net = CountingNet().eval()
    explain(net, _copies(11, 224), method="saliency", target=lambda out: out[:, 0] - out.mean(0)[0])
    assert [rows for rows, _ in net.calls] == [11]


def test_noise_tunnel_copies_go_eight_224_pixel_images_a_pass_by_default():
    torch.manual_seed(0)
    net = CountingNet().eval()
    x = _copies(11, 224)
    maps = explain(net, x, method="smoothgrad", target=1, n_samples=2).maps
    assert max(rows for rows, grad in net.calls if grad) <= 8
    alone = explain(net, x[9:10], method="smoothgrad", target=1, n_samples=2).maps
    torch.testing.assert_close(maps[9:10], alone, rtol=1e-4, atol=1e-6)


class ReadsTopLeft(nn.Module):
    """Two convolutions, then only the top-left 100 x 100 of the map is read: occluding the
    rest must change no score at all."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.conv(x).relu()).relu()[:, :, :100, :100].mean((2, 3)))


class Squeezes(nn.Module):
    """A classifier that squeezes its output: ``[K]`` for a single image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, stride=8), nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).relu().mean((2, 3)).squeeze())


def test_nine_images_split_evenly_so_unread_pixels_keep_exact_zeros():
    """Nine rows go 5 + 4, never 8 + 1: a row computed alone can differ in the last bit from
    the same row in a batch, and the clean pass and the copies are split alike."""
    torch.manual_seed(0)
    net = ReadsTopLeft().eval()
    x = torch.randn(9, 3, 224, 224)
    maps = explain(net, x, method="occlusion", target=1, patch=56, stride=56).maps
    assert maps[:, :100, :100].abs().amax() > 0
    assert int((maps[:, 150:, 150:] != 0).sum()) == 0


def test_a_model_that_squeezes_its_output_still_runs_on_nine_images():
    torch.manual_seed(0)
    net = Squeezes().eval()
    x = torch.randn(9, 3, 224, 224)
    with torch.no_grad():
        assert forward_copies(net, x).shape == (9, 5)
    assert explain(net, x, method="saliency", target=2).maps.shape == (9, 224, 224)
