"""Faithfulness: does the model's score follow the pixels the map calls important?

- Deletion and insertion curves (Petsiuk et al. 2018, RISE): pixels are removed from the
  image (deletion) or revealed on a blurred copy (insertion) in order of decreasing map
  value, and the target's score is recorded after each step. A faithful map makes the
  deletion score fall fast (low AUC) and the insertion score rise fast (high AUC).
- Average drop / increase in confidence (Chattopadhay et al. 2018, Grad-CAM++): the
  image multiplied by the normalised map, compared with the image.

The target class is resolved once on the unmodified image and kept fixed (see
`convlens.evaluate.scoring`). Every function borrows the model (eval mode, no gradients)
and never modifies it or the inputs; ``batch_size`` only sets how many perturbed images
are built at once and never changes the results (they go through the model by
`convlens.attribution.common.forward_copies`: channels-last, and on the CPU at most eight
224 x 224 images a pass).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from convlens.attribution.common import forward_copies
from convlens.errors import MetricError
from convlens.evaluate.scoring import check_score, pinned_targets_and_rows, target_score
from convlens.layers.borrow import borrowed_model
from convlens.localize.masks import check_maps
from convlens.maps import gaussian_blur, normalize_maps
from convlens.models.loading import LoadedModel, as_module

Baseline = str | torch.Tensor


def baseline_images(images: torch.Tensor, baseline: Baseline) -> torch.Tensor:
    """The values that replace removed pixels, ``Tensor[N, C, H, W]``: ``"zero"`` (zeros in
    the model's input space, i.e. the dataset mean for mean/std-normalised inputs),
    ``"blur"`` (`gaussian_blur` of the image) or a tensor broadcastable to the images."""
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.detach().to(images), images.shape)
        except RuntimeError as error:
            raise MetricError(
                f"a baseline tensor of shape {tuple(baseline.shape)} does not broadcast to "
                f"the images {tuple(images.shape)}"
            ) from error
    if baseline == "zero":
        return torch.zeros_like(images)
    if baseline == "blur":
        return gaussian_blur(images)
    raise MetricError(f"baseline must be 'blur', 'zero' or a tensor, got {baseline!r}")


def pixel_ranks(maps: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``Tensor[N, H, W]`` (int64): each pixel's position when the map's pixels are sorted
    by decreasing value (0 = most important). Pixels of equal value are ordered by one random
    permutation of the pixel positions drawn from ``seed`` (so a flat or coarse map removes
    its tied pixels scattered over the image, not row by row from the top; the same seed
    gives the same order)."""
    flat = maps.flatten(1)
    generator = torch.Generator().manual_seed(seed)
    shuffle = torch.randperm(flat.shape[1], generator=generator).to(flat.device)
    order = shuffle[torch.argsort(flat[:, shuffle], dim=1, descending=True, stable=True)]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order).contiguous())
    return ranks.view_as(maps)


def _checked(images: torch.Tensor, maps: torch.Tensor, rows: int) -> torch.Tensor:
    maps = check_maps(maps)
    if maps.shape[0] != rows or maps.shape[-2:] != images.shape[-2:]:
        raise MetricError(
            f"maps {tuple(maps.shape)} do not match {rows} explained rows of "
            f"{tuple(images.shape[-2:])} pixels; pass one map per row at input resolution"
        )
    return maps.to(images.device)


def perturbation_curve(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    maps: torch.Tensor,
    start: Baseline | None,
    end: Baseline | None,
    target: object = None,
    steps: int | None = None,
    batch_size: int = 64,
    score: str = "probability",
    seed: int = 0,
) -> torch.Tensor:
    """``Tensor[N, steps + 1]``: the target score of ``x_k``, ``k = 0..steps``, where
    ``x_k`` takes its ``floor(k * H * W / steps)`` highest-ranked pixels (by map value,
    all channels; ties in the random order of ``seed``, see `pixel_ranks`) from ``end`` and
    the rest from ``start`` (``None`` = the image itself). ``steps`` defaults to the image
    side ``min(H, W)`` (64 for 64-pixel images, 224 for 224 as in RISE: one row's worth of
    pixels per step). Deletion: start = image, end = baseline; insertion: start = baseline,
    end = image.

    Rows with the same image, baseline and pixel order (several classes of one image
    explained by a class-agnostic map, say) see the same perturbed inputs: each such input
    goes through the model once and every row reads its own target's score from it."""
    steps = min(images.shape[-2:]) if steps is None else steps
    if steps < 1 or batch_size < 1:
        raise MetricError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    targets, rows = pinned_targets_and_rows(model, images, target)
    check_score(score, targets)
    maps = _checked(rows, maps, len(rows))
    first = rows if start is None else baseline_images(rows, start)
    last = rows if end is None else baseline_images(rows, end)
    ranks = pixel_ranks(maps, seed)[:, None]
    pixels = ranks.shape[-1] * ranks.shape[-2]
    counts = torch.arange(steps + 1) * pixels // steps
    lead, members = _distinct_rows(first, last, ranks)
    pairs = torch.cartesian_prod(torch.arange(len(lead)), torch.arange(steps + 1))
    curve = torch.zeros(len(rows), steps + 1)
    module = as_module(model)
    with borrowed_model(module), torch.no_grad():
        for chunk in pairs.split(batch_size):
            u, k = chunk[:, 0], chunk[:, 1]
            n = lead[u]
            moved = ranks[n] < counts[k].to(ranks.device)[:, None, None, None]
            output = forward_copies(module, torch.where(moved, last[n], first[n]))
            at, row = members(u)
            scores = target_score(output[at.to(output.device)], targets.subset(row), score)
            curve[row, k[at]] = scores.cpu()
    return curve


def _distinct_rows(first: torch.Tensor, last: torch.Tensor, ranks: torch.Tensor):
    """Group the rows whose ``first``, ``last`` and ``ranks`` are all equal (so are their
    perturbed inputs). Returns ``lead`` (``Tensor[U]``: the first row of each group, in
    order) and ``members(u)``: for group ids ``u`` (``Tensor[b]``), the pairs ``(at, row)``
    (``Tensor[M]`` each) of a position in ``u`` and a row of that position's group. Without
    repeated rows, ``lead`` is ``arange(N)`` and ``members(u)`` is ``(arange(b), u)``."""
    leaders: dict[bytes, list[int]] = {}  # digest of a row's tensors -> rows that lead
    owner = []
    for n in range(len(ranks)):
        digest = hashlib.blake2b(digest_size=16)
        for tensor in (first[n], last[n], ranks[n]):
            raw = tensor.detach().cpu().contiguous().view(torch.uint8)  # any dtype's bytes
            digest.update(raw.numpy().tobytes())
        rivals = leaders.setdefault(digest.digest(), [])
        same = [g for g in rivals if all(torch.equal(t[g], t[n]) for t in (first, last, ranks))]
        if not same:
            rivals.append(n)
        owner.append(same[0] if same else n)
    lead = torch.tensor(sorted(set(owner)), dtype=torch.long)
    group = torch.searchsorted(lead, torch.tensor(owner, dtype=torch.long))
    order = torch.argsort(group, stable=True)
    sizes = torch.bincount(group, minlength=len(lead))
    offsets = torch.cumsum(sizes, 0) - sizes

    def members(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = sizes[u]
        at = torch.repeat_interleave(torch.arange(len(u)), count)
        starts = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        return at, order[offsets[u][at] + torch.arange(len(at)) - starts]

    return lead, members


def deletion_curve(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    maps: torch.Tensor,
    target: object = None,
    steps: int | None = None,
    baseline: Baseline = "zero",
    batch_size: int = 64,
    score: str = "probability",
    seed: int = 0,
) -> torch.Tensor:
    """Deletion curve (Petsiuk et al. 2018): ``Tensor[N, steps + 1]``, the target score
    after removing the first ``k / steps`` of the pixels in order of decreasing map value
    (removed pixels take the ``baseline``: ``"zero"`` as in RISE, ``"blur"`` or a tensor).

    ``images``: ``Tensor[B, C, H, W]``; ``maps``: ``Tensor[N, H, W]``, one per explained
    row; ``score``: ``"probability"`` (softmax of the target class, RISE), ``"sigmoid"``
    (multi-label models) or ``"logit"``. ``steps``: default the image side (see
    `perturbation_curve`); ``seed``: the order of tied pixels (`pixel_ranks`).
    Column 0 is the unmodified image, column ``steps`` the baseline alone.
    """
    return perturbation_curve(
        model, images, maps, None, baseline, target, steps, batch_size, score, seed
    )


def insertion_curve(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    maps: torch.Tensor,
    target: object = None,
    steps: int | None = None,
    baseline: Baseline = "blur",
    batch_size: int = 64,
    score: str = "probability",
    seed: int = 0,
) -> torch.Tensor:
    """Insertion curve (Petsiuk et al. 2018): ``Tensor[N, steps + 1]``, the target score
    when the first ``k / steps`` of the pixels (by decreasing map value) are revealed on
    the ``baseline`` (``"blur"`` as in RISE, ``"zero"`` or a tensor). Column 0 is the
    baseline alone, column ``steps`` the unmodified image. Arguments as `deletion_curve`.
    """
    return perturbation_curve(
        model, images, maps, baseline, None, target, steps, batch_size, score, seed
    )


def black_pixels(model: nn.Module | LoadedModel, images: torch.Tensor) -> torch.Tensor:
    """``Tensor[1, C, 1, 1]``: black (pixel value 0) in the model's input space: ``(0 - mean)
    / std`` of a `LoadedModel`'s `Preprocess`; zeros for a bare module (its inputs are taken
    to be the pixels themselves)."""
    if not isinstance(model, LoadedModel):
        return torch.zeros(1, images.shape[1], 1, 1, dtype=images.dtype, device=images.device)
    mean = torch.as_tensor(model.preprocess.mean, dtype=images.dtype, device=images.device)
    std = torch.as_tensor(model.preprocess.std, dtype=images.dtype, device=images.device)
    return (-mean / std).view(1, -1, 1, 1)


def average_drop_increase(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    maps: torch.Tensor,
    target: object = None,
    baseline: Baseline | None = None,
    batch_size: int = 64,
    score: str = "probability",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average drop and increase in confidence (Chattopadhay et al. 2018), per image.

    As the paper defines it, the explanation map masks the image in PIXEL space:
    ``E = M * I``, the map ``M`` min-max normalised to [0, 1] times the pixels ``I``, so
    unimportant pixels go to black. In the model's input space ``x = (I - mean) / std``
    this is ``E = b + M * (x - b)`` with ``b`` = black, ``-mean / std`` (`black_pixels`:
    a `LoadedModel` brings its normalisation; a bare module is taken to see pixels).
    ``baseline`` (``"zero"``, ``"blur"`` or a tensor, as `baseline_images`) replaces black
    with another value.
    With ``Y`` the target's score (``"probability"``: softmax, ``"sigmoid"`` for
    multi-label models) on ``x`` and ``O`` on ``E``, returns ``(drop, increase)``, each
    ``Tensor[N]``: ``drop = max(0, Y - O) / Y`` in [0, 1] and ``increase = O > Y`` (bool).
    The paper's Average Drop % is ``100 * drop.mean()`` and Increase in Confidence %
    is ``100 * increase.float().mean()``.
    """
    if batch_size < 1:
        raise MetricError(f"batch_size must be >= 1, got {batch_size}")
    if score == "logit":
        raise MetricError(
            "average drop is a relative drop of a probability; use 'probability' or 'sigmoid'"
        )
    targets, rows = pinned_targets_and_rows(model, images, target)
    check_score(score, targets)
    weights = normalize_maps(_checked(rows, maps, len(rows)))[:, None]
    if baseline is None:
        base = torch.broadcast_to(black_pixels(model, rows), rows.shape)
    else:
        base = baseline_images(rows, baseline)
    module = as_module(model)
    original, masked = [], []
    with borrowed_model(module), torch.no_grad():
        for index in torch.arange(len(rows)).split(batch_size):
            chunk = targets.subset(index)
            x = rows[index]
            explained = base[index] + weights[index] * (x - base[index])
            original.append(target_score(forward_copies(module, x), chunk, score).cpu())
            masked.append(target_score(forward_copies(module, explained), chunk, score).cpu())
    y, o = torch.cat(original), torch.cat(masked)
    drop = (y - o).clamp(min=0) / y.clamp(min=torch.finfo(y.dtype).tiny)
    return drop, o > y
