"""MACO: only the phase moves (the output keeps the fixed magnitude exactly), the model is
borrowed, and the spectral slope measure recovers a known power law."""

from __future__ import annotations

import math

import pytest
import torch
from tests.helpers.networks import small_convnet

from convlens.errors import MethodError
from convlens.features.maco import (
    Spectrum,
    maco,
    maco_image,
    natural_spectrum,
    power_spectrum_slope,
    random_crops,
)
from convlens.features.objectives import channel
from convlens.features.optimize import _COLOR


def _magnitude_of(images: torch.Tensor) -> torch.Tensor:
    """Invert ``sigmoid(4 C s)`` and return ``|rfft2(s)|`` (orthonormal)."""
    logits = torch.logit(images.double()) / 4
    decorrelated = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_COLOR.double()), logits)
    return torch.fft.rfft2(decorrelated, norm="ortho").abs()


def test_maco_changes_the_phase_only(unchanged):
    """After optimisation the picture's spectrum (in MACO's decorrelated space) is the
    stored magnitude at every frequency whose phase is free (columns 1 .. W/2 - 1; the
    first and last columns of an rfft must be Hermitian, so irfft2 projects them)."""
    model = small_convnet()
    fixed = natural_spectrum(16, 16)  # the shipped photo spectrum, resampled to 16 x 16
    assert "photos" in fixed.source
    with unchanged(model):
        result = maco(model, channel("1", 2), steps=3, size=16, crops=2, spectrum=fixed)
    assert result.history[-1, 0] != result.history[0, 0]  # it did move
    got = _magnitude_of(result.images)[0]
    expected = fixed.magnitude[..., 1:-1].double()
    torch.testing.assert_close(got[..., 1:-1], expected, rtol=1e-3, atol=1e-5)  # float32 pixels
    assert result.importance.shape == (1, 16, 16) and bool((result.importance > 0).any())
    assert result.spectrum_source == fixed.source


def test_maco_image_keeps_any_magnitude_for_any_phase():
    gen = torch.Generator().manual_seed(0)
    magnitude = torch.rand(3, 8, 5, generator=gen)
    phase = 2 * math.pi * torch.rand(2, 3, 8, 5, generator=gen)
    images = maco_image(magnitude, phase)
    assert images.shape == (2, 3, 8, 8)
    got = _magnitude_of(images)
    # float32 pixels, inverted through the sigmoid: agreement to 1e-3 relative
    expected = magnitude[..., 1:-1].double().expand(2, -1, -1, -1)
    torch.testing.assert_close(got[..., 1:-1], expected, rtol=1e-3, atol=1e-5)


def test_crops_of_the_whole_canvas_without_noise_are_the_canvas():
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    crops = random_crops(images, 3, (8, 8), (1.0, 1.0), 0.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(crops, images.repeat_interleave(3, dim=0))


def test_rotated_crops_of_the_whole_canvas_turn_about_its_centre():
    """A whole-canvas crop is centred, so rotation keeps the centre pixel and moves the rest."""
    images = torch.rand(1, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(0)
    crops = random_crops(images, 2, (9, 9), (1.0, 1.0), 0.0, gen, degrees=30.0)
    torch.testing.assert_close(crops[..., 4, 4], images[..., 4, 4].expand(2, 3))
    assert (crops - images).abs().amax((1, 2, 3)).min() > 0.05


def test_power_spectrum_slope_recovers_a_power_law():
    """An image whose amplitude is f^-1 (power f^-2) measures -2; white noise 0."""
    gen = torch.Generator().manual_seed(0)
    fy = torch.fft.fftfreq(64)[:, None] * 64
    fx = torch.fft.fftfreq(64)[None, :] * 64
    amplitude = 1 / (fy**2 + fx**2).sqrt().clamp_min(1)
    phase = 2 * math.pi * torch.rand(64, 64, generator=gen)
    grey = torch.fft.ifft2(torch.polar(amplitude, phase)).real
    images = grey.expand(1, 3, 64, 64)
    assert power_spectrum_slope(images)[0] == pytest.approx(-2.0, abs=0.15)
    noise = torch.randn(1, 1, 64, 64, generator=gen).expand(1, 3, 64, 64)
    assert power_spectrum_slope(noise)[0] == pytest.approx(0.0, abs=0.15)


def test_a_spectrum_of_the_wrong_size_is_resampled():
    spectrum = Spectrum(torch.ones(3, 8, 5), "ones")
    assert natural_spectrum(16, 16, spectrum).magnitude.shape == (3, 16, 9)


def test_flipped_crops_of_the_whole_canvas_are_the_canvas_or_its_mirror():
    images = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(0)
    crops = random_crops(images, 16, (8, 8), (1.0, 1.0), 0.0, gen, flip=True)
    mirrored = [bool(torch.allclose(c, images[0].flip(-1))) for c in crops]
    kept = [bool(torch.allclose(c, images[0])) for c in crops]
    assert all(m != k for m, k in zip(mirrored, kept, strict=True))
    assert 0 < sum(mirrored) < 16


def test_a_larger_canvas_scales_the_picture_and_keeps_the_model_input(unchanged):
    """``canvas=1.5``: the picture and importance map are 1.5 times the size, the crops the
    network sees keep the size (a bare module: ``size``), and bad scales are refused."""
    model = small_convnet()
    seen_sizes = []
    hook = model.register_forward_pre_hook(lambda _, args: seen_sizes.append(args[0].shape[-2:]))
    try:
        result = maco(model, channel("1", 2), steps=2, size=16, crops=2, canvas=1.5)
    finally:
        hook.remove()
    assert result.images.shape == (1, 3, 24, 24) and result.importance.shape == (1, 24, 24)
    assert {tuple(s) for s in seen_sizes} == {(16, 16)}
    with pytest.raises(MethodError, match="canvas"):
        maco(model, channel("1", 2), steps=1, size=16, canvas=0.5)


def test_crops_with_no_spread_are_all_the_centre_crop():
    images = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(0)
    crops = random_crops(images, 4, (4, 4), (0.5, 0.5), 0.0, gen, spread=0.0)
    torch.testing.assert_close(crops, crops[:1].expand(4, -1, -1, -1))
    torch.testing.assert_close(crops[0], images[0, :, 2:6, 2:6])
