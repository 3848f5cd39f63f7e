"""CAM family: class activation maps from one convolutional layer.

Every variant shares one path (`_layer_cam`): check the inputs, resolve the layer (default:
the last spatial layer), capture its activation ``A`` (``Tensor[N, K, h, w]``) and, for
gradient variants, ``G = dY/dA`` from `layer_gradient` (no autograd before the layer; the
backward pass stops there), combine them into a map ``Tensor[N, h, w]``, keep its positive
part and upsample it bilinearly to the input size. A variant only says how it combines
``A`` and ``G`` (the ``_combine_*`` functions below). Maps are raw (not normalised); use
`normalize_maps` for [0, 1]. All variants take any target form, including
``contrast(a, b)`` (contrastive Grad-CAM: ``Y = y_a - y_b``). Each computes a
`MethodResult` (maps and the output of its own forward pass on the clean input);
`register_method` publishes it returning the maps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from convlens.attribution.common import (
    Prepared,
    check_spatial,
    chunk_size,
    fix_ranked_targets,
    in_chunks,
    layer_gradient,
    prepare,
    resolve_cam_layer,
)
from convlens.attribution.registry import MethodResult, register_method
from convlens.data.progress import progress_bar
from convlens.errors import LayerError, TargetError
from convlens.layers.borrow import borrowed_model
from convlens.layers.capture import capture
from convlens.layers.find import LayerSpec
from convlens.maps import full_precision, normalize_maps, resize_maps
from convlens.models.loading import LoadedModel

Model = nn.Module | LoadedModel
Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---- the shared path -------------------------------------------------------------------


def _layer_cam(
    model: Model, images: torch.Tensor, target: object, layer: LayerSpec | None, combine: Combine
) -> MethodResult:
    """``ReLU(combine(A, G))`` upsampled to ``Tensor[N, H, W]``, and the output."""
    prepared = prepare(model, images, target)
    with borrowed_model(prepared.module):
        name = resolve_cam_layer(prepared.module, prepared.images, layer)
        activation, gradient, output = layer_gradient(
            prepared.module, prepared.images, prepared.targets, name
        )
    combined = combine(full_precision(activation), full_precision(gradient))  # no underflow
    return MethodResult(_to_input_size(combined, prepared.images), output)


def _to_input_size(maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Positive part of ``Tensor[N, h, w]``, upsampled to ``images``' ``[H, W]``."""
    return resize_maps(maps.clamp_min(0), tuple(images.shape[-2:]))


def _layer_activation(prepared: Prepared, layer: LayerSpec | None) -> tuple:
    """``(layer name, A: Tensor[N, K, h, w], output)`` from one forward pass without autograd.
    Call inside `borrowed_model`."""
    name = resolve_cam_layer(prepared.module, prepared.images, layer)
    with capture(prepared.module, name) as cap, torch.no_grad():
        output = prepared.module(prepared.images)
    activation = cap.activation(name)
    check_spatial(name, activation)
    return name, activation, output


def _weighted_sum(weights: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """``sum_k w[n, k] * A[n, k]``: ``Tensor[N, K]`` x ``Tensor[N, K, h, w]`` -> ``[N, h, w]``."""
    return torch.einsum("nk,nkhw->nhw", weights, activation)


# ---- how each gradient variant combines A and G ------------------------------------------


def _combine_gradcam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    return _weighted_sum(gradient.mean(dim=(2, 3)), activation)


def _combine_hirescam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    return (gradient * activation).sum(dim=1)


def _combine_xgradcam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    total = activation.sum(dim=(2, 3))
    weights = (gradient * activation).sum(dim=(2, 3)) / torch.where(total == 0, 1, total)
    return _weighted_sum(torch.where(total == 0, 0, weights), activation)


def _combine_layercam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    return (gradient.clamp_min(0) * activation).sum(dim=1)


def _combine_gradcam_pp(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    g2 = gradient.square()
    denominator = 2 * g2 + activation.sum(dim=(2, 3), keepdim=True) * g2 * gradient
    alpha = torch.where(denominator != 0, g2 / torch.where(denominator == 0, 1, denominator), 0)
    return _weighted_sum((alpha * gradient.clamp_min(0)).sum(dim=(2, 3)), activation)


# ---- registered methods ------------------------------------------------------------------


@register_method("gradcam", "cam", uses_layer=True)
def gradcam(
    model: Model, images: torch.Tensor, target: object = None, *, layer: LayerSpec | None = None
) -> MethodResult:
    """Grad-CAM (Selvaraju et al. 2017): gradient-weighted sum of a layer's feature maps.

    ``L = ReLU(sum_k w_k A_k)``, ``w_k = (1 / hw) sum_ij dY/dA_k[i, j]``; with
    ``target=contrast(a, b)`` it is contrastive Grad-CAM (``Y = y_a - y_b``).
    ``images``: ``Tensor[B, C, H, W]``; returns ``Tensor[N, H, W] >= 0`` (raw, upsampled).
    """
    return _layer_cam(model, images, target, layer, _combine_gradcam)


@register_method("gradcam_pp", "cam", uses_layer=True)
def gradcam_pp(
    model: Model, images: torch.Tensor, target: object = None, *, layer: LayerSpec | None = None
) -> MethodResult:
    """Grad-CAM++ (Chattopadhay et al. 2018), closed form with the ``exp(Y)`` score.

    With ``g = dY/dA``: ``alpha_k[i, j] = g^2 / (2 g^2 + sum_ab A_k[a, b] g^3)`` (0 where the
    denominator is 0), ``w_k = sum_ij alpha_k[i, j] ReLU(g_k[i, j])``,
    ``L = ReLU(sum_k w_k A_k)``. (The factor ``exp(Y)`` of the paper's weights is one
    positive number per row and is left out.) Returns ``Tensor[N, H, W] >= 0``.
    """
    return _layer_cam(model, images, target, layer, _combine_gradcam_pp)


@register_method("xgradcam", "cam", uses_layer=True)
def xgradcam(
    model: Model, images: torch.Tensor, target: object = None, *, layer: LayerSpec | None = None
) -> MethodResult:
    """XGrad-CAM (Fu et al. 2020): channel weights normalised by the channel's activation.

    ``w_k = sum_ij A_k[i, j] dY/dA_k[i, j] / sum_ij A_k[i, j]`` (0 for an all-zero
    channel), ``L = ReLU(sum_k w_k A_k)``. Returns ``Tensor[N, H, W] >= 0``.
    """
    return _layer_cam(model, images, target, layer, _combine_xgradcam)


@register_method("layercam", "cam", uses_layer=True)
def layercam(
    model: Model, images: torch.Tensor, target: object = None, *, layer: LayerSpec | None = None
) -> MethodResult:
    """LayerCAM (Jiang et al. 2021): positive gradients as per-position weights.

    ``L[i, j] = ReLU(sum_k ReLU(dY/dA_k[i, j]) A_k[i, j])``. Returns ``Tensor[N, H, W] >= 0``.
    """
    return _layer_cam(model, images, target, layer, _combine_layercam)


@register_method("hirescam", "cam", uses_layer=True)
def hirescam(
    model: Model, images: torch.Tensor, target: object = None, *, layer: LayerSpec | None = None
) -> MethodResult:
    """HiResCAM (Draelos & Carin 2020): element-wise gradient times activation.

    ``L[i, j] = ReLU(sum_k dY/dA_k[i, j] A_k[i, j])`` (Grad-CAM without spatial averaging of
    the gradient). Returns ``Tensor[N, H, W] >= 0``.
    """
    return _layer_cam(model, images, target, layer, _combine_hirescam)


@register_method("cam", "cam", uses_layer=True)
def cam(
    model: Model, images: torch.Tensor, target: object = None, *, layer: LayerSpec | None = None
) -> MethodResult:
    """CAM (Zhou et al. 2016): the target class's head weights times the feature maps.

    For a model ``A -> global average pool -> Linear(W, b)``: ``L = ReLU(sum_k W[c, k] A_k)``
    (``W[a] - W[b]`` for ``contrast(a, b)``). One forward pass, no gradient. The head is
    found and checked numerically (its output must equal ``W mean_ij(A) + b``); other
    models raise `LayerError`. Returns ``Tensor[N, H, W] >= 0``.
    """
    prepared = prepare(model, images, target)
    if prepared.targets.fn is not None:
        raise TargetError(
            "cam needs class targets (ids, names, top-k or contrast), not a callable; "
            "use gradcam for a callable target"
        )
    with borrowed_model(prepared.module):
        name, activation, output = _layer_activation(prepared, layer)
        head = _linear_head_after_pooling(prepared.module, name, activation, output)
    targets = prepared.targets
    weights = head.weight.detach()[targets.positive.resolve(output)]
    if targets.negative is not None:
        weights = weights - head.weight.detach()[targets.negative.resolve(output)]
    maps = _to_input_size(_weighted_sum(weights.to(activation.dtype), activation), prepared.images)
    return MethodResult(maps, output)


def _linear_head_after_pooling(
    module: nn.Module, layer: str, activation: torch.Tensor, output: torch.Tensor
) -> nn.Linear:
    """The ``nn.Linear`` whose output is the model output from ``mean_ij(A)``, or LayerError."""
    pooled = activation.mean(dim=(2, 3))
    tolerance = 1e-4 * (1 + float(output.abs().max())) if output.dim() == 2 else 0.0
    for candidate in reversed([m for m in module.modules() if isinstance(m, nn.Linear)]):
        if output.dim() != 2 or candidate.in_features != pooled.shape[1]:
            continue
        if candidate.out_features != output.shape[1]:
            continue
        with torch.no_grad():
            predicted = candidate(pooled)
        if float((predicted - output).abs().max()) <= tolerance:
            return candidate
    raise LayerError(
        f"cam needs a model whose output is nn.Linear(global average pool of layer "
        f"{layer!r}), and this model/layer is not (conv -> GAP -> linear); use gradcam, "
        "which equals CAM on such models and works on any model"
    )


@register_method("eigencam", "cam", uses_layer=True)
def eigencam(
    model: Model, images: torch.Tensor, target: object = None, *, layer: LayerSpec | None = None
) -> MethodResult:
    """Eigen-CAM (Muhammad & Yeasin 2020): the layer's first principal component.

    With ``X = A`` as ``[hw, K]`` (positions x channels), centred over positions, and ``v``
    its first right singular vector: ``L = ReLU(X v)`` as ``[h, w]``. The sign of ``v`` is
    fixed so that ``L`` correlates non-negatively with ``sum_k A_k`` (deterministic).
    Class-agnostic: ``target`` only decides the rows (top-k repeats images). Returns
    ``Tensor[N, H, W] >= 0``.
    """
    prepared = prepare(model, images, target)
    with borrowed_model(prepared.module):
        _, activation, output = _layer_activation(prepared, layer)
    if prepared.targets.fn is None:
        prepared.targets.class_ids(output)  # checks the classes exist, as every method does
    maps = _to_input_size(_first_component_map(activation), prepared.images)
    return MethodResult(maps, output)


def _first_component_map(activation: torch.Tensor) -> torch.Tensor:
    """Projection of each position on the first principal component: ``Tensor[N, h, w]``."""
    n, k, h, w = activation.shape
    positions = activation.double().flatten(2).transpose(1, 2)  # [N, hw, K]
    centred = positions - positions.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = centred @ vh[:, 0, :, None]  # [N, hw, 1]
    total = positions.sum(dim=2, keepdim=True)
    agreement = ((projection * (total - total.mean(dim=1, keepdim=True))).sum(dim=(1, 2))) >= 0
    sign = torch.where(agreement, 1.0, -1.0).to(projection)
    return (projection[..., 0] * sign[:, None]).view(n, h, w).to(activation.dtype)


@register_method("scorecam", "cam", uses_layer=True, slow=True)
def scorecam(
    model: Model,
    images: torch.Tensor,
    target: object = None,
    *,
    layer: LayerSpec | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> MethodResult:
    """Score-CAM (Wang et al. 2020): channels weighted by the score of the masked input.

    For each channel ``k`` whose activation is not constant over positions:
    ``M_k = (up(A_k) - min) / (max - min)`` in [0, 1] at input size, and
    ``w_k = s(softmax(f(x * M_k)))``, the target's probability on the masked input
    (``p_a - p_b`` for contrast; a callable target gets the raw output). This is the
    weighting of the authors' released code; the paper's Algorithm 1 instead takes a
    softmax over channels of the logit increase ``f_c(x * M_k) - f_c(x_b)``. A constant
    channel (all zero, or flat) has no mask to speak of and gets ``w_k = 0``.
    ``L = ReLU(sum_k w_k A_k)``. Costs one forward pass without autograd (activation,
    and the class of ranked targets) plus one per non-constant channel, ``batch_size``
    masked copies at a time (default: see `chunk_size`; never changes results).
    Returns ``Tensor[N, H, W] >= 0``.
    """
    prepared = prepare(model, images, target)
    with borrowed_model(prepared.module):
        _, activation, output = _layer_activation(prepared, layer)
        targets = fix_ranked_targets(prepared.targets, output)
        size = chunk_size(batch_size, len(prepared.images))
        weights = _masked_scores(
            prepared.module, prepared.images, targets, activation, output, size, progress
        )
    maps = _to_input_size(_weighted_sum(weights, activation), prepared.images)
    return MethodResult(maps, output)


def _masked_scores(
    module, images, targets, activation, clean, batch_size, progress
) -> torch.Tensor:
    """``Tensor[N, K]``: the target score of ``images[n] * M_k`` for non-constant channels
    (``clean``: the output on ``images``, what a callable target sees for other images)."""
    flat = activation.flatten(2)
    rows, channels = torch.nonzero(flat.amax(dim=2) > flat.amin(dim=2), as_tuple=True)
    weights = torch.zeros_like(activation[:, :, 0, 0])
    chunks = list(in_chunks(len(rows), batch_size))
    for chunk in progress_bar(chunks, disable=not progress, desc="scorecam", leave=False):
        row, channel = rows[chunk], channels[chunk]
        masks = normalize_maps(resize_maps(activation[row, channel], tuple(images.shape[-2:])))
        with torch.no_grad():
            output = module(images[row] * masks[:, None])
            probabilities = output if targets.fn is not None else output.softmax(dim=1)
            scores = targets.copies(row.cpu(), clean).score(probabilities)  # targets: on CPU
            weights[row, channel] = scores.to(weights)
    return weights


@register_method("guided_gradcam", "cam", uses_layer=True)
def guided_gradcam(
    model: Model, images: torch.Tensor, target: object = None, *, layer: LayerSpec | None = None
) -> MethodResult:
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop times upsampled Grad-CAM.

    ``L[i, j] = GB[i, j] * GradCAM[i, j]`` with ``GB = max_c |guided gradient_c|``; as
    Grad-CAM is non-negative this equals ``max_c |GB_c * GradCAM|``. Returns
    ``Tensor[N, H, W] >= 0``.
    """
    from convlens.attribution.rules import guided_backprop

    coarse = _layer_cam(model, images, target, layer, _combine_gradcam)
    guided = guided_backprop(model, images, target)
    return MethodResult(full_precision(guided) * full_precision(coarse.maps), coarse.output)
