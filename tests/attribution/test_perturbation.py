"""Occlusion: exact values on a sum model, chunking/batch invariance, cost, hygiene."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.networks import CountingNet
from torch import nn

from convlens.attribution.perturbation import occlusion, patch_starts
from convlens.errors import MethodError, TargetError


class SumModel(nn.Module):
    """Class 0 = sum of all inputs, class 1 = minus that."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.sum(dim=(1, 2, 3))
        return torch.stack([total, -total], dim=1)


def counting_net() -> CountingNet:
    """A small conv net with dropout (which the methods must switch off) whose forward
    passes are recorded as ``(rows, grad enabled)``."""
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(2)
    )
    return CountingNet(nn.Sequential(body, nn.Flatten(), nn.Linear(16, 3)))


def ramp() -> torch.Tensor:
    return torch.arange(16.0).view(1, 1, 4, 4).repeat(1, 3, 1, 1)


def test_patch_starts_cover_every_pixel():
    assert patch_starts(8, 3, 2) == [0, 2, 4, 5]
    assert patch_starts(4, 2, 2) == [0, 2]
    assert patch_starts(5, 5, 3) == [0]


def test_exact_values_disjoint_patches(unchanged):
    model, images = SumModel(), ramp()
    with unchanged(model, images):
        maps = occlusion(model, images, target=0, patch=2, stride=2)
    # Each 2x2 block's drop is 3 channels x the sum of its four ramp values.
    expected = torch.tensor([[30.0, 54.0], [126.0, 150.0]]).repeat_interleave(2, 0)
    torch.testing.assert_close(maps[0], expected.repeat_interleave(2, 1))
    torch.testing.assert_close(occlusion(model, images, target=1, patch=2, stride=2), -maps)


def test_exact_values_overlapping_patches_are_averaged():
    maps = occlusion(SumModel(), ramp(), target=0, patch=3, stride=2, batch_size=1)
    # Patches at (0,0), (0,1), (1,0), (1,1) with drops 135, 162, 243, 270.
    expected = torch.tensor(
        [
            [135.0, 148.5, 148.5, 162.0],
            [189.0, 202.5, 202.5, 216.0],
            [189.0, 202.5, 202.5, 216.0],
            [243.0, 256.5, 256.5, 270.0],
        ]
    )
    torch.testing.assert_close(maps[0], expected)


def test_fill_values():
    images = ramp()
    ones = occlusion(SumModel(), images, target=0, patch=4, stride=4, fill=1.0)
    torch.testing.assert_close(ones, torch.full((1, 4, 4), 3 * (120.0 - 16.0)))
    mean = occlusion(SumModel(), images, target=0, patch=4, stride=4, fill="mean")
    torch.testing.assert_close(mean, torch.zeros(1, 4, 4))  # the mean keeps the sum
    half = occlusion(SumModel(), images, target=0, patch=(4, 2), stride=(4, 2), fill="mean")
    # Left half: 3 * (sum of columns 0-1, 52, minus 8 x the image mean 7.5) = -24.
    torch.testing.assert_close(half[0, 0], torch.tensor([-24.0, -24.0, 24.0, 24.0]))


def test_chunk_size_and_batch_invariant_and_cost():
    model = counting_net().eval()
    images = torch.randn(3, 3, 8, 8)
    targets = [2, 0, 1]
    reference = occlusion(model, images, targets, patch=3, stride=2, batch_size=1000)
    for batch_size in (1, 7):
        model.calls.clear()
        got = occlusion(model, images, targets, patch=3, stride=2, batch_size=batch_size)
        torch.testing.assert_close(got, reference, atol=1e-6, rtol=1e-5)
        positions = len(patch_starts(8, 3, 2)) ** 2
        # One clean pass, then exactly one evaluation per (image, position), no autograd.
        assert sum(rows for rows, _ in model.calls) == 3 * (positions + 1)
        assert max(rows for rows, _ in model.calls) <= max(batch_size, 3)
        assert not any(grad for _, grad in model.calls)
    for n, t in enumerate(targets):
        single = occlusion(model, images[n : n + 1], t, patch=3, stride=2)
        torch.testing.assert_close(single, reference[n : n + 1], atol=1e-5, rtol=0)


def test_top_k_rows_and_progress_bar():
    model = counting_net().eval()
    images = torch.randn(2, 3, 8, 8)
    maps = occlusion(model, images, "top2", patch=4, stride=4, progress=True)
    ids = model(images).topk(2, dim=1).indices.flatten()
    torch.testing.assert_close(
        maps, occlusion(model, images.repeat_interleave(2, 0), ids, patch=4, stride=4)
    )


def test_hygiene_train_mode_and_exception(unchanged):
    model = counting_net()
    images = torch.randn(2, 3, 8, 8, requires_grad=True)
    model.eval()
    reference = occlusion(model, images, 1, patch=4, stride=2)
    model.train()
    for parameter in model.net[-1].parameters():
        parameter.requires_grad_(False)
    with unchanged(model, images):
        torch.testing.assert_close(occlusion(model, images, 1, patch=4, stride=2), reference)
        with pytest.raises(TargetError):
            occlusion(model, images, lambda output: output, patch=4, stride=2)
    assert model.training


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"patch": 9}, "larger than the image"),
        ({"patch": 0}, "patch"),
        ({"stride": (2, 0)}, "stride"),
        ({"fill": "grey"}, "fill"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_options_raise_method_errors(options, message):
    with pytest.raises(MethodError, match=message):
        occlusion(SumModel(), torch.randn(1, 3, 8, 8), 0, **({"patch": 4, "stride": 2} | options))


@pytest.mark.parametrize(("patch", "stride"), [(3, 5), ((4, 3), (4, 5)), ((2, 8), (3, 8))])
def test_stride_larger_than_patch_is_refused(patch, stride):
    # Window 3, stride 5 on 8x8 used to leave 28 of 64 pixels uncovered (NaN in the map).
    with pytest.raises(MethodError, match=r"stride 5 is larger than the patch|stride 3 is"):
        occlusion(SumModel(), torch.randn(1, 3, 8, 8), 0, patch=patch, stride=stride)


def test_every_allowed_stride_covers_every_pixel():
    images = torch.randn(1, 3, 8, 8)
    for patch in range(1, 9):
        for stride in range(1, patch + 1):
            maps = occlusion(SumModel(), images, 0, patch=patch, stride=stride)
            assert torch.isfinite(maps).all(), (patch, stride)
