"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) as a method of
the registry: the rules and canonizers live in `convlens.layers.relevance`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from convlens.attribution.common import prepare
from convlens.attribution.registry import MethodResult, register_method
from convlens.data.preprocess import IMAGENET_PREPROCESS
from convlens.errors import MethodError
from convlens.layers.borrow import borrowed_model, require_autograd
from convlens.layers.find import LayerSpec, resolve_layer
from convlens.layers.relevance import (
    Composite,
    keep_channels,
    relevance_rules,
    resolve_composite,
)
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance of each input element ``Tensor[N, C, H, W]`` and the model output.

    The output relevance is ``output * d score / d output`` (the explained logit at its
    class for a class target, ``z_a`` and ``-z_b`` for a contrast), so with conserving rules
    the relevance sums to the explained score less what biases absorb."""
    require_autograd("lrp")
    inputs = images.detach().clone().requires_grad_(True)
    with borrowed_model(module), torch.enable_grad():
        with relevance_rules(module, composite, bounds) as session:
            output = module(inputs)
        session.require_layers()
        scores = targets.score(output)
        (seed,) = torch.autograd.grad(scores.sum(), output, retain_graph=True)
        (relevance,) = torch.autograd.grad(output, inputs, seed * output.detach())
    return relevance, output.detach()


@register_method("lrp", "rule")
def lrp(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    composite: str | Composite = "epsilon_plus_flat",
) -> MethodResult:
    """Layer-wise relevance propagation: the target score split over the pixels, layer by layer.

    ``composite``: the rules per layer, "epsilon_plus_flat" (default), "epsilon_gamma_box",
    "epsilon_alpha2_beta1_flat", "epsilon", or a ``convlens.Composite``. BatchNorm is folded
    into the layer before it, residual sums split by contribution, gates held constant.
    Map ``M[n, i, j] = sum_c R[n, c, i, j]`` (signed), ``Tensor[N, H, W]``.
    """
    chosen = resolve_composite(composite)
    prepared = prepare(model, images, target)
    bounds = input_bounds(model)
    relevance, output = input_relevance(
        prepared.module, prepared.images, prepared.targets, chosen, bounds
    )
    return MethodResult(relevance.sum(dim=1), output)


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
    with keep_channels(layer_module, kept):
        relevance, _ = input_relevance(prepared.module, batch, targets, chosen, input_bounds(model))
    return relevance.sum(dim=1).view(n, k, *relevance.shape[2:])
