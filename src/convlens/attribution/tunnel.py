"""Noise tunnels: any map method evaluated on noisy copies of the input, maps aggregated.

For ``n`` copies ``x + sigma * e_k`` (``e_k ~ N(0, I)``, ``sigma = noise * (max(x) -
min(x))`` per image) with maps ``M_k``:

- ``smoothgrad`` (Smilkov et al. 2017): ``mean_k M_k``;
- ``smoothgrad_sq`` (Hooker et al. 2019): ``mean_k M_k^2``;
- ``vargrad`` (Adebayo et al. 2018): ``mean_k M_k^2 - (mean_k M_k)^2``, the variance.

The explained class is pinned on the clean input, the draws ``e_k`` come from ``seed`` and
are the same for every image (a batch equals single-image calls), and the copies run in
chunks that never change results. Every method of the families in ``TUNNEL_FAMILIES`` gets
the options ``noise_tunnel``, ``n_samples``, ``noise`` and ``seed`` at registration
(`with_noise_tunnel`), unless it has options of those names itself (``smoothgrad``,
``gradient_shap``); ``smoothgrad`` is this tunnel over ``saliency``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
from torch import nn

from convlens.attribution.common import (
    chunk_size,
    clean_pass,
    positive_int,
    prepare,
    work_items,
)
from convlens.attribution.result import MethodResult
from convlens.data.progress import progress_bar
from convlens.errors import MethodError
from convlens.layers.borrow import borrowed_model
from convlens.models.devices import cpu_pass_rows, cpu_passes
from convlens.models.loading import LoadedModel

NOISE_TUNNELS = ("smoothgrad", "smoothgrad_sq", "vargrad")
TUNNEL_FAMILIES = ("gradient", "rule")
TUNNEL_DEFAULTS = {"noise_tunnel": None, "n_samples": 25, "noise": 0.15, "seed": 0}


def noise_draws(
    images: torch.Tensor, n_samples: int, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit noise ``Tensor[n, C, H, W]`` (the same draws for every row, drawn one sample at
    a time so chunking cannot change them) and per-row sigma ``Tensor[N]`` (``noise`` times
    the row's value range). The draws are made in float32 whatever the input dtype, then
    cast, so a seed gives the same noise for float64, float32 and half inputs."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    shape = images.shape[1:]
    unit = torch.stack(
        [
            torch.randn(shape, generator=generator, device=images.device, dtype=torch.float32)
            for _ in range(n_samples)
        ]
    ).to(images.dtype)
    flat = images.flatten(1)
    sigma = noise * (flat.amax(dim=1) - flat.amin(dim=1))
    return unit, sigma


def check_noise(noise: object) -> float:
    """``noise`` if it is a fraction of the input range >= 0, else `MethodError`."""
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise MethodError(f"noise is a fraction of the input range >= 0, got {noise!r}")
    return float(noise)


def run_noise_tunnel(
    compute: Callable[..., MethodResult],
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object,
    *,
    kind: str,
    n_samples: int,
    noise: float,
    seed: int,
    batch_size: int | None = None,
    progress: bool = False,
    **options,
) -> MethodResult:
    """``compute`` (a method returning a `MethodResult`, called with ``**options``) through
    the noise tunnel ``kind`` (see the module docstring). ``batch_size``: noisy copies per
    call (default: see `chunk_size`, and on the CPU at most `cpu_pass_rows`; never changes
    results). Per-row tensor extras are averaged over the copies. Returns maps ``Tensor[N,
    H, W]`` and the clean output."""
    if kind not in NOISE_TUNNELS:
        raise MethodError(
            f"unknown noise_tunnel {kind!r}; use one of {', '.join(NOISE_TUNNELS)} (or none)"
        )
    n_samples = positive_int("n_samples", n_samples)
    noise = check_noise(noise)
    prepared = prepare(model, images, target)
    rows = len(prepared.images)
    with borrowed_model(prepared.module):
        clean, pinned = clean_pass(prepared)
        unit, sigma = noise_draws(prepared.images, n_samples, noise, seed)
        sample_of, row_of = work_items(n_samples, rows)
        sums: dict[str, torch.Tensor] = {}
        size = chunk_size(batch_size, rows)
        if batch_size is None:  # the copies are scored by a callable: no later split
            size = min(size, cpu_pass_rows(prepared.images))
        chunks = cpu_passes(row_of, size)
        for chunk in progress_bar(chunks, disable=not progress, desc=kind, leave=False):
            row, sample = row_of[chunk], sample_of[chunk]
            noisy = prepared.images[row] + sigma[row, None, None, None] * unit[sample]
            result = compute(model, noisy, pinned.copies(row, clean).score, **options)
            _accumulate(sums, row, result, square=kind != "smoothgrad", rows=rows)
    return MethodResult(_aggregate(kind, sums, n_samples), clean, _mean_extras(sums, n_samples))


def _accumulate(
    sums: dict[str, torch.Tensor], row: torch.Tensor, result: MethodResult, square: bool, rows: int
) -> None:
    """Add one chunk's maps (and squared maps, per-row extras) into ``sums`` by row."""
    parts = {"maps": result.maps} | ({"squares": result.maps.square()} if square else {})
    parts |= {
        f"extra:{key}": value
        for key, value in result.extras.items()
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and len(value) == len(row)
    }
    for key, value in parts.items():
        if key not in sums:
            sums[key] = value.new_zeros((rows, *value.shape[1:]))
        sums[key].index_add_(0, row.to(value.device), value)


def _aggregate(kind: str, sums: dict[str, torch.Tensor], n_samples: int) -> torch.Tensor:
    mean = sums["maps"] / n_samples
    if kind == "smoothgrad":
        return mean
    mean_square = sums["squares"] / n_samples
    if kind == "smoothgrad_sq":
        return mean_square
    return (mean_square - mean.square()).clamp_min(0)


def _mean_extras(sums: dict[str, torch.Tensor], n_samples: int) -> dict:
    prefix = "extra:"
    return {k[len(prefix) :]: v / n_samples for k, v in sums.items() if k.startswith(prefix)}


def takes_noise_tunnel(family: str, keywords: tuple[str, ...]) -> bool:
    """Whether a method of ``family`` with these keyword options gets the tunnel options."""
    return family in TUNNEL_FAMILIES and not set(keywords) & set(TUNNEL_DEFAULTS)


def with_noise_tunnel(compute: Callable[..., MethodResult]) -> Callable[..., MethodResult]:
    """``compute`` with the keyword options ``noise_tunnel=None`` (or one of
    ``NOISE_TUNNELS``), ``n_samples=25``, ``noise=0.15`` and ``seed=0`` added; with
    ``noise_tunnel=None`` the call is ``compute`` itself and the other three are unused."""

    own = set(inspect.signature(compute).parameters) & {"batch_size", "progress"}

    @functools.wraps(compute)
    def tunnelled(model, images, target=None, **options):  # noqa: ANN001
        tunnel = {k: options.pop(k, default) for k, default in TUNNEL_DEFAULTS.items()}
        kind = tunnel.pop("noise_tunnel")
        if kind is None:
            return compute(model, images, target, **options)
        # A method's own batch_size / progress (Integrated Gradients' steps per pass) stay
        # its own; the tunnel then chunks its noisy copies by its default.
        if own:
            inner = functools.partial(compute, **{k: options.pop(k) for k in own if k in options})
            return run_noise_tunnel(inner, model, images, target, kind=kind, **tunnel, **options)
        return run_noise_tunnel(compute, model, images, target, kind=kind, **tunnel, **options)

    signature = inspect.signature(compute)
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
        for name, default in TUNNEL_DEFAULTS.items()
    ]
    tunnelled.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *added])
    return tunnelled
