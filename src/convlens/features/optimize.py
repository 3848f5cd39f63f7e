"""Activation maximisation: gradient ascent on an image (Erhan et al. 2009; Simonyan et al.
2014; Olah et al. 2017, "Feature Visualization").

Objectives + parametrisation + transforms + one loop. An `Objective` maps what the forward
pass saw (layer activations, logits, the image) to one score per image, ``Tensor[B]``;
objectives compose with ``+``, ``-`` and scalar ``*``. A parametrisation turns trainable
tensors into images ``Tensor[B, 3, H, W]`` in [0, 1] (pixels through a sigmoid, or a
scaled Fourier spectrum with decorrelated colours). Random jitter, scale and rotation are
applied before each forward pass; `render` maximises ``sum_b objective_b(x_b)`` with Adam,
taking ``torch.autograd.grad`` w.r.t. the parametrisation only.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import MethodError
from convlens.layers import borrowed_model, capture, resolve_layer
from convlens.models.loading import LoadedModel, as_module
from convlens.models.preprocess import IMAGENET_PREPROCESS, Preprocess


@dataclass
class Seen:
    """What one forward pass saw: ``images`` ``Tensor[B, 3, H, W]`` in [0, 1] (before the
    transforms), ``activations`` by layer name, and the model ``output``."""

    images: torch.Tensor
    activations: dict[str, torch.Tensor]
    output: torch.Tensor


class Objective:
    """A score per image, ``fn(seen) -> Tensor[B]``, to be maximised; ``layers`` are the
    layers it reads. Compose with ``a + b``, ``a - b``, ``k * a``, ``-a``."""

    def __init__(self, fn: Callable[[Seen], torch.Tensor], layers=(), name: str = "objective"):
        self.fn, self.layers, self.name = fn, tuple(layers), name

    def __call__(self, seen: Seen) -> torch.Tensor:
        return self.fn(seen)

    def __add__(self, other: Objective) -> Objective:
        return Objective(
            lambda s: self(s) + other(s), self.layers + other.layers, f"{self.name} + {other.name}"
        )

    def __sub__(self, other: Objective) -> Objective:
        return self + (-1.0) * other

    def __neg__(self) -> Objective:
        return (-1.0) * self

    def __mul__(self, weight: float) -> Objective:
        return Objective(lambda s: weight * self(s), self.layers, f"{weight:g} * {self.name}")

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def class_logit(class_id: int) -> Objective:
    """``output[b, class_id]``: the class's logit (pre-softmax score)."""
    return Objective(lambda s: s.output[:, class_id], (), f"class {class_id}")


def channel(layer: str, index: int) -> Objective:
    """Mean of channel ``index`` of ``layer`` over positions: ``mean_{i,j} A[b, c, i, j]``."""
    return Objective(
        lambda s: s.activations[layer][:, index].mean((1, 2)), (layer,), f"{layer}:{index}"
    )


def neuron(layer: str, index: int, row: int | None = None, col: int | None = None) -> Objective:
    """One unit ``A[b, c, row, col]`` (default: the centre position)."""

    def score(s: Seen) -> torch.Tensor:
        maps = s.activations[layer][:, index]
        i = maps.shape[1] // 2 if row is None else row
        j = maps.shape[2] // 2 if col is None else col
        return maps[:, i, j]

    return Objective(score, (layer,), f"{layer}:{index}@{row},{col}")


def deepdream(layer: str) -> Objective:
    """Layer L2 (DeepDream, Mordvintsev et al. 2015): ``mean A[b]^2`` over channels and
    positions."""
    return Objective(
        lambda s: s.activations[layer].pow(2).flatten(1).mean(1), (layer,), f"deepdream {layer}"
    )


def l2_decay(weight: float = 1.0) -> Objective:
    """``-w * mean (x - 0.5)^2``: keeps pixels near grey (add to an objective)."""
    return Objective(lambda s: -weight * (s.images - 0.5).pow(2).flatten(1).mean(1), (), "l2 decay")


def total_variation(weight: float = 1.0) -> Objective:
    """``-w * mean(|x[i+1, j] - x[i, j]| + |x[i, j+1] - x[i, j]|)``: penalises noise."""

    def score(s: Seen) -> torch.Tensor:
        x = s.images
        rows = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
        cols = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
        return -weight * (rows + cols)

    return Objective(score, (), "total variation")


# Colour decorrelation: square root of the ImageNet colour covariance (Olah et al. 2017),
# normalised so its largest column norm is 1.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()
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
    ``x = sigmoid(C . irfft2(S * w))`` with ``w[f] = 1 / max(|f|, 1/max(H, W))^decay``,
    ``C`` the colour square-root matrix. `set_image` inverts it exactly (round trip)."""

    def __init__(self, batch: int, height: int, width: int, decay: float = 1.0, device=None):
        fy = torch.fft.fftfreq(height, device=device)[:, None]
        fx = torch.fft.rfftfreq(width, device=device)[None, :]
        self.size = (height, width)
        self.scale = 1.0 / (fy**2 + fx**2).sqrt().clamp_min(1.0 / max(height, width)) ** decay
        self.params = [torch.zeros(batch, 3, height, width // 2 + 1, 2, device=device)]

    def image(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.params[0]) * self.scale
        colours = torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
        return torch.sigmoid(torch.einsum("ij,bjhw->bihw", _COLOR.to(colours), colours))

    def set_image(self, images: torch.Tensor) -> None:
        logits = torch.logit(images.clamp(_EPS, 1 - _EPS))
        colours = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_COLOR).to(logits), logits)
        spectrum = torch.fft.rfft2(colours, norm="ortho") / self.scale
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


def gaussian_blur(x: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """Separable Gaussian blur of ``Tensor[B, 3, H, W]`` (kernel radius ``ceil(2 sigma)``)."""
    radius = max(1, math.ceil(2 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).repeat(3, 1)
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(3, 1, 1, -1), groups=3)
    return F.conv2d(x, kernel.view(3, 1, -1, 1), groups=3)


@dataclass(frozen=True)
class Visualization:
    """``images``: ``Tensor[B, 3, H, W]`` in [0, 1]; ``history``: ``Tensor[steps, B]`` of
    each image's objective at every step; ``objectives``: one name per image."""

    images: torch.Tensor
    history: torch.Tensor
    objectives: list[str]


def _as_objectives(objectives) -> list[Objective]:
    items = [objectives] if isinstance(objectives, Objective) else list(objectives)
    if not items or not all(isinstance(o, Objective) for o in items):
        raise MethodError("pass an Objective or a list of them (class_logit, channel, ...)")
    return items


def _preprocess(model) -> Preprocess:
    return model.preprocess if isinstance(model, LoadedModel) else IMAGENET_PREPROCESS


def _start(param, start, batch, height, width, gen) -> None:
    if isinstance(start, torch.Tensor):
        images = start.detach().clone().reshape(-1, 3, height, width).expand(batch, -1, -1, -1)
    elif start == "noise":
        images = 0.5 + 0.1 * torch.randn(batch, 3, height, width, generator=gen)
    elif start == "blank":
        images = torch.full((batch, 3, height, width), 0.5)
    else:
        raise MethodError(f"unknown start {start!r}; use 'blank', 'noise' or an image tensor")
    param.set_image(images.to(param.params[0].device).clamp(0, 1))


def render(
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
) -> Visualization:
    """Maximise each objective on its own image (one batch, image ``b`` for objective ``b``).

    ``start`` is ``"blank"`` (grey), ``"noise"`` or ``Tensor[3, H, W]`` in [0, 1];
    ``size`` defaults to the model's input size. Images go through the model's
    normalisation (``(x - mean) / std``). ``blur_every`` > 0 blurs the image every that
    many steps (periodic blur; works through `set_image` for both parametrisations).
    Reproducible for a given ``seed``. The model is borrowed: eval mode for the run, no
    hooks left, parameters and their ``.grad`` untouched.
    """
    items = _as_objectives(objectives)
    if param not in PARAMETRISATIONS:
        raise MethodError(f"unknown param {param!r}; use one of {', '.join(PARAMETRISATIONS)}")
    if steps < 1:
        raise MethodError(f"steps must be at least 1, got {steps}")
    module = as_module(model)
    prep = _preprocess(model)
    height, width = (
        prep.height_width if size is None else ((size, size) if isinstance(size, int) else size)
    )
    layers = sorted({resolve_layer(module, name)[0] for o in items for name in o.layers})
    device = next(module.parameters(), torch.empty(0)).device
    gen = torch.Generator().manual_seed(seed)
    image_param = PARAMETRISATIONS[param](len(items), height, width, device=device)
    _start(image_param, start, len(items), height, width, gen)
    for tensor in image_param.params:
        tensor.requires_grad_(True)
    optimizer = torch.optim.Adam(image_param.params, lr=lr)
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1)
    history = torch.zeros(steps, len(items))
    bar = _progress(steps, progress)
    with (
        borrowed_model(module),
        torch.enable_grad(),
        capture(module, layers, gradients=True) as cap,
    ):
        for step in range(steps):
            images = image_param.image()
            seen_images = random_transform(images, transforms, gen) if transforms else images
            for calls in cap.calls.values():
                calls.clear()
            output = module((seen_images - mean) / std)
            seen = Seen(images, {name: cap.activation(name) for name in layers}, output)
            scores = torch.stack([o(seen)[b] for b, o in enumerate(items)])
            history[step] = scores.detach().cpu()
            grads = torch.autograd.grad(scores.sum(), image_param.params)
            for tensor, grad in zip(image_param.params, grads, strict=True):
                tensor.grad = -grad  # Adam minimises; we ascend
            optimizer.step()
            if blur_every and (step + 1) % blur_every == 0 and step + 1 < steps:
                with torch.no_grad():
                    image_param.set_image(gaussian_blur(image_param.image(), blur_sigma))
            bar(step, scores.detach())
    with torch.no_grad():
        final = image_param.image().detach().cpu()
    return Visualization(final, history, [o.name for o in items])


def _progress(steps: int, enabled: bool) -> Callable[[int, torch.Tensor], None]:
    if not enabled:
        return lambda step, scores: None
    from tqdm import tqdm

    bar = tqdm(total=steps, file=sys.stderr, desc="visualize", leave=False)

    def update(step: int, scores: torch.Tensor) -> None:
        bar.set_postfix(objective=f"{float(scores.mean()):.3g}", refresh=False)
        bar.update(1)
        if step == steps - 1:
            bar.close()

    return update
