"""Superpixel methods: feature ablation, KernelSHAP (Lundberg & Lee 2017) and LIME (Ribeiro
et al. 2016) over SLIC superpixels (Achanta et al. 2012, scikit-image).

Each image is cut into superpixels; a coalition ``z`` (one bit per superpixel) keeps the
superpixels with ``z_s = 1`` and replaces the others with ``fill``. The model is only called
forward, in batches of perturbed copies without autograd (TorchScript models run too); the
map paints each superpixel with its coefficient. The clean input costs one more forward
pass, which pins the explained class and is the output handed back (`MethodResult`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from convlens.attribution.common import (
    Prepared,
    SharedRows,
    chunk_size,
    clean_pass,
    forward_copies,
    in_chunks,
    positive_int,
    prepare,
)
from convlens.attribution.perturbation import fill_values
from convlens.attribution.registry import MethodResult, register_method
from convlens.data.progress import progress_bar
from convlens.errors import MethodError
from convlens.layers.borrow import borrowed_model
from convlens.maps import full_precision
from convlens.models.loading import LoadedModel


def superpixels(
    images: torch.Tensor, *, n_segments: int = 50, compactness: float = 10.0
) -> torch.Tensor:
    """SLIC superpixels of each image: ``Tensor[N, H, W]`` (int64) with labels ``0 .. M_n -
    1`` (every label used). ``images``: ``Tensor[N, C, H, W]``, each rescaled to [0, 1] by
    its own min and max before segmenting, so normalised inputs segment as the picture
    does. ``n_segments``: the approximate number of superpixels; ``compactness``: SLIC's
    balance of colour against space (higher: squarer superpixels)."""
    from skimage.segmentation import slic

    n_segments = positive_int("n_segments", n_segments)
    if not compactness > 0:
        raise MethodError(f"compactness must be > 0, got {compactness!r}")
    pictures = images.detach().float().cpu()
    shared = SharedRows.of(pictures)  # segment each distinct image once
    pictures = pictures[shared.first]
    flat = pictures.flatten(1)
    low, high = flat.amin(1), flat.amax(1)
    labels = []
    for image, lo, hi in zip(pictures, low, high, strict=True):
        picture = ((image - lo) / (hi - lo).clamp_min(1e-12)).permute(1, 2, 0).numpy()
        channel_axis = -1 if picture.shape[2] > 1 else None
        if channel_axis is None:
            picture = picture[..., 0]
        segments = slic(
            picture.astype(np.float64),
            n_segments=n_segments,
            compactness=compactness,
            start_label=0,
            channel_axis=channel_axis,
            convert2lab=picture.ndim == 3 and picture.shape[2] == 3,
        )
        _, dense = np.unique(segments, return_inverse=True)
        labels.append(torch.from_numpy(dense.reshape(segments.shape).astype(np.int64)))
    return torch.stack(labels)[shared.group]


def _coalition_scores(
    prepared: Prepared,
    segments: torch.Tensor,
    coalitions: torch.Tensor,
    fill: object,
    batch_size: int | None,
    progress: bool,
    desc: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target scores of every coalition of every row, ``Tensor[N, S]`` (float32 or wider),
    and the clean output. ``coalitions``: ``Tensor[N, S, M]`` of 0/1 (bits past a row's
    own superpixel count are ignored); a perturbed copy keeps pixel ``u`` where
    ``coalitions[n, s, segments[n, u]]`` is 1 and takes ``fill`` elsewhere. ``batch_size``:
    copies built at a time (None: `chunk_size`)."""
    x = prepared.images
    rows, samples = coalitions.shape[:2]
    fills = fill_values(x, fill)
    flat_segments = segments.to(x.device).flatten(1)
    coalitions = coalitions.to(x.device)
    scores = torch.empty(rows, samples, dtype=full_precision(x[:0]).dtype, device=x.device)
    with borrowed_model(prepared.module), torch.no_grad():
        output, pinned = clean_pass(prepared, laid_out=True)
        # rows with the same image, superpixels and coalitions share each copy (`SharedRows`)
        share = isinstance(output, torch.Tensor)
        shared = SharedRows.of(x, segments, coalitions, share=share)
        # Flat work item k = group * samples + sample.
        group_of = torch.arange(len(shared)).repeat_interleave(samples)
        sample_of = torch.arange(samples).repeat(len(shared))
        size = chunk_size(batch_size, len(shared), x.shape[2] * x.shape[3])
        chunks = list(in_chunks(len(group_of), size))
        for chunk in progress_bar(chunks, disable=not progress, desc=desc, leave=False):
            group = group_of[chunk]
            first, sample = shared.first[group].to(x.device), sample_of[chunk].to(x.device)
            bits = coalitions[first, sample]  # [k, M]
            keep = bits.gather(1, flat_segments[first]).view(len(first), 1, *x.shape[2:])
            keep = keep.to(x.dtype)
            copies = x[first] * keep + fills[first] * (1 - keep)
            copy, row, score = shared.scores(
                pinned, output, forward_copies(prepared.module, copies), group
            )
            scores[row.to(x.device), sample[copy.to(x.device)]] = full_precision(score)
    return scores, output


def _paint(coefficients: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """``Tensor[N, H, W]``: each pixel gets its superpixel's coefficient (``[N, M]``)."""
    segments = segments.to(coefficients.device)
    return coefficients.gather(1, segments.flatten(1)).view(segments.shape)


def _segment_counts(segments: torch.Tensor) -> list[int]:
    return [int(s.max()) + 1 for s in segments]


@register_method("superpixel_ablation", "perturbation", slow=True)
def superpixel_ablation(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    n_segments: int = 50,
    compactness: float = 10.0,
    fill: float | str = 0.0,
    batch_size: int | None = None,
    progress: bool = False,
) -> MethodResult:
    """Feature ablation by superpixel: the drop of the target score when one superpixel is
    replaced by ``fill``.

    ``M(u) = S(x) - S(x with superpixel s(u) set to fill)`` over the SLIC superpixels of
    `superpixels` (``n_segments``, ``compactness``). ``fill``: a number or "mean" (each
    image's channel mean). Costs ``sum_n M_n + N`` forward passes without autograd (the sum over
    distinct images: rows holding the same image share each copy, `SharedRows`);
    ``batch_size``: copies built at a time (never changes results). Returns ``Tensor[N, H,
    W]`` (positive where removing the superpixel hurts the score).
    """
    prepared = prepare(model, images, target)
    segments = superpixels(prepared.images, n_segments=n_segments, compactness=compactness)
    counts = _segment_counts(segments)
    widest = max(counts)
    # Coalition s of row n drops superpixel s (rows with fewer superpixels drop nothing).
    coalitions = 1 - torch.eye(widest, dtype=torch.long).expand(len(counts), -1, -1)
    clean_bits = torch.ones(len(counts), 1, widest, dtype=torch.long)
    coalitions = torch.cat([clean_bits, coalitions], dim=1)
    scores, output = _coalition_scores(
        prepared,
        segments,
        coalitions,
        fill,
        batch_size,
        progress,
        "superpixel ablation",
    )
    drops = scores[:, :1] - scores[:, 1:]
    return MethodResult(_paint(drops, segments), output)


def shapley_kernel_coalitions(
    n_features: int, n_samples: int, generator: torch.Generator
) -> torch.Tensor:
    """``Tensor[n_samples, n_features]`` of 0/1: coalitions drawn from the Shapley kernel
    ``pi(z) ~ (M - 1) / (C(M, |z|) |z| (M - |z|))`` over ``0 < |z| < M``: a size ``k`` with
    probability proportional to ``(M - 1) / (k (M - k))``, then ``k`` features uniformly.
    Drawn from the kernel, the coalitions enter the regression with equal weights."""
    if n_features < 2:
        return torch.ones(n_samples, n_features, dtype=torch.long)
    sizes = torch.arange(1, n_features)
    weights = (n_features - 1) / (sizes * (n_features - sizes)).double()
    chosen = sizes[torch.multinomial(weights, n_samples, replacement=True, generator=generator)]
    order = torch.rand(n_samples, n_features, generator=generator).argsort(dim=1)
    return (order < chosen[:, None]).long()


def _kernel_shap_values(
    coalitions: torch.Tensor, scores: torch.Tensor, empty: torch.Tensor, full: torch.Tensor
) -> torch.Tensor:
    """Shapley values ``Tensor[M]`` by least squares over equally weighted kernel draws,
    with the efficiency constraint ``sum(phi) = f(1) - f(0)`` imposed exactly (the last
    feature's value is eliminated)."""
    z = coalitions.double()
    total = (full - empty).double()
    if z.shape[1] == 1:
        return total.view(1)
    y = scores.double() - empty.double() - z[:, -1] * total
    design = z[:, :-1] - z[:, -1:]
    head = torch.linalg.lstsq(design, y[:, None], driver="gelsd").solution[:, 0]
    return torch.cat([head, (total - head.sum()).view(1)])


@register_method("kernel_shap", "perturbation", slow=True)
def kernel_shap(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    n_samples: int = 200,
    n_segments: int = 50,
    compactness: float = 10.0,
    fill: float | str = 0.0,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> MethodResult:
    """KernelSHAP (Lundberg & Lee 2017) over SLIC superpixels: each superpixel's Shapley
    value estimated by the Shapley-kernel weighted regression.

    ``phi = argmin sum_z pi(z) (S(x_z) - S(x_0) - sum_s phi_s z_s)^2`` subject to ``sum_s
    phi_s = S(x) - S(x_0)``, over ``n_samples`` coalitions ``z`` drawn from the kernel
    (`shapley_kernel_coalitions`), ``x_z`` keeping the superpixels in ``z`` and setting the
    others to ``fill`` (a number or "mean"), ``x_0`` all set. Exact for a model additive
    over superpixels once the draws span them. The draws come from ``seed``, afresh for each
    image, so a batch equals single-image calls. Costs ``U (n_samples + 2)`` forward passes
    (``U`` distinct images, `SharedRows`) without autograd. Returns ``Tensor[N, H, W]``
    (each superpixel painted with its value).
    """
    n_samples = positive_int("n_samples", n_samples)
    return _regression_method(
        "kernel_shap",
        prepare(model, images, target),
        _Sampling(n_samples, n_segments, compactness, fill, seed, batch_size, progress),
    )


@register_method("lime", "perturbation", slow=True)
def lime(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    n_samples: int = 200,
    n_segments: int = 50,
    compactness: float = 10.0,
    fill: float | str = 0.0,
    kernel_width: float = 0.25,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> MethodResult:
    """LIME (Ribeiro et al. 2016) over SLIC superpixels: the coefficients of a locally
    weighted linear model of the score.

    ``(b, w) = argmin sum_z pi(z) (S(x_z) - b - sum_s w_s z_s)^2`` with ``pi(z) = exp(-d(z,
    1)^2 / kernel_width^2)``, ``d`` the cosine distance to the all-kept coalition (LIME's
    image defaults), over the clean image and ``n_samples - 1`` coalitions keeping each
    superpixel with probability 1/2 (from ``seed``, afresh for each image); ``x_z`` sets the
    dropped superpixels to ``fill``. Plain weighted least squares (no ridge), so a model linear
    over superpixels is recovered exactly. Costs ``U (n_samples + 1)`` forward (``U``
    distinct images, `SharedRows`) passes without autograd. Returns ``Tensor[N, H, W]``
    (each superpixel painted with ``w_s``).
    """
    n_samples = positive_int("n_samples", n_samples)
    if not kernel_width > 0:
        raise MethodError(f"kernel_width must be > 0, got {kernel_width!r}")
    return _regression_method(
        "lime",
        prepare(model, images, target),
        _Sampling(n_samples, n_segments, compactness, fill, seed, batch_size, progress),
        kernel_width=kernel_width,
    )


@dataclass(frozen=True)
class _Sampling:
    """The options KernelSHAP and LIME share (see `kernel_shap`)."""

    n_samples: int
    n_segments: int
    compactness: float
    fill: object
    seed: int
    batch_size: int | None
    progress: bool


def _regression_method(
    name: str, prepared: Prepared, options: _Sampling, kernel_width: float = 0.25
) -> MethodResult:
    """KernelSHAP or LIME: draw each row's coalitions, score them, fit, paint."""
    n_samples, seed = options.n_samples, options.seed
    segments = superpixels(
        prepared.images, n_segments=options.n_segments, compactness=options.compactness
    )
    counts = _segment_counts(segments)
    widest = max(counts)
    draws = []
    for count in counts:
        generator = torch.Generator().manual_seed(seed)
        if name == "kernel_shap":
            bits = shapley_kernel_coalitions(count, n_samples, generator)
            bits = torch.cat(
                [
                    torch.zeros(1, count, dtype=torch.long),
                    torch.ones(1, count, dtype=torch.long),
                    bits,
                ]
            )
        else:
            bits = (torch.rand(n_samples - 1, count, generator=generator) < 0.5).long()
            bits = torch.cat([torch.ones(1, count, dtype=torch.long), bits])
        draws.append(torch.nn.functional.pad(bits, (0, widest - count), value=1))
    coalitions = torch.stack(draws)
    scores, output = _coalition_scores(
        prepared,
        segments,
        coalitions,
        options.fill,
        options.batch_size,
        options.progress,
        name.replace("_", " "),
    )
    values = torch.zeros(len(counts), widest, dtype=torch.float64)
    for n, count in enumerate(counts):
        z, s = coalitions[n, :, :count], scores[n].cpu()
        if name == "kernel_shap":
            values[n, :count] = _kernel_shap_values(z[2:], s[2:], s[0], s[1])
        else:
            values[n, :count] = _lime_weights(z, s, kernel_width)
    return MethodResult(_paint(values.to(scores), segments), output)


def _lime_weights(coalitions: torch.Tensor, scores: torch.Tensor, width: float) -> torch.Tensor:
    """The slopes ``Tensor[M]`` of the weighted least-squares fit (with intercept) of
    ``scores`` ``Tensor[S]`` on ``coalitions`` ``Tensor[S, M]``, weighted by LIME's cosine
    kernel."""
    z = coalitions.double()
    kept = z.sum(1)
    cosine = kept / (kept.sqrt() * math.sqrt(z.shape[1])).clamp_min(1e-12)
    weights = torch.exp(-((1 - cosine) ** 2) / width**2).sqrt()
    design = torch.cat([torch.ones(len(z), 1, dtype=z.dtype), z], dim=1) * weights[:, None]
    target = scores.double() * weights
    solution = torch.linalg.lstsq(design, target[:, None], driver="gelsd").solution[:, 0]
    return solution[1:]
