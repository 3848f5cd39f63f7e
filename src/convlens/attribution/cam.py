"""CAM family: class activation maps from convolutional layers.

Every variant shares one path (`cam_maps`): check the inputs, resolve the layer (default:
the last spatial layer; ``"a,b"`` names several), and per layer capture its activation
``A`` (``Tensor[N, K, h, w]``) and, for gradient variants, ``G = dY/dA`` from
`layer_gradient` (no autograd before the layer; the backward pass stops there), weigh them
into ``Tensor[N, K, h, w]``, reduce over channels (sum, or the first principal component
with ``eigen_smooth``), keep the positive part and upsample it bilinearly to the input
size. A variant only says how it weighs ``A`` (the ``weigh_*`` functions below, or a
layer map of its own). Several layers are fused (`fused_layers`); ``aug_smooth`` averages
test-time augmentations (`augmented_average`). Maps are raw (not normalised) unless
fused or augmented; use `normalize_maps` for [0, 1]. All variants take any target form,
including ``contrast(a, b)`` (contrastive Grad-CAM: ``Y = y_a - y_b``). Each computes a
`MethodResult` (maps and the output of its own forward pass on the clean input);
`register_method` publishes it returning the maps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from convlens.attribution.common import (
    Prepared,
    SharedRows,
    check_spatial,
    chunk_size,
    fix_ranked_targets,
    forward_copies,
    in_chunks,
    layer_gradient,
    prepare,
    resolve_cam_layer,
)
from convlens.attribution.registry import MethodResult, register_method
from convlens.data.progress import progress_bar
from convlens.errors import LayerError, MethodError, TargetError
from convlens.layers.borrow import borrowed_model
from convlens.layers.capture import capture
from convlens.layers.find import LayerSpec
from convlens.maps import full_precision, normalize_maps, resize_maps
from convlens.models.loading import LoadedModel

Model = nn.Module | LoadedModel
Weigh = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LayerMap = Callable[[Prepared, str, bool], MethodResult]
Compute = Callable[[Prepared], MethodResult]
AUGMENT_FACTORS = (1.0, 0.9, 1.1)


# ---- the shared path -------------------------------------------------------------------


def cam_maps(
    model: Model,
    images: torch.Tensor,
    target: object,
    layer: LayerSpec | None,
    layer_map: LayerMap,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
) -> MethodResult:
    """What every CAM method returns: ``layer_map(prepared, layer name, eigen_smooth)`` for
    the layer, fused over several layers (`fused_layers`) and averaged over test-time
    augmentations with ``aug_smooth`` (`augmented_average`). ``Tensor[N, H, W] >= 0``."""
    prepared = prepare(model, images, target)
    with borrowed_model(prepared.module):
        names = cam_layer_names(prepared.module, prepared.images, layer)

        def compute(current: Prepared) -> MethodResult:
            return fused_layers([layer_map(current, name, eigen_smooth) for name in names])

        return augmented_average(prepared, compute) if aug_smooth else compute(prepared)


def fused_layers(results: list[MethodResult]) -> MethodResult:
    """One layer's map as it is; several layers' maps each min-max normalised to [0, 1]
    (`normalize_maps`) and averaged, so layers of different magnitude weigh the same (the
    rule of pytorch-grad-cam's multi-layer CAM). The output is the first layer's."""
    if len(results) == 1:
        return results[0]
    fused = torch.stack([normalize_maps(result.maps) for result in results]).mean(dim=0)
    return MethodResult(fused, results[0].output)


def augmented_average(prepared: Prepared, compute: Compute) -> MethodResult:
    """Test-time augmentation (``aug_smooth``): ``compute`` on the images unflipped and
    flipped left-right, each with its values multiplied by 1, 0.9 and 1.1 (six passes, as
    pytorch-grad-cam's default), each map flipped back, min-max normalised to [0, 1] and
    averaged. Ranked targets ("top1") are pinned to the class of the unaugmented images,
    so every pass explains the same class. The output is the unaugmented images' one.
    Region targets and segmentation outputs raise `MethodError` (the region would have
    to flip too)."""
    clean = compute(prepared)
    pinned = dataclasses.replace(
        prepared, targets=fix_ranked_targets(prepared.targets, clean.output)
    )
    if pinned.targets.region is not None:
        raise MethodError(
            "aug_smooth flips the image, and a region target (or a segmentation model's "
            "class mask) would have to flip with it; leave aug_smooth off for these"
        )
    maps = [normalize_maps(clean.maps)]
    for flip in (False, True):
        for factor in AUGMENT_FACTORS:
            if not flip and factor == 1.0:
                continue
            images = prepared.images * factor
            images = images.flip(-1) if flip else images
            result = compute(dataclasses.replace(pinned, images=images))
            maps.append(normalize_maps(result.maps.flip(-1) if flip else result.maps))
    return MethodResult(torch.stack(maps).mean(dim=0), clean.output)


def cam_layer_names(module: nn.Module, images: torch.Tensor, layer: LayerSpec | None) -> list:
    """The layer names a CAM method hooks (`resolve_cam_layer`; ``"a,b"`` names several),
    each once."""
    return list(dict.fromkeys(resolve_cam_layer(module, images, layer).split(",")))


def reduce_weighted(weighted: torch.Tensor, eigen_smooth: bool = False) -> torch.Tensor:
    """Weighted activations ``Tensor[N, K, h, w]`` to a map ``Tensor[N, h, w]``: their sum
    over channels, or with ``eigen_smooth`` their first principal component
    (`first_component_map`)."""
    return first_component_map(weighted) if eigen_smooth else weighted.sum(dim=1)


def gradient_layer_map(weigh: Weigh) -> LayerMap:
    """The layer map of a gradient variant: ``ReLU(reduce(weigh(A, G)))`` at input size."""

    def layer_map(prepared: Prepared, name: str, eigen_smooth: bool) -> MethodResult:
        activation, gradient, output = layer_gradient(
            prepared.module, prepared.images, prepared.targets, name
        )
        weighted = weigh(full_precision(activation), full_precision(gradient))  # no underflow
        maps = to_input_size(reduce_weighted(weighted, eigen_smooth), prepared.images)
        return MethodResult(maps, output)

    return layer_map


def _layer_cam(
    model: Model,
    images: torch.Tensor,
    target: object,
    layer: LayerSpec | None,
    weigh: Weigh,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
) -> MethodResult:
    """``ReLU(reduce(weigh(A, G)))`` upsampled to ``Tensor[N, H, W]``, and the output."""
    layer_map = gradient_layer_map(weigh)
    return cam_maps(model, images, target, layer, layer_map, eigen_smooth, aug_smooth)


def to_input_size(maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Positive part of ``Tensor[N, h, w]``, upsampled to ``images``' ``[H, W]``."""
    return resize_maps(maps.clamp_min(0), tuple(images.shape[-2:]))


def layer_activation(prepared: Prepared, name: str, reshape: object = "auto") -> tuple:
    """``(A: Tensor[N, K, h, w], output)`` of layer ``name`` from one forward pass without
    autograd (``reshape``: as `capture`'s). Rows holding the same image (`SharedRows`) share
    the pass. Call inside `borrowed_model`."""
    images = prepared.images
    shared = SharedRows.of(images)
    found = None
    if len(shared) < len(images):
        distinct = images[shared.first.to(images.device)]
        activation, output = _forward_with_layer(prepared.module, distinct, name, reshape)
        # rows can be indexed only in a tensor output with the images' batch
        if isinstance(output, torch.Tensor) and len(activation) == len(shared):
            group = shared.group.to(images.device)
            found = activation[group], output[group]
    activation, output = found or _forward_with_layer(prepared.module, images, name, reshape)
    check_spatial(name, activation)
    return activation, output


def _forward_with_layer(module: nn.Module, images: torch.Tensor, name: str, reshape) -> tuple:
    """``(A, output)``: layer ``name``'s (last) output and the model's, without autograd."""
    with capture(module, name, reshape=reshape) as cap, torch.no_grad():
        output = module(images)
    return cap.activation(name), output


def channel_weighted(weights: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """``w[n, k] * A[n, k]``: ``Tensor[N, K]`` x ``Tensor[N, K, h, w]`` -> ``[N, K, h, w]``."""
    return weights[:, :, None, None] * activation


def weighted_map(
    weights: torch.Tensor, activation: torch.Tensor, images: torch.Tensor, eigen_smooth: bool
) -> torch.Tensor:
    """``ReLU(reduce(w[n, k] * A[n, k]))`` at the input size of ``images``."""
    weighted = channel_weighted(full_precision(weights), full_precision(activation))
    return to_input_size(reduce_weighted(weighted, eigen_smooth), images)


# ---- how each gradient variant weighs A with G -------------------------------------------


def weigh_gradcam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    return channel_weighted(gradient.mean(dim=(2, 3)), activation)


def weigh_hirescam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    return gradient * activation


def weigh_xgradcam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    total = activation.sum(dim=(2, 3))
    weights = (gradient * activation).sum(dim=(2, 3)) / torch.where(total == 0, 1, total)
    return channel_weighted(torch.where(total == 0, 0, weights), activation)


def weigh_layercam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    return gradient.clamp_min(0) * activation


def weigh_gradcam_pp(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    g2 = gradient.square()
    denominator = 2 * g2 + activation.sum(dim=(2, 3), keepdim=True) * g2 * gradient
    alpha = torch.where(denominator != 0, g2 / torch.where(denominator == 0, 1, denominator), 0)
    return channel_weighted((alpha * gradient.clamp_min(0)).sum(dim=(2, 3)), activation)


# ---- registered methods ------------------------------------------------------------------
# Every CAM method takes ``layer`` (one layer, or several as "a,b": `fused_layers`),
# ``eigen_smooth`` (`reduce_weighted`) and ``aug_smooth`` (`augmented_average`).


@register_method("gradcam", "cam", uses_layer=True)
def gradcam(
    model: Model,
    images: torch.Tensor,
    target: object = None,
    *,
    layer: LayerSpec | None = None,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
) -> MethodResult:
    """Grad-CAM (Selvaraju et al. 2017): gradient-weighted sum of a layer's feature maps.

    ``L = ReLU(sum_k w_k A_k)``, ``w_k = (1 / hw) sum_ij dY/dA_k[i, j]``; with
    ``target=contrast(a, b)`` it is contrastive Grad-CAM (``Y = y_a - y_b``).
    ``images``: ``Tensor[B, C, H, W]``; returns ``Tensor[N, H, W] >= 0`` (raw, upsampled).
    """
    return _layer_cam(model, images, target, layer, weigh_gradcam, eigen_smooth, aug_smooth)


@register_method("gradcam_pp", "cam", uses_layer=True)
def gradcam_pp(
    model: Model,
    images: torch.Tensor,
    target: object = None,
    *,
    layer: LayerSpec | None = None,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
) -> MethodResult:
    """Grad-CAM++ (Chattopadhay et al. 2018), closed form with the ``exp(Y)`` score.

    With ``g = dY/dA``: ``alpha_k[i, j] = g^2 / (2 g^2 + sum_ab A_k[a, b] g^3)`` (0 where the
    denominator is 0), ``w_k = sum_ij alpha_k[i, j] ReLU(g_k[i, j])``,
    ``L = ReLU(sum_k w_k A_k)``. (The factor ``exp(Y)`` of the paper's weights is one
    positive number per row and is left out.) Returns ``Tensor[N, H, W] >= 0``.
    """
    return _layer_cam(model, images, target, layer, weigh_gradcam_pp, eigen_smooth, aug_smooth)


@register_method("xgradcam", "cam", uses_layer=True)
def xgradcam(
    model: Model,
    images: torch.Tensor,
    target: object = None,
    *,
    layer: LayerSpec | None = None,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
) -> MethodResult:
    """XGrad-CAM (Fu et al. 2020): channel weights normalised by the channel's activation.

    ``w_k = sum_ij A_k[i, j] dY/dA_k[i, j] / sum_ij A_k[i, j]`` (0 for an all-zero
    channel), ``L = ReLU(sum_k w_k A_k)``. Returns ``Tensor[N, H, W] >= 0``.
    """
    return _layer_cam(model, images, target, layer, weigh_xgradcam, eigen_smooth, aug_smooth)


@register_method("layercam", "cam", uses_layer=True)
def layercam(
    model: Model,
    images: torch.Tensor,
    target: object = None,
    *,
    layer: LayerSpec | None = None,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
) -> MethodResult:
    """LayerCAM (Jiang et al. 2021): positive gradients as per-position weights.

    ``L[i, j] = ReLU(sum_k ReLU(dY/dA_k[i, j]) A_k[i, j])``. Returns ``Tensor[N, H, W] >= 0``.
    """
    return _layer_cam(model, images, target, layer, weigh_layercam, eigen_smooth, aug_smooth)


@register_method("hirescam", "cam", uses_layer=True)
def hirescam(
    model: Model,
    images: torch.Tensor,
    target: object = None,
    *,
    layer: LayerSpec | None = None,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
) -> MethodResult:
    """HiResCAM (Draelos & Carin 2020): element-wise gradient times activation.

    ``L[i, j] = ReLU(sum_k dY/dA_k[i, j] A_k[i, j])`` (Grad-CAM without spatial averaging of
    the gradient). Returns ``Tensor[N, H, W] >= 0``.
    """
    return _layer_cam(model, images, target, layer, weigh_hirescam, eigen_smooth, aug_smooth)


@register_method("eigengradcam", "cam", uses_layer=True)
def eigengradcam(
    model: Model,
    images: torch.Tensor,
    target: object = None,
    *,
    layer: LayerSpec | None = None,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
) -> MethodResult:
    """Eigen-Grad-CAM: first principal component of gradient-weighted activations.

    ``L = ReLU(PC1(G * A))`` with ``G * A`` (element-wise, as HiResCAM) as ``[hw, K]``
    and its projection as in `eigencam` (sign agreeing with HiResCAM's channel sum); as
    pytorch-grad-cam's EigenGradCAM. It is always a principal component, so
    ``eigen_smooth`` changes nothing. Returns ``Tensor[N, H, W] >= 0``.
    """
    return _layer_cam(model, images, target, layer, weigh_hirescam, True, aug_smooth)


@register_method("cam", "cam", uses_layer=True)
def cam(
    model: Model,
    images: torch.Tensor,
    target: object = None,
    *,
    layer: LayerSpec | None = None,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
) -> MethodResult:
    """CAM (Zhou et al. 2016): the target class's head weights times the feature maps.

    For a model ``A -> global average pool -> Linear(W, b)``: ``L = ReLU(sum_k W[c, k] A_k)``
    (``W[a] - W[b]`` for ``contrast(a, b)``). One forward pass, no gradient. The head is
    found and checked numerically (its output must equal ``W mean_ij(A) + b``); other
    models raise `LayerError`. Returns ``Tensor[N, H, W] >= 0``.
    """
    if prepare(model, images, target).targets.fn is not None:
        raise TargetError(
            "cam needs class targets (ids, names, top-k or contrast), not a callable; "
            "use gradcam for a callable target"
        )
    return cam_maps(model, images, target, layer, _head_layer_map, eigen_smooth, aug_smooth)


def _head_layer_map(prepared: Prepared, name: str, eigen_smooth: bool) -> MethodResult:
    activation, output = layer_activation(prepared, name)
    head = _linear_head_after_pooling(prepared.module, name, activation, output)
    targets = prepared.targets
    weights = head.weight.detach()[targets.positive.resolve(output)]
    if targets.negative is not None:
        weights = weights - head.weight.detach()[targets.negative.resolve(output)]
    maps = weighted_map(weights, activation, prepared.images, eigen_smooth)
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
    model: Model,
    images: torch.Tensor,
    target: object = None,
    *,
    layer: LayerSpec | None = None,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
) -> MethodResult:
    """Eigen-CAM (Muhammad & Yeasin 2020): the layer's first principal component.

    With ``X = A`` as ``[hw, K]`` (positions x channels), centred over positions, and ``v``
    its first right singular vector: ``L = ReLU(X v)`` as ``[h, w]``. The sign of ``v`` is
    fixed so that ``L`` correlates non-negatively with ``sum_k A_k`` (deterministic).
    Class-agnostic: ``target`` only decides the rows (top-k repeats images). It is always
    a principal component, so ``eigen_smooth`` changes nothing. Returns
    ``Tensor[N, H, W] >= 0``.
    """
    return cam_maps(model, images, target, layer, _eigen_layer_map, eigen_smooth, aug_smooth)


def _eigen_layer_map(prepared: Prepared, name: str, eigen_smooth: bool) -> MethodResult:
    activation, output = layer_activation(prepared, name)
    if prepared.targets.fn is None:
        prepared.targets.class_ids(output)  # checks the classes exist, as every method does
    maps = to_input_size(first_component_map(activation), prepared.images)
    return MethodResult(maps, output)


def first_component_map(activation: torch.Tensor) -> torch.Tensor:
    """Projection of each position of ``Tensor[N, K, h, w]`` on the first principal
    component of its ``K`` channels: ``Tensor[N, h, w]``, signed so that it correlates
    non-negatively with the channel sum."""
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
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
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
    and the class of ranked targets) plus one per non-constant channel of each distinct image
    (rows holding the same image share the masked copies, `SharedRows`), ``batch_size``
    masked copies at a time (default: see `chunk_size`; never changes results).
    Returns ``Tensor[N, H, W] >= 0``.
    """

    def layer_map(prepared: Prepared, name: str, eigen: bool) -> MethodResult:
        activation, output = layer_activation(prepared, name)
        targets = fix_ranked_targets(prepared.targets, output)
        weights = _masked_scores(
            prepared.module, prepared.images, targets, activation, output, batch_size, progress
        )
        return MethodResult(weighted_map(weights, activation, prepared.images, eigen), output)

    return cam_maps(model, images, target, layer, layer_map, eigen_smooth, aug_smooth)


def _masked_scores(
    module, images, targets, activation, clean, batch_size, progress
) -> torch.Tensor:
    """``Tensor[N, K]``: the target score of ``images[n] * M_k`` for non-constant channels
    (``clean``: the output on ``images``, what a callable target sees for other images)."""
    # rows holding the same image share each masked copy (`SharedRows`); the masks come from
    # the activation of the group's first row
    shared = SharedRows.of(images, share=isinstance(clean, torch.Tensor))
    flat = activation[shared.first.to(activation.device)].flatten(2)
    groups, channels = torch.nonzero(flat.amax(dim=2) > flat.amin(dim=2), as_tuple=True)
    weights = torch.zeros_like(activation[:, :, 0, 0])
    size = chunk_size(batch_size, len(shared), images.shape[-2] * images.shape[-1])
    chunks = list(in_chunks(len(groups), size))
    for chunk in progress_bar(chunks, disable=not progress, desc="scorecam", leave=False):
        group, channel = groups[chunk].cpu(), channels[chunk]
        first = shared.first[group].to(activation.device)
        masks = normalize_maps(resize_maps(activation[first, channel], tuple(images.shape[-2:])))
        with torch.no_grad():
            output = forward_copies(module, images[first.to(images.device)] * masks[:, None])
            probabilities = output if targets.fn is not None else output.softmax(dim=1)
            copy, row, scores = shared.scores(targets, clean, probabilities, group)
            weights[row.to(weights.device), channel[copy.to(channel.device)]] = scores.to(weights)
    return weights


@register_method("guided_gradcam", "cam", uses_layer=True)
def guided_gradcam(
    model: Model,
    images: torch.Tensor,
    target: object = None,
    *,
    layer: LayerSpec | None = None,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
) -> MethodResult:
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop times upsampled Grad-CAM.

    ``L[i, j] = GB[i, j] * GradCAM[i, j]`` with ``GB = max_c |guided gradient_c|``; as
    Grad-CAM is non-negative this equals ``max_c |GB_c * GradCAM|``. ``eigen_smooth``,
    ``aug_smooth`` and several layers apply to the Grad-CAM factor. Returns
    ``Tensor[N, H, W] >= 0``.
    """
    from convlens.attribution.rules import guided_backprop

    coarse = _layer_cam(model, images, target, layer, weigh_gradcam, eigen_smooth, aug_smooth)
    guided = guided_backprop(model, images, target)
    return MethodResult(full_precision(guided) * full_precision(coarse.maps), coarse.output)
