"""FullGrad (Srinivas & Fleuret 2019): the input-gradient and the bias-gradients of every
layer, as pytorch-grad-cam computes it. It uses every layer with a bias, so it takes no
``layer``; it takes ``eigen_smooth`` and ``aug_smooth`` like the CAM methods."""

from __future__ import annotations

import torch
from torch import nn

from convlens.attribution.cam import Model, augmented_average, reduce_weighted
from convlens.attribution.common import (
    GRADIENT_METHOD,
    Prepared,
    SharedRows,
    per_row_backward,
    prepare,
)
from convlens.attribution.registry import MethodResult, register_method
from convlens.layers.borrow import borrowed_model, require_autograd
from convlens.layers.capture import capture
from convlens.maps import full_precision, normalize_maps, resize_maps


@register_method("fullgrad", "cam")
def fullgrad(
    model: Model,
    images: torch.Tensor,
    target: object = None,
    *,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
) -> MethodResult:
    """FullGrad (Srinivas & Fleuret 2019): input-gradient plus every layer's bias-gradient.

    ``L = sum_c psi(|x_c dY/dx_c|) + sum_l sum_k up(psi(|b_lk dY/dz_lk|))`` over every
    ``Conv2d`` and ``BatchNorm2d`` with a bias (a BatchNorm's bias is its eval-mode offset
    ``beta - mu gamma / sqrt(var + eps)``), ``z_l`` the layer's output, ``psi`` min-max
    scaling of each channel map to [0, 1] and ``up`` bilinear upsampling (as pytorch-grad-cam's
    FullGrad). One forward and one backward pass (rows holding the same image share the
    forward pass, one backward pass per row: `SharedRows`); ``eigen_smooth`` takes the
    first principal component of the per-channel input maps and per-layer maps instead of their sum.
    Returns ``Tensor[N, H, W] >= 0`` (raw: pytorch-grad-cam then min-max scales it).
    """
    prepared = prepare(model, images, target)
    with borrowed_model(prepared.module):

        def compute(current: Prepared) -> MethodResult:
            return _fullgrad_map(current, eigen_smooth)

        return augmented_average(prepared, compute) if aug_smooth else compute(prepared)


def bias_layers(module: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: bias Tensor[K]}`` of every ``Conv2d`` and ``BatchNorm2d`` that has a bias;
    a BatchNorm's is its eval-mode offset (its own ``beta`` when it keeps no running
    statistics)."""
    biases = {}
    for name, layer in module.named_modules():
        if not isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)) or layer.bias is None:
            continue
        bias = layer.bias.detach()
        if isinstance(layer, nn.BatchNorm2d) and layer.running_mean is not None:
            scale = layer.weight.detach() / torch.sqrt(layer.running_var + layer.eps)
            bias = bias - layer.running_mean * scale
        biases[name] = bias
    return biases


def _fullgrad_map(prepared: Prepared, eigen_smooth: bool) -> MethodResult:
    """The FullGrad map ``Tensor[N, H, W]`` and the output, from one backward pass."""
    require_autograd(GRADIENT_METHOD)
    biases = bias_layers(prepared.module)
    # rows holding the same image share the forward pass, one backward pass per row of the
    # largest group (`SharedRows`), unless a layer's batch is not the images' (DiFull cells)
    shared = SharedRows.of(prepared.images.detach())
    found = _gradients(prepared, biases, shared) if shared.pays_per_row_backward() else None
    inputs, output, outputs, gradients = found or _gradients(prepared, biases, None)
    size = tuple(inputs.shape[-2:])
    input_term = (full_precision(inputs.detach()) * full_precision(gradients[0])).abs()
    terms = list(_channel_scaled(input_term).unbind(dim=1))
    for (name, _), gradient in zip(outputs, gradients[1:], strict=True):
        if gradient is not None:
            bias = full_precision(biases[name]).to(gradient.device)[None, :, None, None]
            scaled = _channel_scaled((bias * full_precision(gradient)).abs())
            terms.append(resize_maps(scaled.sum(dim=1), size))
    maps = reduce_weighted(torch.stack(terms, dim=1), eigen_smooth).clamp_min(0)
    return MethodResult(maps, output.detach())  # float32 for half models: no underflow


def _gradients(prepared: Prepared, biases: dict, shared: SharedRows | None) -> tuple | None:
    """``(inputs, output, [(layer, z)], gradients)`` of the target scores w.r.t. the inputs
    and every bias layer's output ``z``, one row per explained row; with ``shared``, one
    forward pass per distinct image (None if the output or a layer's batch is not
    per image)."""
    images = prepared.images.detach()
    pick = None if shared is None else shared.first.to(images.device)
    inputs = (images if pick is None else images[pick]).clone().requires_grad_(True)
    with capture(prepared.module, list(biases), gradients=True, reshape=None) as cap:
        output = prepared.module(inputs)
        outputs = [(name, z) for name in biases for z in cap.all_calls(name)]
        wrt = [inputs, *(z for _, z in outputs)]
        if shared is None:
            scores = prepared.targets.score(output)
            return (
                inputs,
                output,
                outputs,
                torch.autograd.grad(scores.sum(), wrt, allow_unused=True),
            )
        if not isinstance(output, torch.Tensor) or any(len(z) != len(shared) for z in wrt):
            return None

        def gradient(score: torch.Tensor, retain: bool) -> tuple:
            return torch.autograd.grad(score, wrt, allow_unused=True, retain_graph=retain)

        gradients = per_row_backward(output, prepared.targets, shared, gradient)
    return images, output[shared.group.to(output.device)], outputs, gradients


def _channel_scaled(maps: torch.Tensor) -> torch.Tensor:
    """Each channel map of ``Tensor[N, K, h, w]`` min-max scaled to [0, 1] (`normalize_maps`)."""
    return normalize_maps(maps.flatten(0, 1)).view_as(maps)
