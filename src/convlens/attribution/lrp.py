"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) as a method of
the registry: the rules and canonizers live in `convlens.layers.relevance`."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn

from convlens.attribution.common import (
    SharedRows,
    in_cpu_passes,
    per_row_backward,
    positive_int,
    prepare,
)
from convlens.attribution.registry import MethodResult, register_method
from convlens.data.preprocess import IMAGENET_PREPROCESS
from convlens.errors import MethodError
from convlens.layers.borrow import borrowed_model, require_autograd
from convlens.layers.capture import capture
from convlens.layers.find import LayerSpec, resolve_layer
from convlens.layers.relevance import (
    Composite,
    keep_channels,
    relevance_rules,
    resolve_composite,
)
from convlens.layers.tokens import connected_grid
from convlens.maps import channel_peaks
from convlens.models.loading import LoadedModel
from convlens.targets import Targets


def input_bounds(model: nn.Module | LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The model-input range of pixels in [0, 1]: ``((0 - mean) / std, (1 - mean) / std)``,
    each ``Tensor[1, 3, 1, 1]``, from the model's preprocessing (ImageNet's for a bare
    module). The z^B rule's bounds."""
    preprocess = model.preprocess if isinstance(model, LoadedModel) else IMAGENET_PREPROCESS
    mean = torch.tensor(preprocess.mean).view(1, -1, 1, 1)
    std = torch.tensor(preprocess.std).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def input_relevance(
    module: nn.Module,
    images: torch.Tensor,
    targets: Targets,
    composite: str | Composite,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    share_rows: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance of each input element ``Tensor[N, C, H, W]`` and the model output.

    The output relevance is ``output * d score / d output`` (the explained logit at its
    class for a class target, ``z_a`` and ``-z_b`` for a contrast), so with conserving rules
    the relevance sums to the explained score less what biases absorb. ``share_rows``: see
    `propagate_relevance`."""
    relevance, _, output = propagate_relevance(
        module, images, targets, composite, bounds, share_rows=share_rows
    )
    return relevance, output


def propagate_relevance(
    module: nn.Module,
    images: torch.Tensor,
    targets: Targets,
    composite: str | Composite,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    layer: LayerSpec | None = None,
    share_rows: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """`input_relevance`, and in the same backward pass the relevance arriving at the
    output of ``layer`` (``Tensor[N, K, h, w]``, in the layer's grid as `capture` records
    it; None without a layer): ``(input relevance, layer relevance, output)``.

    The layer's output reaches the layers after it as a copy (`convlens.layers.capture`),
    so a BatchNorm right after ``layer`` is no longer folded into it: take an activation
    (a ReLU) or the BatchNorm itself, then the input relevance equals plain LRP's.
    ``share_rows``: rows holding the same image share the forward pass (`SharedRows`);
    False where the backward pass treats rows differently (`concept_relevance`)."""
    require_autograd("lrp")
    # rows holding the same image share the forward pass; one backward pass per row of the
    # largest group (`SharedRows`)
    shared = SharedRows.of(images.detach())
    # (not with a layer: it may run per cell)
    if share_rows and shared.pays_per_row_backward() and layer is None:
        return _propagate(module, images, targets, composite, bounds, layer, shared)

    def one_pass(x: torch.Tensor, t: Targets) -> tuple:
        found = _propagate(module, x, t, composite, bounds, layer, None)
        return found if found[1] is not None else (found[0], found[2])

    found = in_cpu_passes(images, targets, one_pass)  # several CPU passes for a large batch
    return (found[0], found[1], found[2]) if len(found) == 3 else (found[0], None, found[1])


def _propagate(
    module: nn.Module,
    images: torch.Tensor,
    targets: Targets,
    composite: str | Composite,
    bounds: tuple[torch.Tensor, torch.Tensor] | None,
    layer: LayerSpec | None,
    shared: SharedRows | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """`propagate_relevance` in one forward pass: of every row, or with ``shared`` of each
    group's first row (then one backward pass per row of the largest group)."""
    pick = shared.first.to(images.device) if shared is not None else None
    inputs = (images if pick is None else images[pick]).detach().clone().requires_grad_(True)
    with borrowed_model(module), torch.enable_grad():
        # the raw output: a reshaped layer's recorded grid would reach the output through a
        # residual sum of zero, which takes no relevance (its grid is made below)
        watched = (
            capture(module, layer, gradients=True, reshape=None)
            if layer is not None
            else nullcontext()
        )
        with watched as captured, relevance_rules(module, composite, bounds) as session:
            output = module(inputs)
        session.require_layers()
        wrt = (inputs,) if captured is None else (inputs, captured.activation())
        if pick is None:
            found = _relevance(output, targets.score(output).sum(), wrt, retain=False)
        else:

            def relevance(score: torch.Tensor, retain: bool) -> tuple:
                return _relevance(output, score, wrt, retain=retain)

            found = tuple(per_row_backward(output, targets, shared, relevance))
            output = output[shared.group.to(output.device)]
    at_layer = None
    if captured is not None:
        at_layer = found[1]
        if at_layer is None:  # the output never reached the explained score
            at_layer = torch.zeros_like(captured.activation())
        at_layer = connected_grid(module, captured.names[0], at_layer)  # the layer's grid
    return found[0], at_layer, output.detach()


def _relevance(
    output: torch.Tensor, score: torch.Tensor, wrt: tuple, retain: bool
) -> tuple[torch.Tensor | None, ...]:
    """The relevance of ``score`` (a sum of target scores) at each tensor of ``wrt``: the
    backward pass of the rules from ``d score / d output * output``."""
    (seed,) = torch.autograd.grad(score, output, retain_graph=True)
    return torch.autograd.grad(
        output, wrt, seed * output.detach(), allow_unused=True, retain_graph=retain
    )


@register_method("lrp", "rule")
def lrp(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    composite: str | Composite = "epsilon_plus_flat",
    relevance_layer: LayerSpec | None = None,
    relevance_pool: str = "sum",
    relevance_window: int = 3,
) -> MethodResult:
    """Layer-wise relevance propagation: the target score split over the pixels, layer by layer.

    ``composite``: the rules per layer, "epsilon_plus_flat" (default), "epsilon_gamma_box",
    "epsilon_alpha2_beta1_flat", "epsilon", or a ``convlens.Composite``. BatchNorm is folded
    into the layer before it, residual sums split by contribution, gates held constant.
    Map ``M[n, i, j] = sum_c R[n, c, i, j]`` (signed), ``Tensor[N, H, W]``.

    ``relevance_layer``: a layer (an activation, see `propagate_relevance`) whose relevance
    per channel, summed over space, comes back too, from the same backward pass: extras
    ``{"channel_relevance": Tensor[N, K]}`` for a layer of K channels (signed; the
    position-free concept relevances that `convlens.spray` clusters with
    ``features="channels"``). The public function then returns ``(maps, extras)``.

    ``relevance_pool``: how a channel's relevance map becomes one number: ``"sum"`` (the
    default, above) or ``"peak"``, the largest mean absolute relevance over the
    ``relevance_window x relevance_window`` windows of the layer's map
    (`convlens.maps.channel_peaks`; what `convlens.spray` clusters with
    ``features="peaks"``: a small, strong pattern is not averaged away by the sum).
    """
    if relevance_pool not in ("sum", "peak"):
        raise MethodError(f"relevance_pool must be 'sum' or 'peak', got {relevance_pool!r}")
    positive_int("relevance_window", relevance_window)
    chosen = resolve_composite(composite)
    prepared = prepare(model, images, target)
    bounds = input_bounds(model)
    relevance, at_layer, output = propagate_relevance(
        prepared.module, prepared.images, prepared.targets, chosen, bounds, relevance_layer
    )
    extras = {}
    if at_layer is not None:
        if at_layer.dim() < 2:
            raise MethodError(
                f"relevance_layer {relevance_layer!r} gives {tuple(at_layer.shape)}; choose a "
                "layer whose output is Tensor[B, C, ...] (see 'convlens layers')"
            )
        extras["channel_relevance"] = pool_channels(
            at_layer.detach(), relevance_pool, relevance_window
        )
    return MethodResult(relevance.sum(dim=1), output, extras)


def pool_channels(relevance: torch.Tensor, pool: str, window: int) -> torch.Tensor:
    """``Tensor[N, K, ...]`` layer relevance to ``Tensor[N, K]``: summed over space
    (``pool="sum"``) or each channel's largest windowed mean absolute relevance
    (``"peak"``, windows of ``window x window`` positions)."""
    if relevance.dim() == 2:
        return relevance.abs() if pool == "peak" else relevance
    if pool == "sum":
        return relevance.flatten(2).sum(2)
    return channel_peaks(relevance, window)


def concept_relevance(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    layer: LayerSpec,
    channels: Sequence[int],
    composite: str | Composite = "epsilon_plus_flat",
) -> torch.Tensor:
    """Concept relevance (CRP, Achtibat et al. 2023): the LRP map of ``target`` restricted to
    the relevance that flows through channel ``channels[k]`` of ``layer``, for every channel
    in one batched forward and backward pass. Returns ``Tensor[N, K, H, W]`` (signed
    channel sums of the input relevance); summed over a layer's channels it is the LRP map.
    """
    chosen = resolve_composite(composite)
    prepared = prepare(model, images, target)
    _, layer_module = resolve_layer(prepared.module, layer)
    if not channels:
        raise MethodError("channels: give at least one channel index of the layer")
    n, k = len(prepared.images), len(channels)
    rows = torch.arange(n).repeat_interleave(k)
    batch = prepared.images.repeat_interleave(k, dim=0)
    if prepared.targets.fn is None:
        targets = prepared.targets.subset(rows)
    else:
        with torch.no_grad(), borrowed_model(prepared.module):
            clean = prepared.module(prepared.images)
        targets = prepared.targets.copies(rows, clean)
    kept = torch.tensor([int(c) for c in channels]).repeat(n)
    with keep_channels(prepared.module, layer_module, kept):
        # the rows of one image keep different channels in the backward: no shared rows
        relevance, _ = input_relevance(
            prepared.module, batch, targets, chosen, input_bounds(model), share_rows=False
        )
    return relevance.sum(dim=1).view(n, k, *relevance.shape[2:])
