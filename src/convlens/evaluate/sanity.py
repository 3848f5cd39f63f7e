"""Sanity checks for saliency maps (Adebayo et al. 2018): cascading model-parameter
randomisation.

Starting from the logits, the parameters of one layer after another are re-drawn at
random, cumulatively (step ``s`` has layers ``0..s`` of the top-down order randomised),
and the map is recomputed each step. A map that stays similar to the original after the
weights are gone cannot be explaining what the network learned. Similarity is measured on
absolute values by default (``absolute=True``; the sign of gradient maps flips freely under
randomisation): Spearman rank correlation of the pixel values, and SSIM of the maps
min-max normalised to [0, 1]. A pair with a constant map (e.g. a Grad-CAM that is zero
everywhere once the weights are random) has no similarity: NaN, never a number that could
pass for "changed completely".

All work happens on a deep copy of the model: the caller's model is never modified.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import nn

from convlens.errors import LayerError, MetricError
from convlens.evaluate.scoring import pinned_targets_and_rows
from convlens.layers.borrow import borrowed_model
from convlens.layers.find import LayerSpec, resolve_layer
from convlens.localize.masks import check_maps, constant_maps
from convlens.maps import normalize_maps
from convlens.models.loading import LoadedModel, as_module
from convlens.targets import Contrast, Targets

MapFn = Callable[..., torch.Tensor]
SIMILARITIES = ("spearman", "ssim")


@dataclass(frozen=True)
class SanityResult:
    """Similarity of each step's maps to the original maps.

    ``layers[s]``: the layer (or comma-joined group) randomised at step ``s`` (steps are
    cumulative, top-down). ``spearman``/``ssim``: ``Tensor[S, N]`` (NaN for a similarity
    not asked for, and where the original or the step's map is constant). ``original``:
    ``Tensor[N, H, W]``; ``maps``: ``Tensor[S, N, H, W]`` when ``keep_maps=True``, else
    None. ``absolute``: whether ``|map|`` was compared.
    """

    layers: list[str]
    spearman: torch.Tensor
    ssim: torch.Tensor
    original: torch.Tensor
    maps: torch.Tensor | None
    absolute: bool

    def final(self, similarity: str = "spearman") -> torch.Tensor:
        """``Tensor[N]``: similarity after the last (fullest) randomisation step (NaN where
        a map is constant)."""
        if similarity not in SIMILARITIES:
            raise MetricError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        values = self.spearman if similarity == "spearman" else self.ssim
        return values[-1]


def parametrised_layers(model: nn.Module | LoadedModel, images: torch.Tensor) -> list[str]:
    """Names of the modules that hold parameters of their own, top-down: in reverse order
    of their first call in a forward pass on ``images`` (logits first). Modules the forward
    pass never calls are left out. The model is borrowed (hooks removed, flags restored)."""
    module = as_module(model)
    owners = {
        name: layer
        for name, layer in module.named_modules()
        if any(True for _ in layer.parameters(recurse=False))
    }
    called: list[str] = []
    handles = []

    def record(name: str):
        def hook(*_):
            if name not in called:
                called.append(name)

        return hook

    try:
        for name, layer in owners.items():
            handles.append(layer.register_forward_pre_hook(record(name)))
        with borrowed_model(module), torch.no_grad():
            module(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    return called[::-1]


def randomize_layer(layer: nn.Module) -> None:
    """Re-draw the parameters of ``layer`` and its descendants in place (buffers such as
    BatchNorm running statistics are kept): convolutions and linear layers get PyTorch's
    default initialisation (``reset_parameters``); any other parameter ``p`` becomes
    ``mean(p) + s * N(0, 1)`` with ``s`` its standard deviation (``|mean|`` or 1 when
    that is 0, so a BatchNorm scale of all ones is randomised too). Uses the global RNG."""
    for sub in layer.modules():
        own = list(sub.parameters(recurse=False))
        if not own:
            continue
        if isinstance(sub, (nn.modules.conv._ConvNd, nn.Linear)):
            sub.reset_parameters()
            continue
        with torch.no_grad():
            for p in own:
                mean = p.mean()
                spread = p.std() if p.numel() > 1 else torch.zeros(())
                if float(spread) == 0:
                    spread = mean.abs() if float(mean) != 0 else torch.ones(())
                p.copy_(mean + spread * torch.randn_like(p))


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
    """Both map stacks checked (`check_maps`: finite ``Tensor[N, H, W]``) and of one shape,
    on the CPU, and per pair whether a similarity is undefined (either map is constant)."""
    a, b = check_maps(a, "maps a"), check_maps(b, "maps b")
    if a.shape != b.shape:
        raise MetricError(
            f"maps a {tuple(a.shape)} and maps b {tuple(b.shape)} differ in shape; compare "
            "the maps of the same images at the same resolution, one pair per image"
        )
    a, b = a.cpu(), b.cpu()
    return a, b, (constant_maps(a) | constant_maps(b)).tolist()


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a finite 1-D array, ties getting their average rank: the same as
    ``scipy.stats.rankdata`` (``method="average"``), about 2.5x faster on a 224 x 224 map
    because the order within a run of ties does not matter, so NumPy's default (vectorised,
    unstable) sort serves where rankdata sorts stably."""
    order = np.argsort(values)
    ordered = values[order]
    starts = np.empty(len(values), dtype=bool)  # where each run of equal values begins
    starts[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    run = np.cumsum(starts) - 1
    edges = np.append(np.flatnonzero(starts), len(values))
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = (0.5 * (edges[:-1] + edges[1:] + 1))[run]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps ``Tensor[N, H, W]``: ``Tensor[N]`` in
    [-1, 1], the Pearson correlation of the pixel ranks (ties get their average rank).

    A constant map (every pixel equal, e.g. an all-zero Grad-CAM) has no ranking, so a pair
    with a constant map has no correlation: NaN (use ``nanmean`` and count the NaN).
    Maps of different shapes, NaN or infinite values raise `MetricError`."""
    a, b, undefined = _check_pair(a, b)
    values = []
    pairs = zip(a.flatten(1).double().numpy(), b.flatten(1).double().numpy(), strict=True)
    for (x, y), skip in zip(pairs, undefined, strict=True):
        if skip:
            values.append(float("nan"))
            continue
        rx, ry = average_ranks(x), average_ranks(y)
        rx, ry = rx - rx.mean(), ry - ry.mean()
        values.append(float((rx * ry).sum() / np.sqrt((rx**2).sum() * (ry**2).sum())))
    return torch.tensor(values, dtype=torch.float32)


def mean_defined(values: torch.Tensor) -> tuple[float | None, int]:
    """``(mean, undefined)``: the mean of the similarities that are defined (not NaN; None
    when none is) and how many are NaN (pairs with a constant map)."""
    undefined = torch.isnan(values)
    mean = float(values[~undefined].mean()) if bool((~undefined).any()) else None
    return mean, int(undefined.sum())


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity (``skimage.metrics.structural_similarity``, uniform 7x7
    window or the largest odd window that fits) of each pair of maps ``Tensor[N, H, W]``,
    each min-max normalised to [0, 1] first (``data_range=1``): ``Tensor[N]`` in [-1, 1].

    As for `spearman`, a pair with a constant map (no structure once normalised) is NaN;
    maps of different shapes, NaN or infinite values raise `MetricError`."""
    a, b, undefined = _check_pair(a, b)
    size = min(a.shape[-2:])
    window = min(7, size if size % 2 else size - 1)
    if window < 3:
        raise MetricError(f"SSIM needs maps of at least 3x3 pixels, got {tuple(a.shape[-2:])}")
    a, b = normalize_maps(a).double().numpy(), normalize_maps(b).double().numpy()
    values = [
        float("nan") if skip else structural_similarity(x, y, data_range=1.0, win_size=window)
        for x, y, skip in zip(a, b, undefined, strict=True)
    ]
    return torch.tensor(values, dtype=torch.float32)


def _target_form(targets: Targets) -> object:
    """A target that `explain` accepts and that names the pinned class ids."""
    if targets.fn is not None:
        return targets.fn
    if targets.negative is not None:
        return Contrast(targets.positive.ids, targets.negative.ids)
    return targets.positive.ids


def _map_function(method: str | MapFn, layer: LayerSpec | None, options: dict) -> MapFn:
    if callable(method):
        return method
    if not isinstance(method, str):
        raise MetricError("method must be a registered method name or a callable")
    from convlens.attribution.explain import explain

    def compute(model, images, target):
        return explain(model, images, method, target=target, layer=layer, **options).maps

    return compute


def _steps(module: nn.Module, images: torch.Tensor, layers) -> list[list[str]]:
    if layers is None:
        return [[name] for name in parametrised_layers(module, images)]
    steps = []
    for entry in layers:
        group = entry if isinstance(entry, (list, tuple)) else [entry]
        steps.append([resolve_layer(module, spec)[0] for spec in group])
    if not steps:
        raise LayerError("layers is empty; pass None for every parametrised layer")
    return steps


def cascading_randomization(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    method: str | MapFn,
    target: object = None,
    layers: Sequence[LayerSpec | Sequence[LayerSpec]] | None = None,
    seed: int = 0,
    similarity: Sequence[str] = SIMILARITIES,
    absolute: bool = True,
    keep_maps: bool = False,
    layer: LayerSpec | None = None,
    **options,
) -> SanityResult:
    """Cascading model-parameter randomisation (Adebayo et al. 2018, "Sanity Checks for
    Saliency Maps").

    Args:
        model: a LoadedModel or nn.Module; only a deep copy is randomised.
        images: ``Tensor[B, C, H, W]``, preprocessed.
        method: a registered method name (maps via `convlens.explain`, with ``layer`` and
            ``options``) or a callable ``f(model, images, target) -> Tensor[N, H, W]``.
        target: any target form; classes are resolved once on the original model and kept
            for every step.
        layers: the steps, top-down; each entry a layer (name, index, module of ``model``)
            or a group randomised together (a container name randomises all it holds).
            Default: every parametrised layer, logits first (`parametrised_layers`).
        seed: seeds the re-drawn parameters (the global RNG state is left as it was).
        similarity: any of ``"spearman"``, ``"ssim"``.
        absolute: compare ``|map|`` (default, as Adebayo et al.'s absolute-value maps).

    Returns a `SanityResult`, one row per step.
    """
    unknown = set(similarity) - set(SIMILARITIES)
    if unknown:
        raise MetricError(f"unknown similarity {sorted(unknown)}; choose from {SIMILARITIES}")
    module = as_module(model)
    steps = _steps(module, images, layers)
    targets, rows = pinned_targets_and_rows(model, images, target)
    target_form = _target_form(targets)
    compute = _map_function(method, layer, options)
    work = copy.deepcopy(module)
    work_model = dataclasses.replace(model, module=work) if isinstance(model, LoadedModel) else work
    by_name = dict(work.named_modules())

    def maps_of() -> torch.Tensor:
        maps = check_maps(compute(work_model, rows, target_form)).cpu()
        return maps.abs() if absolute else maps

    original = maps_of()
    spearmans, ssims, kept = [], [], []
    nan = torch.full((len(original),), float("nan"))
    devices = [p.device for p in work.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for group in steps:
            for name in group:
                randomize_layer(by_name[name])
            maps = maps_of()
            spearmans.append(spearman(original, maps) if "spearman" in similarity else nan)
            ssims.append(ssim(original, maps) if "ssim" in similarity else nan)
            if keep_maps:
                kept.append(maps)
    return SanityResult(
        layers=[",".join(group) for group in steps],
        spearman=torch.stack(spearmans),
        ssim=torch.stack(ssims),
        original=original,
        maps=torch.stack(kept) if keep_maps else None,
        absolute=absolute,
    )
