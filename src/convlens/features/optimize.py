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
import numbers
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convlens.data.preprocess import IMAGENET_PREPROCESS, Preprocess
from convlens.errors import MethodError, TargetError
from convlens.features.activations import channel_maps
from convlens.layers import borrowed_model, capture, resolve_layer
from convlens.layers.borrow import require_autograd
from convlens.layers.find import LayerSpec
from convlens.maps import gaussian_blur
from convlens.models.devices import DeviceSpec, model_device, model_input, placed_on, resolve_device
from convlens.models.loading import LoadedModel, as_module
from convlens.targets import Contrast, Targets, resolve_targets


@dataclass
class Seen:
    """What one forward pass saw: ``images`` ``Tensor[B, 3, H, W]`` in [0, 1] (before the
    transforms), ``activations`` keyed by each layer as the objectives name it, the model
    ``output`` and the model's class ``labels`` (``None`` when unknown)."""

    images: torch.Tensor
    activations: dict[LayerSpec, torch.Tensor]
    output: torch.Tensor
    labels: Sequence[str] | None = None


class Objective:
    """A score per image, ``fn(seen) -> Tensor[B]``, to be maximised; ``layers`` are the
    layers it reads. Compose with ``a + b``, ``a - b``, ``k * a``, ``-a`` (``k`` a real
    number); any other operand raises `MethodError` when the expression is built."""

    def __init__(
        self,
        fn: Callable[[Seen], torch.Tensor],
        layers: Sequence[LayerSpec] = (),
        name: str = "objective",
    ) -> None:
        self.fn, self.layers, self.name = fn, tuple(layers), name

    def __call__(self, seen: Seen) -> torch.Tensor:
        return self.fn(seen)

    def __add__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            raise MethodError(
                f"cannot add a {type(other).__name__} to an Objective; add another Objective "
                "(class_logit, channel, total_variation, ...)"
            )
        return Objective(
            lambda s: self(s) + other(s), self.layers + other.layers, f"{self.name} + {other.name}"
        )

    def __sub__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            raise MethodError(
                f"cannot subtract a {type(other).__name__} from an Objective; subtract "
                "another Objective"
            )
        return self + (-1.0) * other

    def __neg__(self) -> Objective:
        return (-1.0) * self

    def __mul__(self, weight: float) -> Objective:
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise MethodError(
                f"an Objective can be multiplied by a real number only, not a "
                f"{type(weight).__name__}"
            )
        weight = float(weight)
        return Objective(lambda s: weight * self(s), self.layers, f"{weight:g} * {self.name}")

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def class_logit(target: int | str | Contrast) -> Objective:
    """``output[b, k]``: the logit (pre-softmax score) of class ``target``, an id or a class
    name (``"goldfish"``), or ``contrast(i, j)`` for ``output[b, i] - output[b, j]``.
    Resolved by `convlens.targets` once per run (against the model's classes and labels,
    on the first step; `TargetError` naming the allowed range). Ranked targets (``None``,
    ``"top1"``, ``"top3"``, ``contrast("top1", k)``) and callables are refused with
    `TargetError`: they would follow whichever class is on top at each step."""
    try:  # the form now; class names wait for the model's labels
        early = resolve_targets(target, 1)
    except TargetError:
        if not _holds_a_string(target):
            raise
        early = None
    if early is not None:
        _fixed_classes(target, early)
    resolved: dict = {}

    def score(s: Seen) -> torch.Tensor:
        classes = s.output.shape[1] if s.output.dim() == 2 else None
        key = (s.output.shape[0], classes)
        if resolved.get("key") != key or resolved.get("labels") is not s.labels:
            targets = resolve_targets(target, key[0], s.labels, classes)
            resolved.update(key=key, labels=s.labels, targets=_fixed_classes(target, targets))
        return resolved["targets"].score(s.output)

    return Objective(score, (), f"class {target}")


def _holds_a_string(target: object) -> bool:
    """Whether ``target`` (or a side of a contrast) is a string, which may be a class name
    that only the model's labels resolve (on the first step, before any update)."""
    parts = (target.positive, target.negative) if isinstance(target, Contrast) else (target,)
    return any(isinstance(part, str) for part in parts)


def _fixed_classes(target: object, targets: Targets) -> Targets:
    """``targets`` unless they are ranked (``"topK"``, ``None``) or a callable."""
    selectors = [s for s in (targets.positive, targets.negative) if s is not None]
    if targets.fn is not None or any(bool((s.ranks >= 0).any()) for s in selectors):
        raise TargetError(
            f"class_logit takes one fixed class, not {target!r}: a ranked target or a "
            "callable would chase whichever class is on top at each step; give a class id "
            "or name (or contrast(a, b) of two)"
        )
    return targets


def _check_index(index: int, what: str) -> int:
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):
        raise MethodError(f"{what} must be an integer, got {index!r}")
    return int(index)


def channel(layer: LayerSpec, index: int) -> Objective:
    """Mean of channel ``index`` of ``layer`` over positions: ``mean_{i,j} A[b, c, i, j]``."""
    index = _check_index(index, "a channel index")
    return Objective(
        lambda s: channel_maps(s.activations[layer], layer, index).mean((1, 2)),
        (layer,),
        f"{layer}:{index}",
    )


def neuron(
    layer: LayerSpec, index: int, row: int | None = None, col: int | None = None
) -> Objective:
    """One unit ``A[b, c, row, col]`` (default: the centre position)."""
    index = _check_index(index, "a channel index")
    row = None if row is None else _check_index(row, "row")
    col = None if col is None else _check_index(col, "col")

    def score(s: Seen) -> torch.Tensor:
        maps = channel_maps(s.activations[layer], layer, index)
        height, width = maps.shape[1:]
        i = height // 2 if row is None else row
        j = width // 2 if col is None else col
        if not (0 <= i < height and 0 <= j < width):
            raise MethodError(
                f"position ({i}, {j}) is outside layer {layer!r}'s {height}x{width} map: "
                f"row 0..{height - 1}, col 0..{width - 1}"
            )
        return maps[:, i, j]

    return Objective(score, (layer,), f"{layer}:{index}@{row},{col}")


def deepdream(layer: LayerSpec) -> Objective:
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


def _blur_radius(sigma: float) -> int:
    return max(1, math.ceil(2 * sigma))


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """The periodic blur of `render`: `convlens.maps.gaussian_blur` with a kernel of radius
    ``ceil(2 sigma)`` (`_check_fits` keeps each side longer than it, so borders reflect)."""
    return gaussian_blur(images, kernel_size=2 * _blur_radius(sigma) + 1, sigma=sigma)


@dataclass(frozen=True)
class Visualization:
    """``images``: ``Tensor[B, 3, H, W]`` in [0, 1], the result; ``history``:
    ``Tensor[steps, B]``, row ``k`` each image's objective in step ``k``'s forward pass
    (its random transform applied), before that step's update, so ``history[0]`` is the
    starting score; ``final``: ``Tensor[B]``, the objective of ``images`` themselves (no
    transform, after the last update); ``objectives``: one name per image."""

    images: torch.Tensor
    history: torch.Tensor
    final: torch.Tensor
    objectives: list[str]


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
    require_autograd("render")
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
        output = module(model_input(module, (seen_images - mean) / std))
        activations = {spec: cap.activation(name) for spec, name in names.items()}
        seen = Seen(images, activations, output, labels)
        return torch.stack([o(seen)[b] for b, o in enumerate(items)])

    history = torch.zeros(steps, len(items))
    with (
        placed_on(module, device),
        borrowed_model(module),
        torch.enable_grad(),
        capture(module, layers, gradients=True) as cap,
        _Progress(steps, progress) as bar,
    ):
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


class _Progress:
    """A tqdm bar on stderr, opened after the first step (so an error raised by the first
    step prints no bar) and always closed."""

    def __init__(self, steps: int, enabled: bool) -> None:
        self.steps, self.enabled, self.bar = steps, enabled, None

    def __enter__(self) -> _Progress:
        return self

    def update(self, scores: torch.Tensor) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.steps, file=sys.stderr, desc="visualize", leave=False)
        self.bar.set_postfix(objective=f"{float(scores.mean()):.3g}", refresh=False)
        self.bar.update(1)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
