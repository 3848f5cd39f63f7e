"""Deconvnet and guided backpropagation: the input gradient with a backward rule at every
rectifier (see `convlens.layers.rules` for the rules and how they borrow the model)."""

from __future__ import annotations

import torch
from torch import nn

from convlens.attribution.common import input_gradient, prepare, reduce_channels
from convlens.attribution.registry import MethodResult, register_method
from convlens.layers.borrow import borrowed_model
from convlens.layers.rules import backward_rule
from convlens.models.loading import LoadedModel

_RULE_METHODS = {"guided": "guided backprop", "deconvnet": "deconvnet"}


def rule_gradient(
    model: nn.Module | LoadedModel, images: torch.Tensor, target: object, rule: str
) -> torch.Tensor:
    """Input gradient ``Tensor[N, C, H, W]`` of each row's target score under ``rule``.
    Raises `MethodError` when the model evaluated no rectifier (the rule changed nothing)."""
    return _rule_pass(model, images, target, rule)[0]


def _rule_pass(
    model: nn.Module | LoadedModel, images: torch.Tensor, target: object, rule: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rule_gradient` and the model output of its forward pass (the rules change only the
    backward pass, so it is the plain output on the clean rows)."""
    prepared = prepare(model, images, target)
    with borrowed_model(prepared.module), backward_rule(prepared.module, rule) as session:
        gradient, output = input_gradient(prepared.module, prepared.images, prepared.targets)
    session.require_rectifiers(_RULE_METHODS[rule])
    return gradient, output


@register_method("guided_backprop", "rule")
def guided_backprop(
    model: nn.Module | LoadedModel, images: torch.Tensor, target: object = None
) -> MethodResult:
    """Guided backpropagation: input gradient passing only positive gradients through
    active rectifiers; map ``M[n, i, j] = max_c |R[n, c, i, j]|`` as ``Tensor[N, H, W]``."""
    gradient, output = _rule_pass(model, images, target, "guided")
    return MethodResult(reduce_channels(gradient, "max_abs"), output, gradient=gradient.detach())


@register_method("deconvnet", "rule")
def deconvnet(
    model: nn.Module | LoadedModel, images: torch.Tensor, target: object = None
) -> MethodResult:
    """Deconvnet: input gradient with every rectifier passing only positive gradients
    (its forward input ignored); map ``M[n, i, j] = max_c |R[n, c, i, j]|``, ``Tensor[N, H, W]``."""
    gradient, output = _rule_pass(model, images, target, "deconvnet")
    return MethodResult(reduce_channels(gradient, "max_abs"), output, gradient=gradient.detach())
