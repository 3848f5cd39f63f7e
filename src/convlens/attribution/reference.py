"""Reference-based methods: DeepLIFT, DeepLIFT-SHAP and GradientSHAP.

Each explains the difference of the target score ``S`` between the input ``x`` and a
baseline ``x'`` (`convlens.attribution.baselines`); attributions are summed over channels
(signed maps ``Tensor[N, H, W]``, like Integrated Gradients).

- DeepLIFT, rescale rule (Shrikumar et al. 2017): ``A = (x - x') * d``, ``d`` the input
  gradient with every element-wise nonlinearity's derivative replaced by the multiplier
  ``(f(z) - f(z')) / (z - z')`` (`convlens.layers.rescale`). ``sum(A) = S(x) - S(x')``.
- DeepLIFT-SHAP (Lundberg & Lee 2017): the mean of DeepLIFT over ``K`` baselines;
  ``sum(A) = S(x) - mean_k S(x'_k)``.
- GradientSHAP (Lundberg & Lee 2017; Captum's definition): expected gradients,
  ``A = mean_k (x~_k - b_k) * dS/dx(b_k + a_k (x~_k - b_k))`` with ``b_k`` drawn from the
  baselines, ``a_k ~ U(0, 1)`` and ``x~_k = x + sigma * e_k`` a noisy copy.

DeepLIFT and DeepLIFT-SHAP return the extra ``completeness_error``, ``|sum(A) - (S(x) -
S(x'))| / |S(x) - S(x')|`` per row (denominator floored at 1e-12), like Integrated
Gradients.
"""

from __future__ import annotations

import torch
from torch import nn

from convlens.attribution.baselines import baseline_distribution, baseline_rows
from convlens.attribution.common import (
    SharedRows,
    chunk_size,
    clean_pass,
    fix_ranked_targets,
    in_chunks,
    input_gradient,
    per_row_gradients,
    positive_int,
    prepare,
    work_items,
)
from convlens.attribution.registry import MethodResult, register_method
from convlens.attribution.tunnel import check_noise, noise_draws
from convlens.data.progress import progress_bar
from convlens.layers.borrow import borrowed_model, require_autograd
from convlens.layers.rescale import recorded_references, rescale_rule
from convlens.models.loading import LoadedModel
from convlens.targets import CopyTargets, Targets


def deeplift_gradient(
    module: nn.Module,
    inputs: torch.Tensor,
    references: torch.Tensor,
    targets: Targets | CopyTargets,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepLIFT multipliers ``Tensor[M, C, H, W]`` of each row's target score for
    ``inputs`` against ``references`` (both ``Tensor[M, C, H, W]``, paired by row), the
    output on the inputs and the output on the references. Two forward passes: the
    references (no autograd, nonlinearity inputs recorded), then the inputs with the
    rescale rule; one backward pass (rows with the same input and reference share the
    forward passes, one backward pass per row of the largest group: `SharedRows`)."""
    require_autograd("DeepLIFT")
    # rows with the same input and reference (a grid explained once per cell) share both
    # forward passes; each row's multipliers then come from its own backward pass
    shared = SharedRows.of(inputs.detach(), references.detach())
    pick = shared.first.to(inputs.device) if shared.pays_per_row_backward() else None
    if pick is not None:
        inputs, references = inputs[pick], references[pick]
    with torch.no_grad(), recorded_references(module) as recorded:
        reference_output = module(references)
    leaf = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        with rescale_rule(module, recorded):
            output = module(leaf)
        if pick is None:
            (gradient,) = torch.autograd.grad(targets.score(output).sum(), leaf)
            return gradient, output.detach(), reference_output
        gradient = per_row_gradients(output, targets, leaf, shared)
    group = shared.group.to(output.device)
    return gradient, output.detach()[group], reference_output[group]


def _completeness_error(
    attributions: torch.Tensor, score_x: torch.Tensor, score_reference: torch.Tensor
) -> torch.Tensor:
    delta = (score_x - score_reference).double()
    total = attributions.double().flatten(1).sum(dim=1)
    return ((total - delta).abs() / delta.abs().clamp_min(1e-12)).to(attributions.dtype)


@register_method("deeplift", "rule")
def deeplift(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    baseline: torch.Tensor | str | None = None,
) -> MethodResult:
    """DeepLIFT, rescale rule (Shrikumar et al. 2017): ``(x - x')`` times the rescaled
    gradient, summed over channels (signed); sums to ``S(x) - S(x')``.

    ``baseline`` ``x'``: None (zeros), a name (``"black"``, ``"blur"``, ``"mean"``,
    ``"zero"``), an image file, or ``Tensor[C, H, W]``, ``[1, C, H, W]`` or ``[B, C, H, W]``
    (`convlens.attribution.baselines`). Every element-wise nonlinearity (ReLU, ReLU6,
    SiLU, hardswish, GELU, sigmoid, tanh, ...) gets the rescale multiplier, paired with the
    reference by call order, so a module used twice is two calls; max pooling and products
    keep their gradient. Three passes: the reference forward (no autograd), the forward and
    the backward. Returns ``(Tensor[N, H, W], {"completeness_error": Tensor[N]})``.
    """
    prepared = prepare(model, images, target)
    x = prepared.images
    references = baseline_rows(model, x, baseline, prepared.targets.image_index, len(images))
    with borrowed_model(prepared.module):
        gradient, output, reference_output = deeplift_gradient(
            prepared.module, x, references, prepared.targets
        )
    rows = torch.arange(len(x))
    pinned = fix_ranked_targets(prepared.targets, output)
    score_reference = pinned.copies(rows, output).score(reference_output).detach()
    attributions = (x - references) * gradient
    error = _completeness_error(attributions, pinned.score(output).detach(), score_reference)
    return MethodResult(attributions.sum(dim=1), output, {"completeness_error": error})


@register_method("deeplift_shap", "rule", slow=True)
def deeplift_shap(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    baseline: torch.Tensor | str | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> MethodResult:
    """DeepLIFT-SHAP (Lundberg & Lee 2017): DeepLIFT averaged over a baseline distribution,
    summed over channels (signed); sums to ``S(x) - mean_k S(x'_k)``.

    ``baseline``: the ``K`` baselines, text (names and image files or folders, comma
    separated) or ``Tensor[K, C, H, W]`` shared by every image; None (default): zero,
    black and blur (zero and blur for a bare module) (`convlens.attribution.baselines`).
    ``batch_size``: (image, baseline) pairs built at a time (default: see `chunk_size`; never
    changes results); ``progress``: a tqdm bar.
    Returns ``(Tensor[N, H, W], {"completeness_error": Tensor[N]})``.
    """
    prepared = prepare(model, images, target)
    x = prepared.images
    references = baseline_distribution(model, x, baseline)
    count, rows = len(references), len(x)
    reference_of, row_of = work_items(count, rows)
    total = torch.zeros_like(x, dtype=torch.float64)
    score_reference = torch.zeros(rows, dtype=torch.float64, device=x.device)
    with borrowed_model(prepared.module):
        clean, pinned = clean_pass(prepared)
        chunks = list(in_chunks(len(row_of), chunk_size(batch_size, rows)))
        for chunk in progress_bar(chunks, disable=not progress, desc="deeplift_shap"):
            row, which = row_of[chunk], reference_of[chunk]
            base = references[which.to(x.device), row.to(x.device)]
            copies = pinned.copies(row, clean)
            gradient, _, reference_output = deeplift_gradient(prepared.module, x[row], base, copies)
            where = row.to(x.device)
            total.index_add_(0, where, ((x[row] - base) * gradient).double())
            score_reference.index_add_(0, where, copies.score(reference_output).double())
    attributions = (total / count).to(x.dtype)
    score_x = pinned.score(clean).detach()
    error = _completeness_error(attributions, score_x, (score_reference / count).to(x.dtype))
    return MethodResult(attributions.sum(dim=1), clean, {"completeness_error": error})


def gradient_shap_draws(
    images: torch.Tensor, count: int, n_samples: int, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GradientSHAP's random draws, the same for every row: baseline index ``Tensor[n]``
    (uniform over ``count``), ``a ~ U(0, 1)`` ``Tensor[n]`` (float64), unit noise
    ``Tensor[n, C, H, W]`` and per-row sigma ``Tensor[N]`` (`convlens.attribution.tunnel`)."""
    generator = torch.Generator().manual_seed(seed)
    which = torch.randint(count, (n_samples,), generator=generator)
    alphas = torch.rand(n_samples, generator=generator, dtype=torch.float64)
    unit, sigma = noise_draws(images, n_samples, noise, seed)
    return which, alphas, unit, sigma


@register_method("gradient_shap", "gradient", slow=True)
def gradient_shap(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    baseline: torch.Tensor | str | None = None,
    n_samples: int = 25,
    noise: float = 0.0,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> MethodResult:
    """GradientSHAP (Lundberg & Lee 2017, as in Captum): expected gradients over random
    baselines and path points of noisy copies, summed over channels (signed).

    ``A = (1/n) sum_k (x~_k - b_k) * dS/dx(b_k + a_k (x~_k - b_k))``: ``b_k`` drawn
    uniformly from ``baseline`` (as for `deeplift_shap`), ``a_k ~ U(0, 1)``,
    ``x~_k = x + sigma * e_k`` with ``sigma = noise * (max(x) - min(x))`` (default 0: no
    noise). The draws come from
    ``seed`` and are the same for every image, so a batch equals single-image calls.
    ``batch_size``: samples built at a time (default: see `chunk_size`; never changes results);
    ``progress``: a tqdm bar. Returns ``Tensor[N, H, W]``.
    """
    n_samples = positive_int("n_samples", n_samples)
    noise = check_noise(noise)
    prepared = prepare(model, images, target)
    x = prepared.images
    references = baseline_distribution(model, x, baseline)
    rows = len(x)
    which, alphas, unit, sigma = gradient_shap_draws(x, len(references), n_samples, noise, seed)
    sample_of, row_of = work_items(n_samples, rows)
    total = torch.zeros_like(x, dtype=torch.float64)
    with borrowed_model(prepared.module):
        clean, pinned = clean_pass(prepared)
        chunks = list(in_chunks(len(row_of), chunk_size(batch_size, rows)))
        for chunk in progress_bar(chunks, disable=not progress, desc="gradient_shap"):
            row, sample = row_of[chunk], sample_of[chunk]
            where = row.to(x.device)
            base = references[which[sample].to(x.device), where]
            noisy = x[row] + sigma[where, None, None, None] * unit[sample.to(x.device)]
            alpha = alphas[sample].to(x.device, x.dtype)[:, None, None, None]
            points = base + alpha * (noisy - base)
            gradient, _ = input_gradient(prepared.module, points, pinned.copies(row, clean))
            total.index_add_(0, where, ((noisy - base) * gradient).double())
    return MethodResult((total / n_samples).to(x.dtype).sum(dim=1), clean)
