"""Black-box perturbation methods: RISE (Petsiuk et al. 2018) and extremal perturbations
(Fong et al. 2019).

Both only call the model's forward (RISE without autograd, extremal perturbations with the
gradient w.r.t. the mask alone), so they run on TorchScript models as on eager ones. As in
`convlens.attribution.perturbation`, the clean input costs one more forward pass, which pins
the explained class and is the output handed back (`MethodResult`); perturbed copies are
scored through ``pinned.copies`` so a callable target sees one row per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convlens.attribution.common import (
    SharedRows,
    chunk_size,
    clean_pass,
    forward_copies,
    in_chunks,
    positive_int,
    prepare,
    work_items,
)
from convlens.attribution.registry import MethodResult, register_method
from convlens.data.progress import progress_bar
from convlens.errors import MethodError
from convlens.layers.borrow import borrowed_model, require_autograd
from convlens.maps import full_precision, gaussian_blur
from convlens.models.loading import LoadedModel


def _fraction(name: str, value: object) -> float:
    """``value`` as a float strictly between 0 and 1, else a `MethodError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise MethodError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class RiseDraws:
    """The random draws behind RISE masks: ``grids`` ``Tensor[N, 1, cells, cells]`` of 0/1
    and each mask's shift ``shifts`` ``Tensor[N, 2]`` (rows, columns) in pixels, for
    images of ``size``; a mask is made only when it is used (`masks`), so N masks never
    need ``N x H x W`` floats at once."""

    grids: torch.Tensor
    shifts: torch.Tensor
    size: tuple[int, int]

    @classmethod
    def draw(
        cls, n_masks: int, size: tuple[int, int], cells: int, keep: float, seed: int
    ) -> RiseDraws:
        n_masks, cells = positive_int("n_masks", n_masks), positive_int("cells", cells)
        keep = _fraction("keep", keep)
        if cells > min(size):
            raise MethodError(
                f"cells ({cells}) must be at most the image side ({min(size)} pixels)"
            )
        generator = torch.Generator().manual_seed(seed)
        grids = (torch.rand(n_masks, 1, cells, cells, generator=generator) < keep).float()
        cell_h, cell_w = math.ceil(size[0] / cells), math.ceil(size[1] / cells)
        shift_y = torch.randint(0, cell_h, (n_masks,), generator=generator)
        shift_x = torch.randint(0, cell_w, (n_masks,), generator=generator)
        return cls(grids, torch.stack([shift_y, shift_x], dim=1), tuple(size))

    def masks(self, indices: torch.Tensor) -> torch.Tensor:
        """Masks ``indices`` (``Tensor[k]``, on the CPU) as ``Tensor[k, H, W]`` float32."""
        height, width = self.size
        cells = self.grids.shape[-1]
        cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
        up = F.interpolate(
            self.grids[indices],
            size=((cells + 1) * cell_h, (cells + 1) * cell_w),
            mode="bilinear",
            align_corners=False,
        )[:, 0]
        out = torch.empty(len(indices), height, width)
        for k, (dy, dx) in enumerate(self.shifts[indices].tolist()):
            out[k] = up[k, dy : dy + height, dx : dx + width]
        return out.clamp_(0, 1)  # (bilinear weights may overshoot 1 by a rounding)


def rise_masks(
    n_masks: int, size: tuple[int, int], *, cells: int = 7, keep: float = 0.5, seed: int = 0
) -> torch.Tensor:
    """The RISE masks ``Tensor[n_masks, H, W]`` (float32, values in [0, 1]) that `rise`
    uses with the same options.

    Each mask is a ``cells x cells`` grid of independent Bernoulli(``keep``) cells, upsampled
    bilinearly to ``(cells + 1) * ceil(H / cells)`` pixels (and the same for W), then cropped
    to ``H x W`` at a uniformly random shift of less than one cell on each axis (Petsiuk et
    al. 2018, section 3.2). All draws come from one generator seeded with ``seed`` (on the
    CPU), so a seed gives the same masks on every device and for every chunking.
    """
    return RiseDraws.draw(n_masks, size, cells, keep, seed).masks(torch.arange(n_masks))


@register_method("rise", "perturbation", slow=True)
def rise(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    n_masks: int = 4000,
    cells: int = 7,
    keep: float = 0.5,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> MethodResult:
    """RISE (Petsiuk et al. 2018): the mean of random masks weighted by the masked score.

    ``M(u) = 1 / (N p) * sum_k S(x * m_k) m_k(u)`` over ``N = n_masks`` masks of
    `rise_masks` (``cells`` x ``cells`` grids, cells kept with probability ``p = keep``,
    upsampled with a random shift), ``S`` the target score (the logit, or what the target
    selects). The masks come from ``seed`` and are the same for every image, so a batch equals
    single-image calls. ``batch_size``: masked copies built at a time (default: see
    `chunk_size`; never changes results). Costs ``N * U + images`` forward passes (``U``
    distinct images: rows holding the same image share each masked copy, `SharedRows`)
    without autograd (a black box: TorchScript models run too). Returns ``Tensor[N, H, W]``.
    """
    prepared = prepare(model, images, target)
    x = prepared.images
    draws = RiseDraws.draw(n_masks, tuple(x.shape[2:]), cells, keep, seed)
    rows = len(x)
    pixels = x.shape[2] * x.shape[3]
    total = torch.zeros(rows, pixels, dtype=full_precision(x[:0]).dtype, device=x.device)
    with borrowed_model(prepared.module), torch.no_grad():
        output, pinned = clean_pass(prepared)
        # rows holding the same image share each masked copy (`SharedRows`)
        shared = SharedRows.of(x, share=isinstance(output, torch.Tensor))
        mask_of, group_of = work_items(n_masks, len(shared))
        size = chunk_size(batch_size, len(shared), pixels)
        chunks = list(in_chunks(len(group_of), size))
        for chunk in progress_bar(chunks, disable=not progress, desc="rise", leave=False):
            used, position = mask_of[chunk].unique(return_inverse=True)
            masks = draws.masks(used).to(x.device)[position.to(x.device)]
            group = group_of[chunk]
            masked = x[shared.first[group].to(x.device)] * masks[:, None].to(x.dtype)
            copy, row, scores = shared.scores(
                pinned, output, forward_copies(prepared.module, masked), group
            )
            weights = torch.zeros(rows, len(group), dtype=total.dtype, device=x.device)
            weights[row.to(x.device), copy.to(x.device)] = full_precision(scores).to(total)
            total += weights @ masks.flatten(1).to(total.dtype)
    total = total.view(rows, *x.shape[2:])
    return MethodResult(total / (n_masks * float(keep)), output)


def _area_targets(areas: tuple[float, ...], pixels: int, like: torch.Tensor) -> torch.Tensor:
    """``Tensor[A, pixels]``: for each area ``a``, the sorted mask with ``round((1 - a) *
    pixels)`` zeros followed by ones (the reference vector ``r_a`` of Fong et al.)."""
    reference = torch.zeros(len(areas), pixels, dtype=like.dtype, device=like.device)
    for k, area in enumerate(areas):
        reference[k, pixels - round(area * pixels) :] = 1
    return reference


def blur_pyramid(images: torch.Tensor, sigma: float, levels: int) -> torch.Tensor:
    """``Tensor[L, N, C, H, W]``: ``images`` blurred with std ``sigma * l / (L - 1)`` for
    ``l = 0 .. L-1`` (level 0 is the image itself)."""
    stack = [images]
    for level in range(1, levels):
        s = sigma * level / (levels - 1)
        kernel = 2 * math.ceil(2 * s) + 1
        stack.append(gaussian_blur(images, kernel_size=kernel, sigma=s))
    return torch.stack(stack)


def blur_perturbation(pyramid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The blur perturbation of Fong et al. (2019): pixel ``u`` blurred with std ``sigma_max *
    (1 - m(u))``, read from the pyramid of `blur_pyramid` by linear interpolation between its
    two nearest levels. ``pyramid``: ``Tensor[L, N, C, H, W]``; ``mask``: ``Tensor[N, 1, H,
    W]`` in [0, 1] (1 keeps the pixel sharp). Differentiable in ``mask``."""
    levels = len(pyramid)
    position = (1 - mask) * (levels - 1)
    # A mask smoothed from parameters at 1 can exceed 1 by a rounding error (a Gaussian
    # kernel's weights sum to 1 + 1e-7 in float32): its position is then just below 0 and
    # must read level 0, not level -1. The weight keeps its tiny offset so gradients flow.
    lower = position.floor().clamp(min=0, max=levels - 2)
    weight = position - lower
    index = lower.long()
    below = torch.gather(pyramid, 0, index[None].expand(1, *pyramid.shape[1:]))[0]
    above = torch.gather(pyramid, 0, (index + 1)[None].expand(1, *pyramid.shape[1:]))[0]
    return below + weight * (above - below)


def smooth_mask(parameters: torch.Tensor, size: tuple[int, int], smoothing: float) -> torch.Tensor:
    """The mask ``Tensor[N, 1, H, W]`` in [0, 1] from its coarse parameters ``Tensor[N, 1, h,
    w]`` in [0, 1]: Gaussian-smoothed with std ``smoothing`` grid cells (0: none), then
    upsampled bilinearly to the image (the smooth parametrisation of Fong et al.)."""
    if smoothing > 0:
        kernel = 2 * math.ceil(2 * smoothing) + 1
        parameters = gaussian_blur(parameters, kernel_size=kernel, sigma=smoothing)
    return F.interpolate(parameters, size=size, mode="bilinear", align_corners=False)


def _check_areas(areas: object) -> tuple[float, ...]:
    """``areas`` as a tuple of fractions in (0, 1): a number, a sequence, or the text
    ``"0.05,0.1"`` (what ``--option areas=0.05,0.1`` passes)."""
    if isinstance(areas, str):
        try:
            areas = [float(part) for part in areas.split(",") if part.strip()]
        except ValueError:
            raise MethodError(
                f"areas must be numbers between 0 and 1 separated by commas, got {areas!r}"
            ) from None
    values = tuple(areas) if isinstance(areas, (tuple, list)) else (areas,)
    if not values:
        raise MethodError("areas must name at least one area, e.g. areas=0.1")
    return tuple(_fraction("each area", a) for a in values)


@register_method("extremal_perturbation", "perturbation", slow=True)
def extremal_perturbation(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    areas: float | tuple[float, ...] = 0.1,
    steps: int = 300,
    stride: int = 8,
    smoothing: float = 1.0,
    blur_sigma: float = 10.0,
    area_weight: float = 300.0,
    learning_rate: float = 0.05,
    batch_size: int | None = None,
    progress: bool = False,
) -> MethodResult:
    """Extremal perturbations (Fong et al. 2019): the smooth mask of a given area that keeps
    the target score highest when the rest of the image is blurred (preservation game).

    For each area ``a`` in ``areas`` it minimises ``-S(pi(x; m)) + lambda * mean((sort(m) -
    r_a)^2)`` over masks ``m`` (coarse parameters on a grid of ``stride`` pixels, smoothed by
    ``smoothing`` cells and upsampled, see `smooth_mask`), ``pi`` the blur perturbation of
    the paper with ``sigma_max = blur_sigma`` pixels (`blur_perturbation`), ``r_a`` the
    sorted mask of area ``a`` and ``lambda = area_weight``; Adam (``learning_rate``) for
    ``steps`` steps from ``m = 0.5`` (no random draws: the result is deterministic),
    parameters clamped to [0, 1] after each step. The map is the sum of the masks of all
    areas, in ``[0, len(areas)]``. Gradients flow to the mask only, through the model's
    forward (TorchScript models run too; parameters' ``.grad`` is never touched).
    ``batch_size``: masks optimised together (default: see `chunk_size`; fewer on images
    larger than 224 pixels). Each mask's optimisation is independent of the others, so in
    float64 the batch size never changes results; in float32 the rounding of a different
    batch shape can flip the sign of a near-zero gradient, which Adam turns into a full step
    (a few percent of the map).
    Returns ``Tensor[N, H, W]``.
    """
    areas = _check_areas(areas)
    steps, stride = positive_int("steps", steps), positive_int("stride", stride)
    if not smoothing >= 0 or not blur_sigma > 0 or not area_weight >= 0 or not learning_rate > 0:
        raise MethodError(
            "smoothing and area_weight must be >= 0, blur_sigma and learning_rate > 0"
        )
    require_autograd("extremal_perturbation")
    prepared = prepare(model, images, target)
    x = prepared.images
    rows, size = len(x), tuple(x.shape[2:])
    grid = (math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    area_of, row_of = work_items(len(areas), rows)
    maps = torch.zeros(rows, *size, dtype=full_precision(x[:0]).dtype, device=x.device)
    with borrowed_model(prepared.module):
        output, pinned = clean_pass(prepared)
        reference = _area_targets(areas, size[0] * size[1], maps)
        per_pass = chunk_size(batch_size, rows, size[0] * size[1])
        chunks = list(in_chunks(len(row_of), per_pass))
        bar = progress_bar(chunks, disable=not progress, desc="extremal perturbation")
        for chunk in bar:
            row, area = row_of[chunk], area_of[chunk]
            masks = _optimise_masks(
                prepared.module,
                x[row.to(x.device)],
                pinned.copies(row, output),
                reference[area.to(x.device)],
                _Settings(grid, steps, smoothing, blur_sigma, area_weight, learning_rate),
            )
            maps.index_add_(0, row.to(x.device), masks)
    return MethodResult(maps, output)


@dataclass(frozen=True)
class _Settings:
    """The optimisation settings of `extremal_perturbation` for `_optimise_masks`."""

    grid: tuple[int, int]
    steps: int
    smoothing: float
    blur_sigma: float
    area_weight: float
    learning_rate: float


PYRAMID_LEVELS = 8


def _optimise_masks(module, images, copies, reference, settings: _Settings) -> torch.Tensor:
    """The optimised masks ``Tensor[n, H, W]`` (float32 or wider) of ``images`` ``Tensor[n,
    C, H, W]``, one per row of ``reference`` ``Tensor[n, H * W]`` (its sorted target mask)."""
    size = tuple(images.shape[2:])
    work = full_precision(images[:0]).dtype
    pyramid = blur_pyramid(images.detach(), settings.blur_sigma, PYRAMID_LEVELS)
    parameters = torch.full(
        (len(images), 1, *settings.grid), 0.5, dtype=work, device=images.device
    ).requires_grad_(True)
    optimizer = torch.optim.Adam([parameters], lr=settings.learning_rate)
    with torch.enable_grad():
        for _ in range(settings.steps):
            mask = smooth_mask(parameters, size, settings.smoothing)
            perturbed = blur_perturbation(pyramid, mask.to(images.dtype))
            scores = full_precision(copies.score(module(perturbed)))
            ranked = mask.flatten(1).sort(dim=1).values
            area_loss = (ranked - reference).square().mean(dim=1)
            loss = (settings.area_weight * area_loss - scores).sum()
            (gradient,) = torch.autograd.grad(loss, parameters)
            parameters.grad = gradient
            optimizer.step()
            with torch.no_grad():
                parameters.clamp_(0, 1)
    with torch.no_grad():
        return smooth_mask(parameters, size, settings.smoothing)[:, 0]
