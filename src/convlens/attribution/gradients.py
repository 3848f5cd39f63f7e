"""Gradient methods: saliency, input x gradient, SmoothGrad, Integrated Gradients.

Each is a function of the input gradient ``g = d S_t(x) / d x`` of the target score
``S_t`` (see ``docs/methods.md``). Methods that evaluate the model at points other than
``x`` (noisy copies, path points) first run the clean input once without autograd: it pins
the explained class (``"top1"`` means the top class of ``x`` for every evaluation), is the
output they hand back (`MethodResult`), and is what a callable target sees for the images
not being evaluated (`convlens.targets.CopyTargets`). Internal ``batch_size`` options only
split work into chunks; they never change results. Each function computes a
`MethodResult`; `register_method` publishes it returning the maps (see its docstring).
"""

from __future__ import annotations

import torch
from torch import nn

from convlens.attribution.baselines import baseline_rows
from convlens.attribution.common import (
    chunk_size,
    clean_pass,
    in_chunks,
    input_gradient,
    positive_int,
    prepare,
    reduce_channels,
    work_items,
)
from convlens.attribution.registry import MethodResult, register_method
from convlens.attribution.tunnel import run_noise_tunnel
from convlens.data.progress import progress_bar
from convlens.errors import MethodError
from convlens.layers.borrow import borrowed_model
from convlens.models.loading import LoadedModel

REDUCTIONS = ("max_abs", "square")


def _check_reduce(reduce: str) -> None:
    if reduce not in REDUCTIONS:
        raise MethodError(f"unknown reduce {reduce!r}; use one of {', '.join(REDUCTIONS)}")


@register_method("saliency", "gradient")
def saliency(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    reduce: str = "max_abs",
) -> MethodResult:
    """Gradient saliency (Simonyan et al. 2014): ``max_c |dS/dx|`` or ``sum_c (dS/dx)^2``.

    Returns ``Tensor[N, H, W]`` (non-negative). ``reduce``: "max_abs" (default) or "square".
    """
    _check_reduce(reduce)
    return _saliency(model, images, target, reduce=reduce)


def _saliency(
    model: nn.Module | LoadedModel, images: torch.Tensor, target: object, *, reduce: str
) -> MethodResult:
    prepared = prepare(model, images, target)
    with borrowed_model(prepared.module):
        gradient, output = input_gradient(prepared.module, prepared.images, prepared.targets)
    return MethodResult(reduce_channels(gradient, reduce), output)


@register_method("input_x_gradient", "gradient")
def input_x_gradient(
    model: nn.Module | LoadedModel, images: torch.Tensor, target: object = None
) -> MethodResult:
    """Input times gradient (Shrikumar et al. 2016): ``M = sum_c x_c * dS/dx_c``, signed,
    ``Tensor[N, H, W]``."""
    prepared = prepare(model, images, target)
    with borrowed_model(prepared.module):
        gradient, output = input_gradient(prepared.module, prepared.images, prepared.targets)
    return MethodResult((prepared.images * gradient).sum(dim=1), output)


@register_method("smoothgrad", "gradient", slow=True)
def smoothgrad(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    n_samples: int = 25,
    noise: float = 0.15,
    seed: int = 0,
    reduce: str = "max_abs",
    batch_size: int | None = None,
    progress: bool = False,
) -> MethodResult:
    """SmoothGrad (Smilkov et al. 2017): saliency averaged over noisy copies of the input.

    ``M = (1/n) sum_k R(dS/dx (x + sigma * e_k))``, ``e_k ~ N(0, I)``, ``sigma = noise *
    (max(x) - min(x))`` per image, ``R`` the saliency reduction ("max_abs" or "square").
    The class is pinned on the clean input. The noise draws ``e_k`` come from ``seed`` and
    are the same for every image, so a batch equals single-image calls. ``batch_size``:
    noisy copies built at a time (default: see `chunk_size`; never changes results);
    ``progress``: a tqdm bar. The same as ``saliency`` with ``noise_tunnel="smoothgrad"``
    (`convlens.attribution.tunnel`).
    Returns ``Tensor[N, H, W]``.
    """
    _check_reduce(reduce)
    return run_noise_tunnel(
        _saliency,
        model,
        images,
        target,
        kind="smoothgrad",
        n_samples=n_samples,
        noise=noise,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        reduce=reduce,
    )


def integrated_gradients_attributions(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    baseline: torch.Tensor | str | None = None,
    n_steps: int = 50,
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel IG attributions ``Tensor[N, C, H, W]``, ``f(x)`` and ``f(x')``
    (``Tensor[N]`` each), with the trapezoid rule of `integrated_gradients`, and the model
    output on the clean rows ``Tensor[N, ...]``."""
    n_steps = positive_int("n_steps", n_steps)
    if n_steps < 2:
        raise MethodError("n_steps must be >= 2 (the path's two ends are always evaluated)")
    prepared = prepare(model, images, target)
    x = prepared.images
    rows = len(x)
    size = chunk_size(batch_size, rows)
    base = baseline_rows(model, x, baseline, prepared.targets.image_index, len(images))
    with borrowed_model(prepared.module):
        clean, pinned = clean_pass(prepared)
        alphas = torch.linspace(0, 1, n_steps, dtype=torch.float64)
        weights = torch.full((n_steps,), 1.0 / (n_steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        step_of, row_of = work_items(n_steps, rows)
        total = torch.zeros_like(x, dtype=torch.float64)
        ends = torch.zeros(2, rows, dtype=x.dtype)  # S(x') and S(x), from the path's ends
        chunks = list(in_chunks(len(row_of), size))
        bar = progress_bar(chunks, disable=not progress, desc="integrated gradients")
        for chunk in bar:
            row, step = row_of[chunk], step_of[chunk]
            alpha = alphas[step].to(x.dtype)[:, None, None, None].to(x.device)
            points = base[row] + alpha * (x[row] - base[row])
            chunk_targets = pinned.copies(row, clean)
            gradient, output = input_gradient(prepared.module, points, chunk_targets)
            scores = chunk_targets.score(output)
            weight = weights[step][:, None, None, None].to(x.device)
            total.index_add_(0, row.to(x.device), gradient.double() * weight)
            for end, at_end in enumerate((step == 0, step == n_steps - 1)):
                ends[end, row[at_end]] = scores[at_end.to(scores.device)].detach().cpu()
    attributions = (x - base).double() * total
    return attributions.to(x.dtype), ends[1].to(x.device), ends[0].to(x.device), clean


@register_method("integrated_gradients", "gradient", slow=True)
def integrated_gradients(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    baseline: torch.Tensor | str | None = None,
    n_steps: int = 50,
    batch_size: int | None = None,
    progress: bool = False,
) -> MethodResult:
    """Integrated Gradients (Sundararajan et al. 2017), summed over channels (signed).

    ``A_c = (x_c - x'_c) * int_0^1 dS/dx_c(x' + a (x - x')) da``; the integral is the
    trapezoid rule on ``n_steps`` equally spaced points ``a_k = k / (n_steps - 1)``, both
    ends included (weights ``1/(n-1)``, halved at the ends), so exactly ``n_steps`` gradient
    evaluations. ``baseline`` ``x'``: None (zeros), a name (``"black"``, ``"blur"``,
    ``"mean"``, ``"zero"``) or image file (`convlens.attribution.baselines`), or
    ``Tensor[C, H, W]``, ``[1, C, H, W]`` or ``[B, C, H, W]``. ``batch_size``: path points
    built at a time (default: see `chunk_size`; never changes results); ``progress``: a
    tqdm bar.
    Returns ``(Tensor[N, H, W], {"completeness_error": Tensor[N]})`` with
    ``|sum(A) - (S(x) - S(x'))| / |S(x) - S(x')|`` (denominator floored at 1e-12).
    """
    attributions, score_x, score_base, clean = integrated_gradients_attributions(
        model,
        images,
        target,
        baseline=baseline,
        n_steps=n_steps,
        batch_size=batch_size,
        progress=progress,
    )
    delta = (score_x - score_base).double()
    total = attributions.double().flatten(1).sum(dim=1)
    error = ((total - delta).abs() / delta.abs().clamp_min(1e-12)).to(attributions.dtype)
    return MethodResult(attributions.sum(dim=1), clean, {"completeness_error": error})
