"""MACO: feature visualisation with the Fourier magnitude fixed to that of natural photos and
only the phase optimised (Fel et al. 2023, "Unlocking Feature Visualization for Deeper
Networks with MAgnitude Constrained Optimization").

The image is ``x = sigmoid(4 C s)`` with ``s = irfft2(m e^{i phi})`` (orthonormal FFT, per
decorrelated colour channel), ``C`` the colour square root of `optimize` and ``m`` a fixed
magnitude spectrum ``Tensor[3, H, W // 2 + 1]``; only the phase ``phi`` is trained. Near
grey ``x ~ 0.5 + C s``, so ``m`` is estimated in that space: the mean of
``|rfft2(C^-1 (p - mean p))|`` over natural photos ``p`` (`estimate_spectrum`). The
package ships one estimated from the photos installed packages ship
(``features/data/natural_spectrum.pt``, which states its source; `natural_spectrum`
loads it). Each step scores random crops of the canvas (centre ``N(0.5, 0.15)`` of the
side, side a random fraction of the canvas), resized to the model's input, with Gaussian
and uniform noise added; the objective is the mean over a picture's crops. The absolute
gradient of the score with respect to the canvas, summed over steps, is the importance
map (the paper's transparency map): where the picture mattered to the unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from convlens.data.photos import Photo
from convlens.errors import MethodError
from convlens.features.objectives import Objective, Seen
from convlens.features.optimize import (
    _COLOR,
    Visualization,
    _as_objectives,
    _preprocess,
    _render_size,
    optimisation_input,
    optimising,
)
from convlens.layers import resolve_layer
from convlens.layers.borrow import require_autograd
from convlens.models.devices import DeviceSpec, model_device, resolve_device
from convlens.models.loading import LoadedModel, as_module

SPECTRUM_FILE = Path(__file__).parent / "data" / "natural_spectrum.pt"
# Defaults (`convlens visualize --method maco` uses them too), chosen by the transfer
# benchmark (docs/performance.md, "MACO vs the Fourier method"): one crop a step, 256
# steps, NAdam at lr 0.25, crop centres spread over the whole canvas. ``SPREAD`` 0.5
# (instead of the 0.15 of the first version) lets about half the crops reach the border,
# which is otherwise left as unshaped texture that Lite2 reads as a pattern class; one
# crop a step over four times the steps costs the same network evaluations as 4 crops
# over 64 steps (256 per picture, as many as the Fourier method) and follows more random
# views in sequence. On the 20 transfer classes this setting gave Lite2 18 of 20 (seed 0)
# where 4 crops x 64 steps gave 14 (spread 0.15) and 17 (spread 0.5); seeds 1 and 2 gave
# 17 of 20, Lite1 20 of 20 on all three (docs/performance.md, "One crop a step ...").
# Rotating the crops (``degrees``), a canvas larger than the model's input (``CANVAS``,
# Fel et al.'s setting) and mirrored crops (``FLIP``) are available but off: none
# transferred better (docs/performance.md, "Larger canvas ...").
STEPS = 256
CROPS = 1
CROP_FRACTION = (0.5, 1.0)
NOISE = 0.02
DEGREES = 0.0
CANVAS = 1.0
FLIP = False
LR = 0.25  # NAdam's learning rate on the phases
SPREAD = 0.5  # standard deviation of a crop's centre, as a fraction of the side
_GAIN = 4.0  # sigmoid'(0) = 1/4: near grey the picture is 0.5 + C s


@dataclass(frozen=True)
class Spectrum:
    """A magnitude spectrum ``magnitude`` ``Tensor[3, H, W // 2 + 1]`` (decorrelated
    colours, orthonormal rfft2, zero at the constant term) and where it came from."""

    magnitude: torch.Tensor
    source: str


def _square(pixels: np.ndarray, size: int) -> torch.Tensor:
    """``uint8[H, W, 3]`` -> centre square resized to ``size`` (antialiased), ``[3, s, s]``
    in [0, 1]."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(pixels[top : top + side, left : left + side])
    square = square.resize((size, size), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1).float() / 255


def estimate_spectrum(photos: Sequence[Photo], size: int = 224) -> Spectrum:
    """The mean magnitude spectrum ``Tensor[3, size, size // 2 + 1]`` of ``photos`` (each
    its centre square resized to ``size``), in MACO's space: ``|rfft2(C^-1 (p - mean p))|``
    (orthonormal), the constant term zero. Photos that cannot be read are left out;
    `MethodError` when none can."""
    inverse = torch.linalg.inv(_COLOR)
    total, used = torch.zeros(3, size, size // 2 + 1), []
    for photo in photos:
        try:
            pixels = photo.load()
        except Exception:  # noqa: BLE001 - an unreadable photo is skipped, not fatal
            continue
        square = _square(pixels, size)
        square = square - square.mean((1, 2), keepdim=True)
        decorrelated = torch.einsum("ij,jhw->ihw", inverse, square)
        total += torch.fft.rfft2(decorrelated, norm="ortho").abs()
        used.append(photo.name)
    if not used:
        raise MethodError("no photo could be read to estimate a magnitude spectrum")
    magnitude = total / len(used)
    magnitude[:, 0, 0] = 0.0
    source = f"mean |rfft2| of {len(used)} photos at {size}x{size}: " + ", ".join(used)
    return Spectrum(magnitude, source)


@lru_cache(maxsize=1)
def _shipped() -> Spectrum:
    saved = torch.load(SPECTRUM_FILE, weights_only=True)
    return Spectrum(saved["magnitude"].float(), saved["source"])


def natural_spectrum(height: int, width: int, spectrum: Spectrum | None = None) -> Spectrum:
    """``spectrum`` (default: the shipped one, `SPECTRUM_FILE`) resampled to a ``height`` x
    ``width`` canvas: ``Tensor[3, height, width // 2 + 1]``. The spectrum is shifted so
    frequency 0 is central, resized bilinearly and shifted back, so each magnitude keeps
    its frequency in cycles per pixel (a larger canvas has the photos' statistics at the
    pixel scale over a wider field); with the orthonormal FFT the pixel variance stays
    about the same."""
    spectrum = spectrum or _shipped()
    magnitude = spectrum.magnitude
    if magnitude.shape[-2:] != (height, width // 2 + 1):
        centred = torch.fft.fftshift(magnitude, dim=-2)
        resized = F.interpolate(
            centred[None], size=(height, width // 2 + 1), mode="bilinear", align_corners=False
        )[0]
        magnitude = torch.fft.ifftshift(resized, dim=-2)
        magnitude[:, 0, 0] = 0.0
    return Spectrum(magnitude.contiguous(), spectrum.source)


def maco_image(magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``sigmoid(4 C irfft2(m e^{i phase}))``: ``Tensor[B, 3, H, W]`` in (0, 1) from a
    magnitude ``Tensor[3, H, W // 2 + 1]`` and phases ``Tensor[B, 3, H, W // 2 + 1]``.
    ``H`` is taken from the magnitude, ``W`` is even (`maco` renders even widths)."""
    height, half = magnitude.shape[-2:]
    spectrum = torch.polar(magnitude.expand_as(phase), phase)
    decorrelated = torch.fft.irfft2(spectrum, s=(height, 2 * (half - 1)), norm="ortho")
    return torch.sigmoid(_GAIN * torch.einsum("ij,bjhw->bihw", _COLOR.to(phase), decorrelated))


def random_crops(
    images: torch.Tensor,
    count: int,
    size: tuple[int, int],
    fraction: tuple[float, float],
    noise: float,
    gen: torch.Generator,
    degrees: float = DEGREES,
    flip: bool = FLIP,
    spread: float = SPREAD,
) -> torch.Tensor:
    """``count`` random crops of each image ``Tensor[B, 3, H, W]``, resized (bilinear) to
    ``size``, as ``Tensor[B * count, 3, h, w]`` (image-major): side a uniform fraction in
    ``fraction`` of the canvas, centre ``N(0.5, spread)`` of each side kept inside the canvas,
    turned by an angle uniform in ``[-degrees, degrees]`` (border pixels reflected), then
    ``N(0, noise)`` and ``U(-noise / 2, noise / 2)`` added (Fel et al. 2023)."""
    batch = images.shape[0]
    n = batch * count
    low, high = fraction
    side = low + (high - low) * torch.rand(n, generator=gen)
    centre = spread * 2 * torch.randn(n, 2, generator=gen)  # normalised coordinates [-1, 1]
    centre = centre.clamp(-1.0, 1.0) * (1.0 - side)[:, None]
    angle = torch.zeros(n)
    if degrees:  # drawn only when asked, so the crops of degrees=0 stay as they were
        angle = torch.deg2rad(degrees * (2 * torch.rand(n, generator=gen) - 1))
    cos, sin = side * angle.cos(), side * angle.sin()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, :, 2] = centre
    if flip:  # drawn only when asked: a mirrored crop (x -> -x) with probability 1/2
        mirror = torch.rand(n, generator=gen) < 0.5
        theta[mirror, :, 0] = -theta[mirror, :, 0]
    theta = theta.to(images)
    grid = F.affine_grid(theta, [n, 3, *size], align_corners=False)
    repeated = images.repeat_interleave(count, dim=0)
    crops = F.grid_sample(
        repeated, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    if noise:
        gaussian = torch.randn(crops.shape, generator=gen).to(crops)
        uniform = torch.rand(crops.shape, generator=gen).to(crops) - 0.5
        crops = crops + noise * gaussian + noise * uniform
    return crops


def maco(
    model: nn.Module | LoadedModel,
    objectives: Objective | Sequence[Objective],
    *,
    steps: int = STEPS,
    size: int | tuple[int, int] | None = None,
    lr: float = LR,
    crops: int = CROPS,
    crop_fraction: tuple[float, float] = CROP_FRACTION,
    noise: float = NOISE,
    degrees: float = DEGREES,
    canvas: float = CANVAS,
    flip: bool = FLIP,
    spread: float = SPREAD,
    spectrum: Spectrum | None = None,
    seed: int = 0,
    progress: bool = False,
    device: DeviceSpec | None = None,
) -> Visualization:
    """Maximise each objective on its own canvas (objective ``b`` on picture ``b``) by
    optimising only the phase of a fixed natural magnitude spectrum (module docstring).

    ``size``: default the model's input size; the canvas, the picture returned, is
    ``canvas`` (1 to 4) times ``size``, its width rounded up to even (Fel et al. optimise a
    canvas larger than the network's input). Each step scores ``crops`` random crops per
    picture (side a fraction in ``crop_fraction`` of the canvas, centre ``N(0.5, spread)``
    of each side, turned by up to ``degrees``, mirrored with probability 1/2 if ``flip``)
    at the model's input size (a bare ``nn.Module``: ``size``) with ``noise``, and NAdam
    (Fel et al.) takes one step on the phases. ``spectrum`` defaults to the shipped
    natural one. Returns a `Visualization` whose ``importance`` ``Tensor[B, H, W]`` is the
    summed absolute gradient of the score w.r.t. the canvas (over colours and steps) and
    whose ``spectrum_source`` names the spectrum. ``history[k]``: each picture's mean crop
    score in step ``k``; ``final``: the score of the whole canvas, resized to the model's
    input. Reproducible for a given ``seed``; the model is borrowed and left unchanged."""
    require_autograd("maco")
    items = _as_objectives(objectives)
    if steps < 1 or crops < 1:
        raise MethodError(f"steps and crops must be at least 1, got {steps} and {crops}")
    low, high = crop_fraction
    if not 0 < low <= high <= 1:
        raise MethodError(
            f"crop_fraction is (low, high) with 0 < low <= high <= 1, got {crop_fraction}"
        )
    module = as_module(model)
    prep = _preprocess(model)
    if not 1.0 <= canvas <= 4.0:
        raise MethodError(f"canvas is a scale from 1 to 4 of the picture size, got {canvas}")
    base = _render_size(size, prep, None)
    height, width = (round(canvas * side) for side in base)
    width += width % 2
    names = {spec: resolve_layer(module, spec)[0] for o in items for spec in o.layers}
    labels = model.labels if isinstance(model, LoadedModel) else None
    device = model_device(module) if device is None else resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    fixed = natural_spectrum(height, width, spectrum)
    magnitude = fixed.magnitude.to(device)
    phase = (2 * math.pi * torch.rand(len(items), *magnitude.shape, generator=gen) - math.pi).to(
        device
    )
    phase.requires_grad_(True)
    optimizer = torch.optim.NAdam([phase], lr=lr)
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1)
    # a named model sees its own input size; a bare module (no preprocessing) the canvas's
    input_size = prep.height_width if isinstance(model, LoadedModel) else base
    importance = torch.zeros(len(items), height, width, device=device)

    def scores_of(images: torch.Tensor, seen: torch.Tensor, cap, count: int) -> torch.Tensor:
        cap.clear()
        output = module(optimisation_input(module, (seen - mean) / std))
        activations = {spec: cap.activation(name) for spec, name in names.items()}
        context = Seen(images, activations, output, labels, crops=count)
        per_crop = [o(context).view(len(items), count)[b] for b, o in enumerate(items)]
        return torch.stack([values.mean() for values in per_crop])

    history = torch.zeros(steps, len(items))
    with optimising(module, device, sorted(set(names.values())), steps, progress) as (cap, bar):
        for step in range(steps):
            images = maco_image(magnitude, phase)
            seen = random_crops(
                images, crops, input_size, crop_fraction, noise, gen, degrees, flip, spread
            )
            scores = scores_of(images, seen, cap, crops)
            history[step] = scores.detach().cpu()
            phase_grad, image_grad = torch.autograd.grad(scores.sum(), [phase, images])
            importance += image_grad.detach().abs().sum(1)
            phase.grad = -phase_grad  # NAdam minimises; we ascend
            optimizer.step()
            bar.update(scores.detach())
        with torch.no_grad():
            final_images = maco_image(magnitude, phase).detach()
            whole = F.interpolate(final_images, size=input_size, mode="bilinear", antialias=True)
            final = scores_of(final_images, whole, cap, 1).cpu()
        cap.clear()
    return Visualization(
        final_images.cpu(),
        history,
        final,
        [o.name for o in items],
        importance=importance.cpu(),
        spectrum_source=fixed.source,
    )


def power_spectrum_slope(images: torch.Tensor, low: float = 2.0, high: float | None = None):
    """The slope of ``log P(f)`` against ``log f`` per image ``Tensor[B, 3, H, W]`` ->
    ``Tensor[B]``: ``P`` the radially averaged power spectrum of the grey image (mean of
    the colours, its mean removed), ``f`` in cycles per image from ``low`` to ``high``
    (default: half the shorter side), fitted by least squares on one-cycle-wide rings.
    Natural photos lie near -2 (Field 1987; van der Schaaf & van Hateren 1996)."""
    grey = images.detach().float().mean(1)
    grey = grey - grey.mean((1, 2), keepdim=True)
    height, width = grey.shape[-2:]
    power = torch.fft.fft2(grey).abs().pow(2)
    fy = torch.fft.fftfreq(height)[:, None] * height
    fx = torch.fft.fftfreq(width)[None, :] * width
    radius = (fy**2 + fx**2).sqrt().round().long().flatten()
    top = int(high if high is not None else min(height, width) // 2)
    rings = torch.arange(int(low), top + 1)
    slopes = []
    for spectrum in power.flatten(1):
        means = torch.stack([spectrum[radius == r].mean() for r in rings])
        x = rings.double().log()
        y = means.double().clamp_min(1e-30).log()
        x = x - x.mean()
        slopes.append(float((x * (y - y.mean())).sum() / (x * x).sum()))
    return torch.tensor(slopes)
