"""Quantitative explanation metrics with one interface, at parity with Quantus 0.6.

Every metric is a function ``metric(model, images, maps, targets, **options) -> Tensor[B]``
(one float64 score per image; NaN where it is undefined) registered in `METRICS` with its
direction (``higher_is_better``), its Quantus class name and what else it needs:

- ``images``: ``Tensor[B, C, H, W]``, the model's inputs (already normalised);
- ``maps``: ``Tensor[B, H, W]``, one map per image at input resolution;
- ``targets``: ``Tensor[B]`` (int), the explained class of each image;
- ``masks=`` (``needs`` holds ``"masks"``): bool ``Tensor[B, H, W]``, the ground truth;
- ``explain=`` (``needs`` holds ``"explain"``): ``explain(images, targets) -> Tensor[B, H, W]``,
  the method that made ``maps``, re-run on perturbed inputs or for other classes;
- ``method=`` (``needs`` holds ``"method"``): ``method(model, images, targets) -> Tensor[B, H,
  W]``, the same method with the model as an argument, re-run on randomised copies of the
  model (MPRT, efficient MPRT). `run_metric` makes ``explain`` from ``method`` when only
  ``method`` is given.

`run_metric` passes each metric only what it needs. Scores follow Quantus's definitions and
defaults (`docs/metrics.md` lists every formula, its paper and the one difference: Quantus
divides a batch of maps by the largest absolute value in the whole batch, convlens divides
each map by its own; the metrics whose result that changes say so). The model's outputs are
its raw outputs (logits), as Quantus's ``softmax=False`` default. The model is borrowed (eval
mode, no gradients) and handed back unchanged; inputs are never modified. ``batch_size``
sets only how many perturbed images are built, and how many images an ``explain`` call
gets, at once; on the CPU the model and ``explain`` get at most eight 224 x 224 images a
call (`convlens.models.devices.cpu_pass_rows`: per image, passes of a few images cost
less there than passes of hundreds).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens.attribution.common import forward_copies
from convlens.errors import MetricError
from convlens.evaluate.sanity import spearman
from convlens.layers.borrow import borrowed_model
from convlens.models.devices import cpu_fast_format, cpu_pass_rows, cpu_passes, model_device
from convlens.models.loading import LoadedModel, as_module

Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Method = Callable[[object, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: ``function(model, images, maps, targets, **options)``."""

    name: str
    function: Callable[..., torch.Tensor]
    higher_is_better: bool
    quantus: str
    needs: tuple[str, ...] = ()
    summary: str = ""


# ---------------------------------------------------------------- shared preparation


def _check(images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor | None = None):
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        raise MetricError("maps must be a Tensor[B, H, W], one map per image")
    if images is not None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise MetricError("images must be a Tensor[B, C, H, W] of model inputs")
        if images.shape[0] != maps.shape[0] or images.shape[-2:] != maps.shape[-2:]:
            raise MetricError(
                f"maps {tuple(maps.shape)} do not match images {tuple(images.shape)}: "
                "pass one map per image at input resolution (convlens.maps.resize_maps)"
            )
    if not _all_finite(maps):
        raise MetricError("maps contain NaN or infinite values")
    if targets is not None:
        targets = torch.as_tensor(targets)
        if targets.dim() != 1 or len(targets) != len(maps) or targets.is_floating_point():
            raise MetricError("targets must be an integer Tensor[B], one class per map")
        return targets.long()
    return None


def _all_finite(values: torch.Tensor) -> bool:
    """True when no entry of ``values`` (any shape) is NaN or infinite: one min/max pass (both
    propagate NaN), no mask the size of the input."""
    if not values.is_floating_point() or values.numel() == 0:
        return True
    low, high = torch.aminmax(values.detach())
    return bool(torch.isfinite(low) and torch.isfinite(high))


def prepared(
    maps: torch.Tensor, normalise: bool, absolute: bool, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``Tensor[B, H*W]`` float64 (a new tensor on the CPU, or ``out``, a float64 CPU
    ``Tensor[B, H*W]`` to reuse): each map divided by its own largest ``|value|`` (an
    all-zero map stays zeros) when ``normalise``, then ``|.|`` when ``absolute`` (Quantus's
    order). The largest ``|value|`` is found in the maps' own dtype (exact: it is one of the
    values), then the float64 copy is divided in place."""
    flat = maps.detach().reshape(len(maps), -1)
    if out is None:
        out = flat.to(device="cpu", dtype=torch.float64, copy=True)
    else:
        out.copy_(flat)
    if normalise and flat.shape[1]:
        low, high = torch.aminmax(flat, dim=1, keepdim=True)
        peak = torch.maximum(-low, high).to(device="cpu", dtype=torch.float64)
        out.div_(torch.where(peak > 0, peak, 1.0))  # dividing by 1 leaves a zero map as it is
    return out.abs_() if absolute else out


def _forward_scores(
    model, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, softmax: bool = False
):
    """Target logits (``softmax``: probabilities) ``Tensor[N]`` (float64, CPU) of ``inputs``
    ``Tensor[N, C, H, W]``, each chunk through `forward_copies` (channels-last on the CPU, so
    every pass of one metric, its unperturbed one included, runs in the same layout)."""
    module = as_module(model)
    out = []
    for chunk, t in zip(inputs.split(batch_size), targets.split(batch_size), strict=True):
        logits = forward_copies(module, chunk)
        if softmax:
            logits = logits.float().softmax(1)
        out.append(logits.gather(1, t.to(logits.device)[:, None])[:, 0].double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _black(images: torch.Tensor) -> torch.Tensor:
    """Quantus's ``"black"`` baseline: each image's smallest value over all channels."""
    return images.reshape(len(images), -1).amin(1)[:, None, None, None]


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of ``Tensor[B, N]`` pairs (NaN for a constant row)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def _ssim_1d(a: torch.Tensor, b: torch.Tensor, window: int = 7, rows: int = 1) -> torch.Tensor:
    """SSIM of flattened maps ``Tensor[B, N]`` as ``skimage.metrics.structural_similarity``
    computes it on 1-D arrays (uniform window of 7, sample covariance, K1 = 0.01,
    K2 = 0.03, mirrored borders, the ``(window - 1) / 2`` border cropped from the mean),
    ``data_range`` = max - min over both maps. ``rows`` maps at a time, in reused buffers
    small enough to stay in cache; each window mean is the sum of ``window`` shifted slices
    divided by ``window`` (the same rounding as ``avg_pool1d``)."""
    length = a.shape[1]
    if length < window:
        raise MetricError(f"SSIM needs maps of at least {window} values, got {length}")
    data_range = torch.maximum(a.amax(1), b.amax(1)) - torch.minimum(a.amin(1), b.amin(1))
    c1s, c2s = (0.01 * data_range[:, None]) ** 2, (0.03 * data_range[:, None]) ** 2
    pad, cov_norm = window // 2, window / (window - 1)
    padded = a.new_empty(5, rows, length + 2 * pad)  # x, y, x*x, y*y, x*y, mirrored borders
    means = a.new_empty(5, rows, length)
    top, bottom = a.new_empty(rows, length), a.new_empty(rows, length)
    out = a.new_empty(len(a))
    for start in range(0, len(a), rows):
        x, y = a[start : start + rows], b[start : start + rows]
        p, m, u, v = padded[:, : len(x)], means[:, : len(x)], top[: len(x)], bottom[: len(x)]
        inner = p[..., pad : pad + length]
        inner[0], inner[1] = x, y
        torch.mul(x, x, out=inner[2])
        torch.mul(y, y, out=inner[3])
        torch.mul(x, y, out=inner[4])
        p[..., :pad] = p[..., pad : 2 * pad].flip(2)  # scipy's "reflect": edge repeated
        p[..., length + pad :] = p[..., length : length + pad].flip(2)
        m.copy_(p[..., :length])
        for shift in range(1, window):
            m.add_(p[..., shift : shift + length])
        ux, uy, vx, vy, vxy = m.div_(window)
        c1, c2 = c1s[start : start + len(x)], c2s[start : start + len(x)]
        vx.sub_(torch.mul(ux, ux, out=u)).mul_(cov_norm)
        vy.sub_(torch.mul(uy, uy, out=u)).mul_(cov_norm)
        vxy.sub_(torch.mul(ux, uy, out=u)).mul_(cov_norm)
        u.mul_(2).add_(c1).mul_(vxy.mul_(2).add_(c2))  # (2 ux uy + c1)(2 vxy + c2)
        torch.mul(ux, ux, out=v).add_(uy.mul_(uy)).add_(c1)  # (ux^2 + uy^2 + c1)
        v.mul_(vx.add_(vy).add_(c2))  # ... (vx + vy + c2)
        out[start : start + len(x)] = u.div_(v)[:, pad : length - pad].mean(1)
    return out


# ---------------------------------------------------------------- map-only metrics


def sparseness(model, images, maps, targets=None, *, normalise=True, absolute=True):
    """Gini index of the map (Chalasani et al. 2020): ``sum_i (2i - n - 1) a_(i) /
    (n sum_i a_(i))`` over the ``n`` pixels sorted ascending, each ``a + 1e-7``.
    1 for a one-hot map, 0 for a constant one. ``Tensor[B]`` in [0, 1)."""
    _check(None, maps)
    a = prepared(maps, normalise, absolute).add_(1e-7)
    a.numpy().sort(axis=1)  # in place; NumPy's sort of float64 rows is several times torch's
    n = a.shape[1]
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return torch.mv(a, 2 * i - n - 1) / (n * a.sum(1))


def complexity(model, images, maps, targets=None, *, normalise=True, absolute=True):
    """Entropy of the map's share per pixel (Bhatt et al. 2020): with ``p = a / sum|a|``,
    ``-sum p log(p + 1e-12)``; 0 for a one-hot map, ``log(H W)`` for a constant one."""
    _check(None, maps)
    a = prepared(maps, normalise, absolute)
    p = a / a.abs().sum(1, keepdim=True)
    return -(p * torch.log(p + 1e-12)).sum(1)


def _masks(masks, maps) -> torch.Tensor:
    if masks is None:
        raise MetricError("this metric needs masks=Tensor[B, H, W] (the ground truth)")
    masks = torch.as_tensor(masks)
    if masks.shape != maps.shape:
        raise MetricError(
            f"masks {tuple(masks.shape)} must have the maps' shape {tuple(maps.shape)}"
        )
    return masks.reshape(len(masks), -1).bool().cpu()


def relevance_mass_accuracy(
    model, images, maps, targets=None, *, masks=None, normalise=True, absolute=False
):
    """Share of the map's sum that lies in the mask (Arras et al. 2022):
    ``sum_{p in G} a_p / sum_p a_p``; NaN for an empty mask."""
    _check(None, maps)
    s = _masks(masks, maps)
    a = prepared(maps, normalise, absolute)
    score = (a * s).sum(1) / a.sum(1)
    return torch.where(s.any(1), score, torch.nan)


def relevance_rank_accuracy(
    model, images, maps, targets=None, *, masks=None, normalise=True, absolute=False
):
    """Share of the ``K = |G|`` highest pixels of the map that lie in the mask (Arras et al.
    2022); NaN for an empty mask. Ties are ranked in raster order (stable sort)."""
    _check(None, maps)
    s = _masks(masks, maps).numpy()
    a = prepared(maps, normalise, absolute)
    sizes = np.count_nonzero(s, axis=1)  # NumPy counts bools many times faster than torch
    hits = np.count_nonzero(_top_entries(a.numpy(), sizes) & s, axis=1)
    score = torch.from_numpy(hits / np.maximum(sizes, 1))
    return torch.where(torch.from_numpy(sizes > 0), score, torch.nan)


def _top_entries(a: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Bool ``[B, N]``: the ``sizes[n]`` largest entries of each row of ``a`` (``[B, N]``
    float64, finite), ties taken in index order: the first ``sizes[n]`` of a stable
    descending sort, found without sorting (the ``sizes[n]``-th largest value by a partial
    sort, then every entry above it and the first of those equal to it)."""
    n = a.shape[1]
    kth = np.array(
        [
            np.partition(row, n - k)[n - k] if k else np.inf
            for row, k in zip(a, sizes.tolist(), strict=True)
        ]
    )  # an empty top (size 0): nothing is above +inf
    top = a > kth[:, None]
    tied = a == kth[:, None]
    need = sizes - np.count_nonzero(top, axis=1)  # how many entries equal to kth to take
    partial = np.flatnonzero(np.count_nonzero(tied, axis=1) > need)
    if len(partial):
        rows = tied[partial]
        tied[partial] = rows & (rows.cumsum(1) <= need[partial, None])
    return top | tied


# ---------------------------------------------------------------- model metrics


def selectivity(
    model,
    images,
    maps,
    targets,
    *,
    patch_size: int = 8,
    softmax: bool = True,
    normalise=True,
    absolute=False,
    batch_size: int = 256,
):
    """Selectivity (Montavon et al. 2018): patches of ``patch_size`` are set to the image's
    smallest value (Quantus's ``"black"``) one after another, in order of decreasing map
    sum, and the target's softmax probability (``softmax=False``: its logit; Quantus's
    default is the probability here) is recorded after each; the score is the area under that
    curve (trapezoid rule, unit step, Quantus's ``get_auc_score`` per image). Lower is
    better. An image side that is not a multiple of the patch is padded evenly (zeros in the
    map), as Quantus does; ties between patches go in raster order."""
    targets = _check(images, maps, targets)
    if patch_size < 1:
        raise MetricError(f"patch_size must be >= 1, got {patch_size}")
    batch, _, height, width = images.shape
    a = prepared(maps, normalise, absolute).view(batch, 1, height, width)
    pad_h, pad_w = _even_padding(height, patch_size), _even_padding(width, patch_size)
    padded = F.pad(a, (*pad_w, *pad_h))
    sums = F.avg_pool2d(padded, patch_size) * patch_size**2  # Tensor[B, 1, h, w]
    rows, cols = sums.shape[-2:]
    order = torch.sort(-sums.view(batch, -1), dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(rows * cols).expand(batch, -1).contiguous())
    pixel_rank = _patch_pixels(rank.view(batch, 1, rows, cols), patch_size, pad_h, pad_w)
    with borrowed_model(as_module(model), copy_inputs=False), torch.no_grad():
        curve = _cumulative_scores(
            model, images, targets, pixel_rank, rows * cols, batch_size, softmax
        )
    return torch.trapezoid(curve, dx=1.0, dim=1)


def _cumulative_scores(
    model, images, targets, pixel_rank, steps: int, batch_size: int, softmax: bool = False
) -> torch.Tensor:
    """``Tensor[B, steps]`` float64: the target logit (``softmax``: probability) of each
    image after each step ``k`` of a cumulative removal, in which every pixel (all its
    channels) whose rank in ``pixel_rank`` (``Tensor[B or 1, 1, H, W]`` of ints in ``0 ..
    steps - 1``) is ``<= k`` holds the image's smallest value (`_black`). The steps go
    through the model ``batch_size // B`` at a time (images split by ``batch_size``) in one
    reused buffer of image copies (in the layout the forward pass takes,
    `forward_copies`); each row carries on from its step in the previous batch, so a batch
    writes only the pixels removed since. A model that writes into its input (the buffer's
    version counter moves) gets the next batch rebuilt from the images. Call under
    ``borrowed_model(..., copy_inputs=False)``."""
    batch, shape = len(images), images.shape[1:]
    per = max(1, batch_size // max(batch, 1))
    scores = torch.zeros(batch, steps, dtype=torch.float64)
    layout = cpu_fast_format(images)
    ranks = pixel_rank.expand(batch, 1, *shape[1:]).reshape(batch, -1)
    order, cuts = _pixels_by_key(ranks, steps)
    order = order.to(images.device)
    black = _black(images).flatten().tolist()
    for start in range(0, batch, batch_size):
        part = images[start : start + batch_size]  # copied into the buffer's layout there
        below = cuts[start : start + len(part)].tolist()  # Python ints for the loop below
        groups = min(per, steps)
        rows = _copy_buffer(part, groups, layout)
        pixels = [[_pixel_rows(rows[i, j]) for j in range(len(part))] for i in range(groups)]
        carried = False  # whether row i holds its image after step first - per + i
        for first in range(0, steps, per):
            ks = range(first, min(first + per, steps))
            if not carried:  # every row back to its image, before any step
                _refill(rows, part)
            for i, k in enumerate(ks):
                done = first - per + i if carried else -1  # the step row i is at
                for j, n in enumerate(range(start, start + len(part))):
                    removed = order[n, below[j][done + 1] : below[j][k + 1]]
                    if len(removed):
                        pixels[i][j].index_fill_(0, removed, black[n])
            version = rows._version  # shared by the buffer's views
            count = len(ks) * len(part)
            t = targets[start : start + len(part)].repeat(len(ks))
            x = rows[: len(ks)].reshape(count, *shape)
            out = _forward_scores(model, x, t, count, softmax)
            carried = rows._version == version  # else the model wrote into its input
            scores[start : start + len(part), first : first + len(ks)] = out.view(-1, len(part)).T
    return scores


def _pixels_by_key(keys: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's pixels grouped by key: ``keys`` ``Tensor[B, P]`` of ints in ``0 ..
    count - 1`` (a rank, a segment label) gives ``(order, cuts)``, ``order`` ``LongTensor[B,
    P]`` the pixel indices sorted by key (stable) and ``cuts`` ``LongTensor[B, count + 1]``
    with ``cuts[n, r]`` the number of image ``n``'s pixels whose key is below ``r``: the
    pixels keyed ``r`` are ``order[n, cuts[n, r] : cuts[n, r + 1]]`` (CPU)."""
    ordered, order = torch.sort(keys.long().cpu(), dim=1, stable=True)
    bounds = torch.arange(count + 1).expand(len(keys), -1).contiguous()
    return order, torch.searchsorted(ordered, bounds)


def _copy_buffer(part: torch.Tensor, groups: int, layout: torch.memory_format) -> torch.Tensor:
    """An uninitialised ``Tensor[groups, b, C, H, W]`` for ``groups`` copies of ``part``
    (``Tensor[b, C, H, W]``), each copy in ``layout``; its batch dimensions merge into one
    without a copy (``reshape(groups * b, C, H, W)`` is a view)."""
    buffer = torch.empty(
        (groups * len(part), *part.shape[1:]),
        dtype=part.dtype,
        device=part.device,
        memory_format=layout,
    )
    return buffer.view(groups, len(part), *part.shape[1:])


def _refill(buffer: torch.Tensor, part: torch.Tensor) -> None:
    """Every copy in ``buffer`` (`_copy_buffer` of ``part``) back to ``part``'s values."""
    buffer.copy_(part.expand(len(buffer), *part.shape))


def _pixel_rows(image: torch.Tensor) -> torch.Tensor:
    """A view ``Tensor[H*W, C]`` of ``image`` (``Tensor[C, H, W]``, channels-last or
    contiguous) with one row per pixel (raster order), so that ``index_fill_(0, pixels,
    v)`` sets every channel of those pixels."""
    channels = image.shape[0]
    if image.permute(1, 2, 0).is_contiguous():
        return image.permute(1, 2, 0).view(-1, channels)
    return image.view(channels, -1).T


def _scattered_scores(
    model, images, targets, steps: int, perturb, batch_size: int, softmax: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Tensor[B], Tensor[B, steps])`` float64: the target logit (``softmax``:
    probability) of each image unperturbed and under each of ``steps`` sparse
    perturbations. ``perturb(ks, start, b)`` gives, for the images ``start : start + b``
    under the steps ``ks`` (``LongTensor[g]``), ``(index, values)``: ``Tensor[g, b, k]``
    positions in an image's storage order (`_storage_positions` of ``images``; repeats
    allowed) and the values set there. The images go, ``batch_size`` at a time, into one
    reused buffer of copies in the layout the forward pass takes (`forward_copies`); the
    first copy runs unperturbed, then the steps run ``batch_size // B`` at a time: each
    batch sets its positions, runs, and puts the images' values back, so a batch costs the
    model's forward pass and not a copy of every image. A model that writes into its
    input (the buffer's version counter moves) gets the buffer rebuilt whole after that
    pass. Call under ``borrowed_model(..., copy_inputs=False)``."""
    batch, shape = len(images), images.shape[1:]
    per = max(1, batch_size // max(batch, 1))
    clean_scores = torch.zeros(batch, dtype=torch.float64)
    scores = torch.zeros(batch, steps, dtype=torch.float64)
    layout = cpu_fast_format(images)
    for start in range(0, batch, batch_size):
        part = images[start : start + batch_size]
        part_targets = targets[start : start + len(part)]
        groups = min(per, steps)
        clean = _copy_buffer(part, groups, layout)
        _refill(clean, part)
        version = clean._version  # shared by the buffer's views
        clean_scores[start : start + len(part)] = _forward_scores(
            model, clean[0], part_targets, len(part), softmax
        )
        if clean._version != version:  # the model wrote into its input
            _refill(clean, part)
        for first in range(0, steps, per):
            ks = torch.arange(first, min(first + per, steps))
            x = clean[: len(ks)]
            index, values = perturb(ks, start, len(part))
            flat, index = _storage_flat(x), index.to(images.device)
            kept = flat.gather(2, index)
            flat.scatter_(2, index, values.to(flat))
            version = clean._version
            count = len(ks) * len(part)
            t = part_targets.repeat(len(ks))
            out = _forward_scores(model, x.view(count, *shape), t, count, softmax)
            if clean._version != version:
                _refill(clean, part)
            else:
                flat.scatter_(2, index, kept)
            scores[start : start + len(part), first : first + len(ks)] = out.view(-1, len(part)).T
    return clean_scores, scores


def _storage_flat(x: torch.Tensor) -> torch.Tensor:
    """A flat view ``Tensor[g, b, C*H*W]`` of a batch ``x`` (``Tensor[g, b, C, H, W]``,
    contiguous or channels-last) in its storage order."""
    if x.is_contiguous():
        return x.view(*x.shape[:2], -1)
    return x.permute(0, 1, 3, 4, 2).view(*x.shape[:2], -1)  # channels-last storage order


def _storage_positions(index: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Flat ``C*H*W`` positions ``c*H*W + p`` (channel first) of ``images``
    (``Tensor[B, C, H, W]``) turned into positions in the storage order of the layout
    `_scattered_scores` builds them in (`cpu_fast_format`): ``p*C + c`` for channels-last."""
    if cpu_fast_format(images) != torch.channels_last:
        return index
    channels, height, width = images.shape[1:]
    channel = index.div(height * width, rounding_mode="floor")
    return (index % (height * width)).mul_(channels).add_(channel)  # two temporaries, not four


def _patch_pixels(values: torch.Tensor, patch: int, pad_h, pad_w) -> torch.Tensor:
    """``Tensor[B, 1, rows, cols]`` per-patch values to ``Tensor[B, 1, H, W]`` per pixel:
    each value repeated over its ``patch x patch`` pixels, the even padding (``pad_h``,
    ``pad_w``: `_even_padding` of the image's sides) cut off again."""
    pixels = values.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    height = pixels.shape[2] - sum(pad_h)
    width = pixels.shape[3] - sum(pad_w)
    return pixels[..., pad_h[0] : pad_h[0] + height, pad_w[0] : pad_w[0] + width]


def _even_padding(size: int, patch: int) -> tuple[int, int]:
    extra = (patch - size % patch) % patch
    return extra // 2, extra - extra // 2


def random_subsets(
    count: int, features: int, size: int, runs: int, generator: torch.Generator
) -> torch.Tensor:
    """``Tensor[count, runs, size]``: for each image and run, ``size`` distinct indices of
    ``features``, uniform over the subsets (the first ``size`` distinct values of an i.i.d.
    uniform sequence, redrawn in the rare case it holds fewer)."""
    if size > features:
        raise MetricError(f"subset_size {size} exceeds the {features} input features")
    if size * 4 > features:  # dense subsets: a random permutation is cheap enough
        keys = torch.rand(count * runs, features, generator=generator)
        return keys.argsort(1)[:, :size].view(count, runs, size)
    draws = 2 * size + 16
    out = torch.empty(count * runs, size, dtype=torch.long)
    todo = torch.arange(count * runs)
    while len(todo):
        seq = torch.randint(features, (len(todo), draws), generator=generator)
        values, where = seq.sort(dim=1, stable=True)
        first = torch.ones_like(values, dtype=torch.bool)
        first[:, 1:] = values[:, 1:] != values[:, :-1]
        position = torch.where(first, where, draws)  # first occurrence of each value
        enough = first.sum(1) >= size
        pick = position.sort(1).values[:, :size]
        chosen = seq.gather(1, pick.clamp(max=draws - 1))
        out[todo[enough]] = chosen[enough]
        todo = todo[~enough]
    return out.view(count, runs, size)


def faithfulness_correlation(
    model,
    images,
    maps,
    targets,
    *,
    runs: int = 100,
    subset_size: int = 224,
    normalise=True,
    absolute=False,
    seed: int = 0,
    subsets: torch.Tensor | None = None,
    batch_size: int = 256,
):
    """Faithfulness correlation (Bhatt et al. 2020): ``runs`` times, a random subset of
    ``subset_size`` input features (channel values, as Quantus) is set to the image's
    smallest value; the score is the Pearson correlation, over the runs, between the map's
    sum over the subset (the map repeated over channels) and the drop of the target logit.
    ``subsets``: ``LongTensor[B, runs, subset_size]`` of flat ``C*H*W`` indices to use
    instead of drawing them (seeded by ``seed``)."""
    targets = _check(images, maps, targets)
    batch, channels, height, width = images.shape
    features = channels * height * width
    if subsets is None:
        generator = torch.Generator().manual_seed(seed)
        subsets = random_subsets(batch, features, subset_size, runs, generator)
    subsets = torch.as_tensor(subsets).long().cpu()
    if subsets.dim() != 3 or subsets.shape[0] != batch or subsets.max() >= features:
        raise MetricError("subsets must be a LongTensor[B, runs, k] of indices below C*H*W")
    runs = subsets.shape[1]
    a = prepared(maps, normalise, absolute)
    attributed = a.gather(1, (subsets % (height * width)).reshape(batch, -1)).view(batch, runs, -1)
    attributed = attributed.sum(2)
    black = _black(images)

    positions = _storage_positions(subsets, images).to(images.device)  # once, not per batch

    def perturb(rs, start, count):  # each run's subset set to the image's black
        index = positions[start : start + count, rs].transpose(0, 1)
        return index, black[start : start + count].reshape(1, -1, 1).expand(index.shape)

    with borrowed_model(as_module(model), copy_inputs=False), torch.no_grad():
        y, perturbed = _scattered_scores(model, images, targets, runs, perturb, batch_size)
    return _pearson(attributed, y[:, None] - perturbed)


def random_logit(
    model,
    images,
    maps,
    targets,
    *,
    explain: Explain | None = None,
    seed: int = 42,
    num_classes: int | None = None,
    normalise=True,
    absolute=False,
    batch_size: int = 256,
):
    """Random logit (Sixt et al. 2020): SSIM between the map and the map of a class drawn
    uniformly among the other ``num_classes - 1`` (NumPy's ``RandomState(seed)``, the
    draw Quantus makes), both flattened to 1-D as Quantus does. Lower is better: a map that
    does not change with the class does not explain the class. ``num_classes`` defaults to
    the model's output width."""
    targets = _check(images, maps, targets)
    if explain is None:
        raise MetricError("random_logit needs explain=callable(images, targets) -> maps")
    if num_classes is None:
        with borrowed_model(as_module(model)), torch.no_grad():
            num_classes = as_module(model)(images[:1]).shape[1]
    if num_classes < 2:
        raise MetricError("random_logit needs a model with at least two classes")
    draws = np.random.RandomState(seed).randint(0, num_classes - 1, len(targets))
    draws = torch.from_numpy(draws).long()
    other = draws + (draws >= targets).long()  # skip the explained class
    a = prepared(maps, normalise, absolute)
    b = prepared(_explain_chunks(explain, images, other, batch_size, model), normalise, absolute)
    return _ssim_1d(a, b)


def _explain_chunks(explain: Explain, images, targets, batch_size: int, model=None) -> torch.Tensor:
    """``explain``'s maps ``Tensor[B, H, W]`` (float, CPU) of ``images``, ``batch_size`` at a
    time; when ``model`` is on the CPU and so are ``images``, in even calls of at most
    `cpu_pass_rows` (`cpu_passes`: the cost per image rises with the batch there). Without
    a model (or with one elsewhere) ``explain`` may run anywhere: ``batch_size`` as given."""
    known = isinstance(model, (nn.Module, LoadedModel))
    on_cpu = known and model_device(as_module(model)).type == "cpu"
    most = min(batch_size, cpu_pass_rows(images)) if on_cpu else batch_size
    out = [
        torch.as_tensor(explain(images[rows], targets[rows])).detach().float().cpu()
        for rows in cpu_passes(images, most)
    ]
    maps = out[0] if len(out) == 1 else torch.cat(out)
    if maps.shape != (len(images), *images.shape[-2:]):
        raise MetricError(
            f"explain returned maps {tuple(maps.shape)}; expected Tensor[B, H, W] at input size"
        )
    return maps


def _sensitivities(
    model,
    images,
    maps,
    targets,
    explain,
    samples,
    radius,
    noise,
    seed,
    batch_size,
    normalise,
    absolute,
    kind,
) -> torch.Tensor:
    """``Tensor[B, samples]``: ``||a - a'|| / ||a||`` (``kind="relative"``) or
    ``||a - a'|| / ||x - x'||`` (``"lipschitz"``) for each perturbed copy ``x'``."""
    targets = _check(images, maps, targets)
    if explain is None:
        raise MetricError("this metric needs explain=callable(images, targets) -> maps")
    own = noise is None
    if own:
        count = samples
        draws = _noise_draws(kind, samples, tuple(images.shape), radius, seed)
    else:
        noise = torch.as_tensor(noise)
        if noise.dim() != 5 or noise.shape[1:] != images.shape:
            raise MetricError("noise must be a Tensor[samples, B, C, H, W]")
        count, draws = len(noise), iter(noise)
    a = prepared(maps, normalise, absolute)
    size = a.norm(dim=1)
    out = torch.zeros(len(images), count, dtype=torch.float64)
    b = torch.empty_like(a)  # reused: a fresh buffer of this size costs its page faults
    work = None
    for s, draw in enumerate(draws):
        if own and draw.device == images.device and draw.dtype == images.dtype:
            perturbed = draw.add_(images)  # images + draw, in our own buffer
        else:
            work = images.new_empty(images.shape) if work is None else work
            perturbed = work.copy_(draw).add_(images)
        prepared(
            _explain_chunks(explain, perturbed, targets, batch_size, model), normalise, absolute, b
        )
        change = b.sub_(a).norm(dim=1)  # ||a - b||: the same squares
        if kind == "relative":
            out[:, s] = change / size
        else:  # the perturbed copy is not needed any more: it becomes x' - x
            out[:, s] = change / (_row_norms(perturbed.sub_(images)) + 1e-10)
    return out


def _row_norms(values: torch.Tensor) -> torch.Tensor:
    """``Tensor[B]`` float64 (CPU): the 2-norm of each ``values[n]`` (``Tensor[B, ...]``),
    summed in float64, a few rows at a time (one float64 copy of the whole batch is slow
    to allocate and to write)."""
    flat = values.reshape(len(values), -1)
    rows = max(1, (1 << 19) // max(flat.shape[1], 1))
    return torch.cat([part.double().norm(dim=1).cpu() for part in flat.split(rows)])


def _noise_draws(kind: str, samples: int, shape: tuple[int, ...], scale: float, seed: int):
    """The ``samples`` noise tensors ``Tensor[*shape]`` of `_sensitivities`, one at a time:
    ``(U(0, 1) * 2 - 1) * scale`` (``kind="relative"``) or ``N(0, 1) * scale``, each equal to
    its slice of one ``torch.rand``/``torch.randn(samples, *shape)`` call on a generator seeded
    with ``seed`` (the same stream), with memory for one sample instead of all: the tensor
    yielded is one buffer, overwritten by the next draw (the caller may write into it).
    torch's CPU normal sampler fills blocks of 16 values, so a sample is drawn alone only
    when its size is a multiple of 16; otherwise all are drawn at once, as before."""
    generator = torch.Generator().manual_seed(seed)
    numel = int(np.prod(shape))
    if kind != "relative" and (numel % 16 or numel < 16):
        yield from torch.randn(samples, *shape, generator=generator).mul_(scale)
        return
    buffer = torch.empty(shape)
    for _ in range(samples):
        if kind == "relative":  # U(0, 1) * 2 - 1 is exact: U(-1, 1) is the same draw
            yield buffer.uniform_(-1.0, 1.0, generator=generator).mul_(scale)
        else:  # the sampler's last step is (draw * std + 0): the same rounding as draw * scale
            yield buffer.normal_(0.0, scale, generator=generator)


def max_sensitivity(
    model,
    images,
    maps,
    targets,
    *,
    explain=None,
    samples: int = 200,
    radius: float = 0.2,
    noise=None,
    seed: int = 0,
    normalise=False,
    absolute=False,
    batch_size: int = 256,
):
    """Max-sensitivity (Yeh et al. 2019): the largest ``||a(x) - a(x')||_F / ||a(x)||_F``
    over ``samples`` copies ``x' = x + U(-radius, radius)`` (every input value), the map
    re-made by ``explain`` for the same target. Lower is better. ``noise``:
    ``Tensor[samples, B, C, H, W]`` to use instead of drawing it (seeded by ``seed``)."""
    values = _sensitivities(
        model,
        images,
        maps,
        targets,
        explain,
        samples,
        radius,
        noise,
        seed,
        batch_size,
        normalise,
        absolute,
        "relative",
    )
    return values.nan_to_num(nan=-torch.inf).amax(1).nan_to_num(neginf=torch.nan)


def avg_sensitivity(
    model,
    images,
    maps,
    targets,
    *,
    explain=None,
    samples: int = 200,
    radius: float = 0.2,
    noise=None,
    seed: int = 0,
    normalise=False,
    absolute=False,
    batch_size: int = 256,
):
    """Average sensitivity (Yeh et al. 2019): as `max_sensitivity`, the mean over the
    copies instead of the largest. Lower is better."""
    values = _sensitivities(
        model,
        images,
        maps,
        targets,
        explain,
        samples,
        radius,
        noise,
        seed,
        batch_size,
        normalise,
        absolute,
        "relative",
    )
    return values.nanmean(1)


def local_lipschitz_estimate(
    model,
    images,
    maps,
    targets,
    *,
    explain=None,
    samples: int = 200,
    std: float = 0.1,
    noise=None,
    seed: int = 0,
    normalise=True,
    absolute=False,
    batch_size: int = 256,
):
    """Local Lipschitz estimate (Alvarez-Melis and Jaakkola 2018): the largest
    ``||a(x) - a(x')||_2 / (||x - x'||_2 + 1e-10)`` over ``samples`` copies
    ``x' = x + N(0, std^2)`` (every input value), the map re-made by ``explain`` for the same
    target. Lower is better. ``noise``: ``Tensor[samples, B, C, H, W]`` to use instead of
    drawing it (seeded by ``seed``). Maps are compared after each is divided by its own
    largest ``|value|`` (Quantus divides by the largest in the batch)."""
    values = _sensitivities(
        model,
        images,
        maps,
        targets,
        explain,
        samples,
        std,
        noise,
        seed,
        batch_size,
        normalise,
        absolute,
        "lipschitz",
    )
    return values.nan_to_num(nan=-torch.inf).amax(1).nan_to_num(neginf=torch.nan)


# ------------------------------------------ ROAD, IROF, infidelity, monotonicity

# Rong et al. 2022: each removed pixel is the weighted mean of its 8 neighbours (weight 1/6
# for the 4 direct ones, 1/12 for the diagonals), solved jointly for all removed pixels.
_IMPUTATION_WEIGHTS = (
    (1, 1, 1 / 12),
    (0, 1, 1 / 6),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (0, -1, 1 / 6),
    (-1, -1, 1 / 12),
    (1, 0, 1 / 6),
    (-1, 0, 1 / 6),
)


def _dissection_order(rows: np.ndarray, cols: np.ndarray, leaf: int = 64) -> np.ndarray:
    """A nested-dissection order of grid pixels (``rows``, ``cols``: int arrays ``[k]``):
    the pixels split by the middle line of the longer side of their bounding box, each side
    ordered the same way, the line's pixels last; at most ``leaf`` pixels are kept in the
    given order. With an 8-neighbour stencil no pixel on one side touches the other, so an
    LU factorisation in this order fills in far less than in a column-minimum-degree order
    on the large connected holes of ROAD (George 1973)."""
    parts: list[np.ndarray] = []

    def split(members: np.ndarray) -> None:
        if len(members) <= leaf:
            parts.append(members)
            return
        r, c = rows[members], cols[members]
        coord = r if np.ptp(r) >= np.ptp(c) else c
        middle = (int(coord.min()) + int(coord.max())) // 2
        split(members[coord < middle])
        split(members[coord > middle])
        parts.append(members[coord == middle])

    split(np.arange(len(rows)))
    return np.concatenate(parts)


def linear_imputation(image: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """``Tensor[C, k]`` float64: the values that make each of the ``removed`` pixels (flat
    ``H*W`` indices, ``LongTensor[k]``) of ``image`` ``Tensor[C, H, W]`` the weighted mean of
    its neighbours inside the image (Rong et al. 2022's linear imputation, every channel on
    its own; one sparse linear system, solved exactly).

    The system is symmetric and, since fewer than all pixels are removed, every connected
    hole touches a kept pixel, so it is definite: it is factorised without pivoting in a
    nested-dissection order (`_dissection_order`), about twice as fast as SciPy's default
    ``spsolve`` on 90% removed and equal to it within float rounding."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import splu

    channels, height, width = image.shape
    x = image.detach().reshape(channels, -1).double().cpu().numpy()
    removed = removed.cpu().numpy()
    k = len(removed)
    order = _dissection_order(removed // width, removed % width)
    removed = removed[order]
    variable = np.full(height * width, -1)
    variable[removed] = np.arange(k)
    rows, cols = removed // width, removed % width
    ids = np.arange(k)
    lhs_rows, lhs_cols, lhs_values = [ids], [ids], []
    rhs = np.zeros((k, channels))
    diagonal = np.zeros(k)
    for dr, dc, weight in _IMPUTATION_WEIGHTS:
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        neighbour = r[inside] * width + c[inside]
        own = ids[inside]
        unknown = variable[neighbour] >= 0
        lhs_rows.append(own[unknown])
        lhs_cols.append(variable[neighbour[unknown]])
        lhs_values.append(np.full(int(unknown.sum()), weight))
        rhs[own[~unknown]] -= weight * x[:, neighbour[~unknown]].T
        diagonal[inside] += weight
    lhs = csc_matrix(
        (
            np.concatenate([-diagonal, *lhs_values]),
            (np.concatenate(lhs_rows), np.concatenate(lhs_cols)),
        ),
        shape=(k, k),
    )
    factors = splu(
        lhs,
        permc_spec="NATURAL",
        diag_pivot_thresh=0.0,
        options={"SymmetricMode": True, "Equil": False},
    )
    solution = np.empty((channels, k))
    solution[:, order] = factors.solve(rhs).T
    return torch.from_numpy(solution)


def road_curve(
    model,
    images,
    maps,
    targets,
    *,
    order: str = "morf",
    percentages=tuple(range(1, 100, 2)),
    noise: float = 0.01,
    seed: int = 0,
    draws: torch.Tensor | None = None,
    normalise=True,
    absolute=False,
    batch_size: int = 256,
) -> torch.Tensor:
    """ROAD (Rong et al. 2022): ``Tensor[B, P]`` float64, 1 where the model's top class is
    still the target after the ``int(H W p / 100)`` pixels with the highest map values
    (``order="morf"``; ``"lerf"``: the lowest; ties in raster order) are replaced, in every
    channel, by their noisy linear imputation (`linear_imputation` plus
    ``noise * N(0, 1)``), one column per percentage ``p``. ``draws``:
    ``Tensor[P, B, C, H, W]`` of N(0, 1) to use instead of drawing them (seeded by ``seed``;
    only the removed pixels' draws are used)."""
    targets = _check(images, maps, targets)
    if order not in ("morf", "lerf"):
        raise MetricError(f"order must be 'morf' or 'lerf', got {order!r}")
    percentages = list(percentages)
    if not percentages or min(percentages) < 0 or max(percentages) >= 100:
        raise MetricError("percentages must be a non-empty list of values in [0, 100)")
    batch, channels, height, width = images.shape
    a = prepared(maps, normalise, absolute)
    ranking = torch.sort(-a if order == "morf" else a, dim=1, stable=True).indices
    generator = torch.Generator().manual_seed(seed)
    curve = torch.zeros(batch, len(percentages), dtype=torch.float64)
    with borrowed_model(as_module(model)), torch.no_grad():
        for column, percentage in enumerate(percentages):
            k = int(height * width * percentage / 100)
            if draws is None:
                step_draws = torch.randn(batch, channels, height * width, generator=generator)
            else:
                step_draws = torch.as_tensor(draws)[column].reshape(batch, channels, -1)
            perturbed = images.detach().clone().reshape(batch, channels, -1)
            for n in range(batch):
                removed = ranking[n, :k]
                if k:
                    values = linear_imputation(images[n], removed)
                    values = values + noise * step_draws[n][:, removed].double()
                    perturbed[n][:, removed.to(images.device)] = values.to(images)
            perturbed = perturbed.view_as(images)
            for start in range(0, batch, batch_size):
                chunk = perturbed[start : start + batch_size]
                top = forward_copies(as_module(model), chunk).argmax(1).cpu()
                curve[start : start + batch_size, column] = (
                    top == targets[start : start + batch_size]
                ).double()
    return curve


def road_morf(model, images, maps, targets, **options):
    """ROAD, most relevant first (Rong et al. 2022): the mean over the percentages of
    `road_curve` (``order="morf"``), the share of removal levels at which the model still
    predicts the target. Lower is better (removing what the map ranks first hurts)."""
    return road_curve(model, images, maps, targets, order="morf", **options).mean(1)


def road_lerf(model, images, maps, targets, **options):
    """ROAD, least relevant first: the mean of `road_curve` with ``order="lerf"``. Higher is
    better (removing what the map ranks last leaves the prediction)."""
    return road_curve(model, images, maps, targets, order="lerf", **options).mean(1)


def superpixels(images: torch.Tensor, n_segments: int = 100, compactness: float = 10.0):
    """``LongTensor[B, H, W]``: SLIC superpixels of each image (``skimage.segmentation.slic``
    on the channels-last image in float64, labels from 0), the segmentation Quantus uses."""
    from skimage.segmentation import slic

    out = [
        slic(
            image.detach().permute(1, 2, 0).double().cpu().numpy(),
            n_segments=n_segments,
            compactness=compactness,
            start_label=0,
        )
        for image in images
    ]
    return torch.from_numpy(np.stack(out)).long()


def irof(
    model,
    images,
    maps,
    targets,
    *,
    segments: torch.Tensor | None = None,
    n_segments: int = 100,
    softmax: bool = True,
    normalise=True,
    absolute=False,
    batch_size: int = 256,
):
    """IROF (Rieger and Hansen 2020): the image's superpixels (`superpixels`, or
    ``segments`` ``LongTensor[B, H, W]`` of labels 0..S-1) are replaced one after another,
    in order of decreasing mean map value (ties: lower label first), each by the mean of
    the image as it stands then (all channels and pixels); with ``c_t`` the target's softmax
    probability (``softmax=False``: logit) after ``t`` segments, divided by the unperturbed
    one, the score is the area over the curve ``S - trapezoid(c_1 .. c_S)`` (unit step).
    Higher is better."""
    targets = _check(images, maps, targets)
    batch, channels, height, width = images.shape
    if segments is None:
        segments = superpixels(images, n_segments)
    segments = torch.as_tensor(segments).long().cpu()
    if segments.shape != maps.shape or segments.min() < 0:
        raise MetricError("segments must be a LongTensor[B, H, W] of labels >= 0")
    flat = segments.view(batch, -1)
    count = int(flat.max()) + 1
    present = torch.zeros(batch, count, dtype=torch.bool).scatter_(1, flat, True)
    if (present.sum(1) < 2).any():
        raise MetricError("IROF needs at least two superpixels per image")
    a = prepared(maps, normalise, absolute)
    sums = torch.zeros(batch, count, dtype=torch.float64).scatter_add_(1, flat, a)
    sizes = torch.zeros(batch, count, dtype=torch.float64).scatter_add_(1, flat, torch.ones_like(a))
    means = torch.where(present, sums / sizes.clamp(min=1), -torch.inf)
    order = torch.sort(-means, dim=1, stable=True).indices  # absent labels last
    steps = present.sum(1)
    pixel_order, cuts = _pixels_by_key(flat, count)
    pixel_order, cuts = pixel_order.to(images.device), cuts.tolist()
    labels = order.tolist()
    curve = torch.zeros(batch, count, dtype=torch.float64)
    with borrowed_model(as_module(model)), torch.no_grad():
        y = _forward_scores(model, images, targets, batch_size, softmax)
        x = images.detach().clone(memory_format=torch.contiguous_format)
        planes = x.view(batch, channels, height * width)
        for t in range(int(steps.max())):
            fill = x.reshape(batch, -1).mean(1).tolist()
            for n in range(batch):  # segment t of image n (an absent label has no pixels)
                label = labels[n][t]
                pixels = pixel_order[n, cuts[n][label] : cuts[n][label + 1]]
                planes[n].index_fill_(1, pixels, fill[n])
            curve[:, t] = _forward_scores(model, x, targets, batch_size, softmax) / y
    positions = torch.arange(count)[None, :]
    curve = torch.where(positions < steps[:, None], curve, 0.0)
    last = curve.gather(1, (steps - 1)[:, None])[:, 0]
    area = curve.sum(1) - (curve[:, 0] + last) / 2  # trapezoid over c_1 .. c_S
    return steps.double() - area


def infidelity(
    model,
    images,
    maps,
    targets,
    *,
    patch_sizes=(4,),
    normalise=False,
    absolute=False,
    batch_size: int = 256,
):
    """Infidelity (Yeh et al. 2019) with Quantus 0.6's perturbations: for each patch size,
    the square patches of the image (padded evenly to a multiple, as `selectivity`) go to the
    image's smallest value cumulatively in raster order; after step ``k`` (patches 1..k
    removed, ``I_k = x - x_k``) the squared error between the explanation's prediction of
    the change, ``sum a * I_k`` (the map repeated over channels) and the real logit drop
    ``f(x) - f(x_k)`` is recorded; the score is its mean over the steps, then over the patch
    sizes. Lower is better."""
    targets = _check(images, maps, targets)
    batch, channels, height, width = images.shape
    a = prepared(maps, normalise, absolute).view(batch, 1, height, width)
    black = _black(images)
    gap = (images.detach() - black).double().cpu().sum(1, keepdim=True)  # sum over channels
    scores = []
    module = as_module(model)
    with borrowed_model(module), torch.no_grad():
        y = _forward_scores(model, images, targets, batch_size)
    with borrowed_model(module, copy_inputs=False), torch.no_grad():
        for patch in patch_sizes:
            if patch < 1:
                raise MetricError(f"patch sizes must be >= 1, got {patch}")
            pad_h, pad_w = _even_padding(height, patch), _even_padding(width, patch)
            explained = F.avg_pool2d(F.pad(a * gap, (*pad_w, *pad_h)), patch) * patch**2
            rows, cols = explained.shape[-2:]
            predicted = explained.view(batch, -1).cumsum(1)
            block = torch.arange(rows * cols).view(1, 1, rows, cols)  # raster order
            block = _patch_pixels(block, patch, pad_h, pad_w)
            steps = rows * cols
            removed = _cumulative_scores(model, images, targets, block, steps, batch_size)
            drops = y[:, None] - removed
            scores.append(((drops - predicted) ** 2).mean(1))
    return torch.stack(scores, 1).mean(1)


def _group_members(features: torch.Tensor, groups: int, step: int) -> torch.Tensor:
    """``LongTensor[B, groups, step]``: the flat input indices of each group of ``step``
    consecutive entries of ``features`` (``LongTensor[B, total]``); a short last group is
    filled up with its own first index."""
    batch, total = features.shape
    padding = groups * step - total
    if padding:
        first = features[:, (groups - 1) * step : (groups - 1) * step + 1]
        features = torch.cat([features, first.expand(batch, padding)], 1)
    return features.view(batch, groups, step)


def monotonicity_correlation(
    model,
    images,
    maps,
    targets,
    *,
    samples: int = 100,
    features_in_step: int = 1,
    eps: float = 1e-5,
    softmax: bool = True,
    seed: int = 0,
    values: torch.Tensor | None = None,
    normalise=True,
    absolute=True,
    batch_size: int = 256,
):
    """Monotonicity correlation (Nguyen and Martinez 2020): the input features (channel
    values; pixels in order of increasing map value, ties in raster order, each pixel's
    channels together) are taken ``features_in_step`` at a time; each group is set, alone,
    ``samples`` times to a value drawn from U(0, 1) (one per image and draw), and the
    variance it causes, ``mean (f(x') - f(x))^2 / f(x)^2`` (``f``: the target's softmax
    probability, ``softmax=False``: logit; no division where ``|f(x)| < eps``), is compared
    with the group's map sum: the score is their Spearman correlation over the groups.
    Higher is better. ``values``: ``Tensor[B, groups, samples]`` to use instead of drawing
    them (seeded by ``seed``). Equals Quantus when ``features_in_step`` is a multiple of the
    channel count (Quantus orders equal values, a pixel's channels, in NumPy's order)."""
    targets = _check(images, maps, targets)
    if samples < 1 or features_in_step < 1:
        raise MetricError("samples and features_in_step must be >= 1")
    batch, channels, height, width = images.shape
    a = prepared(maps, normalise, absolute)
    pixel_order = torch.sort(a, dim=1, stable=True).indices
    features = (pixel_order[:, :, None] + torch.arange(channels) * height * width).reshape(
        batch, -1
    )
    total = features.shape[1]
    groups = -(-total // features_in_step)
    if values is None:
        generator = torch.Generator().manual_seed(seed)
        values = torch.rand(batch, groups, samples, generator=generator)
    values = torch.as_tensor(values)
    if values.shape != (batch, groups, samples):
        raise MetricError(f"values must be a Tensor[B, {groups}, {samples}]")
    attribution = a.repeat(1, channels).gather(1, features)
    padded = F.pad(attribution, (0, groups * features_in_step - total))
    atts = padded.view(batch, groups, features_in_step).sum(2)
    # group g of image n is features[n, g * step : (g + 1) * step]; the last may be short,
    # so it is padded by repeating its own first feature (setting it twice changes nothing)
    members = _group_members(_storage_positions(features, images), groups, features_in_step)
    members = members.to(images.device)  # once, not per batch

    def perturb(ks, start, count):  # step g * samples + s: group g set to draw s
        g, s = ks // samples, ks % samples
        index = members[start : start + count][:, g].transpose(0, 1)  # Tensor[k, b, step]
        drawn = values[start : start + count][:, g, s].T  # Tensor[k, b]
        return index, drawn[:, :, None].expand(index.shape)

    with borrowed_model(as_module(model), copy_inputs=False), torch.no_grad():
        y, scores = _scattered_scores(
            model, images, targets, groups * samples, perturb, batch_size, softmax
        )
    variance = ((scores - y[:, None]) ** 2).view(batch, groups, samples)
    scale = torch.where(y.abs() >= eps, 1 / y.abs().clamp(min=eps) ** 2, 1.0)
    spread = variance.mean(2) * scale[:, None]
    return spearman(atts[:, None, :], spread[:, None, :]).double()


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("sparseness", sparseness, True, "Sparseness", (), "Gini index of |map|"),
        MetricSpec("complexity", complexity, False, "Complexity", (), "entropy of |map|"),
        MetricSpec(
            "relevance_mass_accuracy",
            relevance_mass_accuracy,
            True,
            "RelevanceMassAccuracy",
            ("masks",),
            "share of the map's sum in the mask",
        ),
        MetricSpec(
            "relevance_rank_accuracy",
            relevance_rank_accuracy,
            True,
            "RelevanceRankAccuracy",
            ("masks",),
            "share of the top-|mask| pixels in the mask",
        ),
        MetricSpec(
            "selectivity",
            selectivity,
            False,
            "Selectivity",
            (),
            "AUC of the logit as patches go black, most relevant first",
        ),
        MetricSpec(
            "faithfulness_correlation",
            faithfulness_correlation,
            True,
            "FaithfulnessCorrelation",
            (),
            "Pearson(map sum, logit drop) over random subsets",
        ),
        MetricSpec(
            "random_logit",
            random_logit,
            False,
            "RandomLogit",
            ("explain",),
            "SSIM with the map of a random other class",
        ),
        MetricSpec(
            "max_sensitivity",
            max_sensitivity,
            False,
            "MaxSensitivity",
            ("explain",),
            "largest relative map change under uniform input noise",
        ),
        MetricSpec(
            "avg_sensitivity",
            avg_sensitivity,
            False,
            "AvgSensitivity",
            ("explain",),
            "mean relative map change under uniform input noise",
        ),
        MetricSpec(
            "local_lipschitz_estimate",
            local_lipschitz_estimate,
            False,
            "LocalLipschitzEstimate",
            ("explain",),
            "largest map change per input change under Gaussian noise",
        ),
        MetricSpec(
            "road_morf",
            road_morf,
            False,
            "ROAD",
            (),
            "share of MoRF removal levels (noisy linear imputation) still predicting the target",
        ),
        MetricSpec(
            "road_lerf",
            road_lerf,
            True,
            "ROAD",
            (),
            "share of LeRF removal levels (noisy linear imputation) still predicting the target",
        ),
        MetricSpec(
            "irof",
            irof,
            True,
            "IROF",
            (),
            "area over the probability curve as superpixels go to the mean, most relevant first",
        ),
        MetricSpec(
            "infidelity",
            infidelity,
            False,
            "Infidelity",
            (),
            "mean squared error of sum(map * removed input) against the logit drop",
        ),
        MetricSpec(
            "monotonicity_correlation",
            monotonicity_correlation,
            True,
            "MonotonicityCorrelation",
            (),
            "Spearman(map sum, output variance) over feature groups",
        ),
    )
}


# ---------------------------------------------------------------- model randomisation
# MPRT and efficient MPRT re-run the method on a copy of the model whose parameters are
# re-drawn (`convlens.evaluate.sanity`: the layers of `parametrised_layers`, each re-drawn by
# `randomize_layer`), so they take ``method(model, images, targets)`` instead of ``explain``.

RANDOMISATION_ORDERS = ("top_down", "bottom_up")


def randomised_model(
    model,
    images: torch.Tensor,
    *,
    seed: int = 42,
    order: str = "top_down",
    each: Callable[[str, object], None] | None = None,
):
    """A deep copy of ``model`` (a `LoadedModel` stays one) with every parametrised layer
    re-drawn, one after another in ``order`` (``"top_down"``: logits first, as
    `convlens.evaluate.parametrised_layers` lists them; ``"bottom_up"``: the input layer
    first), from one generator seeded with ``seed`` (the global RNG state is left as it
    was). ``each(layer, copy)`` is called after each layer (cascading: the copy keeps the
    layers re-drawn before). ``model`` itself is never modified."""
    from convlens.evaluate.sanity import parametrised_layers, randomize_layer

    if order not in RANDOMISATION_ORDERS:
        raise MetricError(f"order must be one of {RANDOMISATION_ORDERS}, got {order!r}")
    module = as_module(model)
    names = parametrised_layers(module, images)
    if not names:
        raise MetricError("the model has no parameters to randomise")
    if order == "bottom_up":
        names = names[::-1]
    work = copy.deepcopy(module)
    result = dataclasses.replace(model, module=work) if isinstance(model, LoadedModel) else work
    by_name = dict(work.named_modules())
    devices = [p.device for p in work.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for name in names:
            randomize_layer(by_name[name])
            if each is not None:
                each(name, result)
    return result


def _method_chunks(method: Method | None, model, images, targets, batch_size, metric: str):
    if method is None:
        raise MetricError(
            f"{metric} re-runs the method on a randomised model: pass "
            "method=callable(model, images, targets) -> Tensor[B, H, W]"
        )
    return _explain_chunks(lambda x, t: method(model, x, t), images, targets, batch_size, model)


def mprt(
    model,
    images,
    maps,
    targets,
    *,
    method: Method | None = None,
    seed: int = 42,
    order: str = "top_down",
    aggregate: str = "last",
    absolute: bool = True,
    batch_size: int = 256,
):
    """Model parameter randomisation test (Adebayo et al. 2018): Spearman rank correlation
    between ``|maps|`` and ``|method(randomised model, images, targets)|`` (flattened; NaN
    where either map is constant). ``aggregate="last"``: after every parametrised layer is
    re-drawn (cascading, ``order``; Quantus's ``return_last_correlation``); ``"mean"``: the
    mean over the unrandomised model and every cascade step (Quantus's
    ``return_average_correlation``, which keeps the unrandomised model's entry). Lower is
    better: the map should change when the weights it explains are gone."""
    from convlens.evaluate.sanity import spearman

    targets = _check(images, maps, targets)
    if aggregate not in ("last", "mean"):
        raise MetricError(f"aggregate must be 'last' or 'mean', got {aggregate!r}")
    a = maps.detach().float().cpu()
    a = a.abs() if absolute else a

    def similarity(model_now) -> torch.Tensor:
        b = _method_chunks(method, model_now, images, targets, batch_size, "mprt")
        return spearman(a, b.abs() if absolute else b).double()

    steps: list[torch.Tensor] = []
    if aggregate == "mean":
        steps.append(similarity(model))
    record = (lambda _, copy_: steps.append(similarity(copy_))) if aggregate == "mean" else None
    randomised = randomised_model(model, images, seed=seed, order=order, each=record)
    if aggregate == "last":
        return similarity(randomised)
    return torch.stack(steps).mean(0)


def discrete_entropy(maps: torch.Tensor, n_bins: int = 100) -> torch.Tensor:
    """``Tensor[B]`` float64: the Shannon entropy (natural log) of each map's histogram of
    ``n_bins`` equal bins between its smallest and largest value (NumPy's ``histogram``; a
    constant map has one full bin: entropy 0)."""
    from scipy.stats import entropy

    flat = maps.detach().reshape(len(maps), -1).float().cpu().numpy()
    values = [entropy(np.histogram(row, bins=n_bins)[0]) for row in flat]
    return torch.tensor(values, dtype=torch.float64)


def efficient_mprt(
    model,
    images,
    maps,
    targets,
    *,
    method: Method | None = None,
    seed: int = 42,
    order: str = "bottom_up",
    n_bins: int = 100,
    absolute: bool = False,
    batch_size: int = 256,
):
    """Efficient MPRT (Hedström et al. 2024): the relative rise of the map's complexity when
    every parametrised layer is re-drawn, ``(H(a') - H(a)) / H(a)`` with ``H`` the
    `discrete_entropy` of ``n_bins`` bins, ``a`` the maps and ``a'`` the method's maps on
    the fully randomised model (cascading in ``order``, bottom-up by default as the paper
    recommends). NaN where ``H(a) = 0`` (a constant map). Higher is better: a map of a
    model with random weights should look like noise."""
    targets = _check(images, maps, targets)
    randomised = randomised_model(model, images, seed=seed, order=order)
    b = _method_chunks(method, randomised, images, targets, batch_size, "efficient_mprt")
    a = maps.detach()
    if absolute:
        a, b = a.abs(), b.abs()
    before, after = discrete_entropy(a, n_bins), discrete_entropy(b, n_bins)
    return torch.where(before > 0, (after - before) / before.where(before > 0, 1.0), torch.nan)


METRICS.update(
    {
        spec.name: spec
        for spec in (
            MetricSpec(
                "mprt",
                mprt,
                False,
                "MPRT",
                ("method",),
                "Spearman of |map| with |map| of the fully randomised model",
            ),
            MetricSpec(
                "efficient_mprt",
                efficient_mprt,
                True,
                "EfficientMPRT",
                ("method",),
                "relative rise of the map's histogram entropy on the randomised model",
            ),
        )
    }
)


def get_metric(name: str) -> MetricSpec:
    """The `MetricSpec` registered as ``name``."""
    if name not in METRICS:
        raise MetricError(f"unknown metric {name!r}; use one of {', '.join(METRICS)} or 'all'")
    return METRICS[name]


def metric_names(spec: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` (each checked), ``"all"`` -> every registered metric."""
    if spec.strip() == "all":
        return list(METRICS)
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise MetricError("--metrics is empty; name metrics (comma separated) or 'all'")
    return [get_metric(name).name for name in names]


def run_metric(
    name: str,
    model,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    *,
    masks: torch.Tensor | None = None,
    explain: Explain | None = None,
    method: Method | None = None,
    **options,
) -> torch.Tensor:
    """Score ``maps`` with metric ``name``: ``Tensor[B]`` float64, NaN where undefined. Only
    the context the metric needs (``masks``, ``explain``, ``method``) is passed on;
    ``options`` go to the metric function (its keyword arguments). Without ``explain``,
    ``method`` explains on ``model``: ``explain(x, t) = method(model, x, t)``."""
    spec = get_metric(name)
    if explain is None and method is not None:

        def explain(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return method(model, images, targets)

    context = {"masks": masks, "explain": explain, "method": method}
    extra = {key: context[key] for key in spec.needs}
    return spec.function(model, images, maps, targets, **extra, **options)


__all__ = [
    "METRICS",
    "MetricSpec",
    "avg_sensitivity",
    "complexity",
    "faithfulness_correlation",
    "get_metric",
    "infidelity",
    "irof",
    "linear_imputation",
    "monotonicity_correlation",
    "road_curve",
    "road_lerf",
    "road_morf",
    "superpixels",
    "local_lipschitz_estimate",
    "efficient_mprt",
    "max_sensitivity",
    "metric_names",
    "mprt",
    "randomised_model",
    "prepared",
    "random_logit",
    "random_subsets",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "run_metric",
    "selectivity",
    "sparseness",
]
