"""Activation maximisation: gradient ascent on an image (Erhan et al. 2009; Simonyan et al.
2014; Olah et al. 2017, "Feature Visualization").

Objectives (`convlens.features.objectives`) + parametrisation + transforms + one loop,
`visualize` (what ``convlens visualize`` runs). A parametrisation turns trainable tensors
into images ``Tensor[B, 3, H, W]`` in [0, 1] (pixels through a sigmoid, or a scaled
Fourier spectrum with decorrelated colours). Random jitter, scale and rotation are
applied before each forward pass; `visualize` maximises ``sum_b objective_b(x_b)`` with
Adam, taking ``torch.autograd.grad`` w.r.t. the parametrisation only.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convlens.data.preprocess import IMAGENET_PREPROCESS, Preprocess
from convlens.errors import MethodError
from convlens.features.objectives import Objective, Seen
from convlens.layers import borrowed_model, capture, resolve_layer
from convlens.layers.borrow import require_autograd
from convlens.maps import gaussian_blur
from convlens.models.devices import (
    DeviceSpec,
    cpu_fast_layout,
    model_device,
    model_input,
    placed_on,
    resolve_device,
)
from convlens.models.loading import LoadedModel, as_module

# Colour decorrelation: square root of the ImageNet colour covariance (Olah et al. 2017),
# normalised so its largest column norm is 1.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()
_FOURIER_GAIN = 4.0
_EPS = 1e-4


class PixelImage:
    """Pixels through a sigmoid: ``x = sigmoid(p)``, ``p`` ``Tensor[B, 3, H, W]``."""

    def __init__(self, batch: int, height: int, width: int, device=None) -> None:
        self.params = [torch.zeros(batch, 3, height, width, device=device)]

    def image(self) -> torch.Tensor:
        return torch.sigmoid(self.params[0])

    def set_image(self, images: torch.Tensor) -> None:
        self.params[0].data.copy_(torch.logit(images.clamp(_EPS, 1 - _EPS)))


class FourierImage:
    """Scaled Fourier spectrum with decorrelated colours (Olah et al. 2017):
    ``x = sigmoid(C . irfft2(S * w) / 4)`` with ``w[f] = 1 / max(|f|, 1/max(H, W))^decay``,
    ``C`` the colour square-root matrix. The 1/4 is Lucid's constant: with it a step of
    Adam at a given learning rate changes the image as much as in Lucid and lucent, and
    the images keep recognisable shapes instead of saturating (measured on the goldfish
    class). `set_image` inverts it exactly (round trip)."""

    def __init__(self, batch: int, height: int, width: int, decay: float = 1.0, device=None):
        fy = torch.fft.fftfreq(height, device=device)[:, None]
        fx = torch.fft.rfftfreq(width, device=device)[None, :]
        self.size = (height, width)
        self.scale = 1.0 / (fy**2 + fx**2).sqrt().clamp_min(1.0 / max(height, width)) ** decay
        self.params = [torch.zeros(batch, 3, height, width // 2 + 1, 2, device=device)]

    def image(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.params[0]) * self.scale
        colours = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / _FOURIER_GAIN
        return torch.sigmoid(torch.einsum("ij,bjhw->bihw", _COLOR.to(colours), colours))

    def set_image(self, images: torch.Tensor) -> None:
        logits = torch.logit(images.clamp(_EPS, 1 - _EPS))
        colours = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_COLOR).to(logits), logits)
        spectrum = torch.fft.rfft2(colours * _FOURIER_GAIN, norm="ortho") / self.scale
        self.params[0].data.copy_(torch.view_as_real(spectrum))


PARAMETRISATIONS = {"pixels": PixelImage, "fourier": FourierImage}


@dataclass(frozen=True)
class Transforms:
    """Random jitter (pixels), scale factors and rotation (degrees) per step."""

    jitter: int = 8
    scales: tuple[float, ...] = (0.95, 1.0, 1.05)
    degrees: float = 5.0


def random_transform(x: torch.Tensor, t: Transforms, gen: torch.Generator) -> torch.Tensor:
    """Jitter by a random shift in ``[-jitter, jitter]`` (reflect padding), then one random
    scale and rotation as an affine resampling. Same transform for the whole batch."""
    if t.jitter:
        pad = t.jitter
        dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=gen))
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        x = x[..., dy : dy + x.shape[-2] - 2 * pad, dx : dx + x.shape[-1] - 2 * pad]
    scale = t.scales[int(torch.randint(len(t.scales), (1,), generator=gen))] if t.scales else 1.0
    angle = math.radians(float(torch.empty(1).uniform_(-t.degrees, t.degrees, generator=gen)))
    if scale != 1.0 or angle != 0.0:
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)
    return x


def optimisation_input(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The normalised images ``Tensor[B, 3, H, W]`` as ``module`` takes them
    (`model_input`), in channels-last layout on the CPU (`cpu_fast_layout`): a forward and
    input-gradient pass of Lite0 takes about 20% less time. Same values and shape; results
    agree up to float rounding."""
    return cpu_fast_layout(model_input(module, images))


def _blur_radius(sigma: float) -> int:
    return max(1, math.ceil(2 * sigma))


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """The periodic blur of `visualize`: `convlens.maps.gaussian_blur` with a kernel of radius
    ``ceil(2 sigma)`` (`_check_fits` keeps each side longer than it, so borders reflect)."""
    return gaussian_blur(images, kernel_size=2 * _blur_radius(sigma) + 1, sigma=sigma)


@dataclass(frozen=True)
class Visualization:
    """``images``: ``Tensor[B, 3, H, W]`` in [0, 1], the result; ``history``:
    ``Tensor[steps, B]``, row ``k`` each image's objective in step ``k``'s forward pass
    (its random transform applied), before that step's update, so ``history[0]`` is the
    starting score; ``final``: ``Tensor[B]``, the objective of ``images`` themselves (no
    transform, after the last update); ``objectives``: one name per image.
    `convlens.features.maco` adds ``importance`` ``Tensor[B, H, W]`` (summed absolute
    gradient of the score w.r.t. each pixel) and ``spectrum_source``;
    `convlens.features.accentuate` adds ``distance`` ``Tensor[B]`` (each result's relative
    feature distance to its photo)."""

    images: torch.Tensor
    history: torch.Tensor
    final: torch.Tensor
    objectives: list[str]
    importance: torch.Tensor | None = None
    spectrum_source: str | None = None
    distance: torch.Tensor | None = None


def _as_objectives(objectives) -> list[Objective]:
    items = [objectives] if isinstance(objectives, Objective) else list(objectives)
    if not items or not all(isinstance(o, Objective) for o in items):
        raise MethodError("pass an Objective or a list of them (class_logit, channel, ...)")
    return items


def _preprocess(model) -> Preprocess:
    return model.preprocess if isinstance(model, LoadedModel) else IMAGENET_PREPROCESS


def _start_images(start, batch: int) -> torch.Tensor | None:
    """A start tensor as ``Tensor[batch, 3, H, W]`` in [0, 1], checked; ``None`` for names."""
    if not isinstance(start, torch.Tensor):
        if start not in ("blank", "noise"):
            raise MethodError(f"unknown start {start!r}; use 'blank', 'noise' or an image tensor")
        return None
    images = start.detach()
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] not in (1, batch):
        raise MethodError(
            f"a start image is Tensor[3, H, W] (or [1 or {batch}, 3, H, W] for {batch} "
            f"objectives), got {tuple(start.shape)}"
        )
    if not images.is_floating_point() or images.numel() == 0:
        raise MethodError(f"a start image holds float pixels in [0, 1], got {images.dtype}")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise MethodError(
            f"a start image holds pixels in [0, 1] (not normalised), got [{low:.3g}, {high:.3g}]"
        )
    return images.expand(batch, -1, -1, -1).float()


def _render_size(size, prep: Preprocess, start: torch.Tensor | None) -> tuple[int, int]:
    """``(H, W)``: ``size``, else the start image's size, else the model's input size."""
    if size is None:
        return tuple(start.shape[-2:]) if start is not None else prep.height_width
    pair = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
    if len(pair) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in pair
    ):
        raise MethodError(f"size is a positive int or (height, width), got {size!r}")
    pair = (int(pair[0]), int(pair[1]))
    if start is not None and tuple(start.shape[-2:]) != pair:
        raise MethodError(
            f"the start image is {start.shape[-2]}x{start.shape[-1]} but size is "
            f"{pair[0]}x{pair[1]}; resize the image or leave size=None to use its size"
        )
    return pair


def _check_fits(height: int, width: int, transforms, blur_every: int, blur_sigma: float):
    """Reflect padding needs a side longer than the pad: check before the loop."""
    needs = [(transforms.jitter, f"jitter {transforms.jitter}")] if transforms else []
    if blur_every:
        if blur_sigma <= 0:
            raise MethodError(f"blur_sigma must be positive, got {blur_sigma}")
        radius = _blur_radius(blur_sigma)
        needs.append((radius, f"blur radius {radius} (sigma {blur_sigma:g})"))
    for pad, what in needs:
        if min(height, width) <= pad:
            raise MethodError(
                f"a render size of {height}x{width} pixels is too small for {what}: each side "
                f"needs more than {pad} pixels; render larger, or lower the jitter / blur"
            )


def _initial_images(start, images, batch, height, width, gen) -> torch.Tensor:
    if images is not None:
        return images
    if start == "noise":
        return (0.5 + 0.1 * torch.randn(batch, 3, height, width, generator=gen)).clamp(0, 1)
    return torch.full((batch, 3, height, width), 0.5)


def visualize(
    model: nn.Module | LoadedModel,
    objectives: Objective | Sequence[Objective],
    *,
    steps: int = 256,
    size: int | tuple[int, int] | None = None,
    param: str = "fourier",
    start: str | torch.Tensor = "blank",
    lr: float = 0.05,
    transforms: Transforms | None = Transforms(),
    blur_every: int = 0,
    blur_sigma: float = 0.5,
    seed: int = 0,
    progress: bool = False,
    device: DeviceSpec | None = None,
) -> Visualization:
    """Maximise each objective on its own image (one batch, image ``b`` for objective ``b``).

    ``start`` is ``"blank"`` (grey 0.5), ``"noise"`` (grey plus N(0, 0.1) noise) or an
    image ``Tensor[3, H, W]`` in [0, 1]; ``size`` defaults to the start image's size, else
    the model's input size. Images go through the model's normalisation
    (``(x - mean) / std``). ``blur_every`` > 0 blurs the image every that many steps
    (periodic blur; works through `set_image` for both parametrisations). Layers are
    resolved once; a class, channel or position out of range raises before any update.
    Reproducible for a given ``seed``. The model is borrowed: eval mode for the run, no
    hooks left, parameters and their ``.grad`` untouched. ``device``: run there and move the
    model back afterwards (None: where the model is); the results are on the CPU.
    """
    require_autograd("visualize")
    items = _as_objectives(objectives)
    if param not in PARAMETRISATIONS:
        raise MethodError(f"unknown param {param!r}; use one of {', '.join(PARAMETRISATIONS)}")
    if steps < 1:
        raise MethodError(f"steps must be at least 1, got {steps}")
    module = as_module(model)
    prep = _preprocess(model)
    start_images = _start_images(start, len(items))
    height, width = _render_size(size, prep, start_images)
    _check_fits(height, width, transforms, blur_every, blur_sigma)
    names = {spec: resolve_layer(module, spec)[0] for o in items for spec in o.layers}
    layers = sorted(set(names.values()))
    labels = model.labels if isinstance(model, LoadedModel) else None
    device = model_device(module) if device is None else resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    image_param = PARAMETRISATIONS[param](len(items), height, width, device=device)
    initial = _initial_images(start, start_images, len(items), height, width, gen)
    image_param.set_image(initial.to(device))
    for tensor in image_param.params:
        tensor.requires_grad_(True)
    optimizer = torch.optim.Adam(image_param.params, lr=lr)
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1)

    def scores_of(images: torch.Tensor, seen_images: torch.Tensor, cap) -> torch.Tensor:
        cap.clear()
        output = module(optimisation_input(module, (seen_images - mean) / std))
        activations = {spec: cap.activation(name) for spec, name in names.items()}
        seen = Seen(images, activations, output, labels)
        return torch.stack([o(seen)[b] for b, o in enumerate(items)])

    history = torch.zeros(steps, len(items))
    with optimising(module, device, layers, steps, progress) as (cap, bar):
        for step in range(steps):
            images = image_param.image()
            seen_images = random_transform(images, transforms, gen) if transforms else images
            scores = scores_of(images, seen_images, cap)
            history[step] = scores.detach().cpu()
            grads = torch.autograd.grad(scores.sum(), image_param.params)
            for tensor, grad in zip(image_param.params, grads, strict=True):
                tensor.grad = -grad  # Adam minimises; we ascend
            optimizer.step()
            if blur_every and (step + 1) % blur_every == 0 and step + 1 < steps:
                with torch.no_grad():
                    image_param.set_image(_blur(image_param.image(), blur_sigma))
            bar.update(scores.detach())
        with torch.no_grad():
            final_images = image_param.image().detach()
        final = scores_of(final_images, final_images, cap).detach().cpu()
        cap.clear()
    return Visualization(final_images.cpu(), history, final, [o.name for o in items])


@contextmanager
def optimising(module: nn.Module, device, layers, steps: int, progress: bool):
    """What every optimisation loop here runs inside (`visualize`, `maco`, `accentuate`):
    ``module`` placed on ``device`` and borrowed (eval mode, handed back unchanged),
    autograd on, ``layers`` captured with their gradients, and a progress bar of ``steps``;
    yields ``(capture, bar)``."""
    with (
        placed_on(module, device),
        borrowed_model(module),
        torch.enable_grad(),
        capture(module, layers, gradients=True) as cap,
        _Progress(steps, progress) as bar,
    ):
        yield cap, bar


class _Progress:
    """A tqdm bar on stderr, opened after the first step (so an error raised by the first
    step prints no bar) and always closed."""

    def __init__(self, steps: int, enabled: bool) -> None:
        self.steps, self.enabled, self.bar, self.done = steps, enabled, None, 0

    def __enter__(self) -> _Progress:
        return self

    def update(self, scores: torch.Tensor) -> None:
        if not self.enabled:
            return
        from convlens.data.progress import is_reported_step, is_terminal

        if not is_terminal(sys.stderr):  # a log: a few single lines, no redrawn bar
            self.done += 1
            if is_reported_step(self.done, self.steps):
                objective = float(scores.mean())
                print(
                    f"visualize: {self.done}/{self.steps} objective={objective:.3g}",
                    file=sys.stderr,
                    flush=True,
                )
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.steps, file=sys.stderr, desc="visualize", leave=False)
        self.bar.set_postfix(objective=f"{float(scores.mean()):.3g}", refresh=False)
        self.bar.update(1)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
