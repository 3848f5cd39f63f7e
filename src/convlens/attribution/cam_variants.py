"""More CAM methods on the shared path of `convlens.attribution.cam`: Ablation-CAM
(gradient-free: the score drop when a channel is zeroed) and FinerCAM (Grad-CAM of the
difference to the most similar classes). Like every CAM method they take several layers,
``eigen_smooth`` and ``aug_smooth``."""

from __future__ import annotations

import dataclasses
import math
import numbers
from functools import partial

import torch

from convlens.attribution.cam import (
    Model,
    cam_maps,
    gradient_layer_map,
    layer_activation,
    weigh_gradcam,
    weighted_map,
)
from convlens.attribution.common import (
    Prepared,
    SharedRows,
    chunk_size,
    fix_ranked_targets,
    in_chunks,
    positive_int,
)
from convlens.attribution.registry import MethodResult, register_method
from convlens.data.progress import progress_bar
from convlens.errors import MethodError, TargetError
from convlens.layers.capture import replaced_output
from convlens.layers.find import LayerSpec
from convlens.targets import Targets

# ---- Ablation-CAM ------------------------------------------------------------------------


@register_method("ablationcam", "cam", uses_layer=True, slow=True)
def ablationcam(
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
    """Ablation-CAM (Desai & Ramaswamy 2020): channels weighted by the score drop when zeroed.

    ``w_k = (y - y_k) / y``, with ``y`` the target score and ``y_k`` the score when channel
    ``k`` of the layer's output ``A`` is set to 0 and the forward pass continues from there
    (0 where ``y = 0``; an all-zero channel is not run and gets ``w_k = 0``, which is what
    ablating it gives). ``L = ReLU(sum_k w_k A_k)``. No gradient: one forward pass plus one
    per non-zero channel, ``batch_size`` ablated copies at a time (default: see
    `chunk_size`; never changes results). Returns ``Tensor[N, H, W] >= 0``.
    """

    def layer_map(prepared: Prepared, name: str, eigen: bool) -> MethodResult:
        activation, output = _raw_activation(prepared, name)
        targets = fix_ranked_targets(prepared.targets, output)
        ablated = _ablated_scores(prepared, name, targets, activation, output, batch_size, progress)
        clean = targets.score(output).to(ablated)[:, None]
        weights = torch.where(clean != 0, (clean - ablated) / torch.where(clean == 0, 1, clean), 0)
        return MethodResult(weighted_map(weights, activation, prepared.images, eigen), output)

    return cam_maps(model, images, target, layer, layer_map, eigen_smooth, aug_smooth)


def _raw_activation(prepared: Prepared, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, output)``: the layer's output as the model passes it on (no token reshape, so
    an ablated copy can replace it), from one forward pass without autograd."""
    return layer_activation(prepared, name, reshape=None)


def _ablated_scores(
    prepared: Prepared, name: str, targets: Targets, activation, clean, batch_size, progress
) -> torch.Tensor:
    """``Tensor[N, K]``: the target score with channel ``k`` of row ``n``'s activation set to
    0 (the clean score for all-zero channels, which are not run)."""
    # rows holding the same image share each ablated copy (`SharedRows`), made from the
    # activation of the group's first row
    images = prepared.images
    shared = SharedRows.of(images, share=isinstance(clean, torch.Tensor))
    first_rows = activation[shared.first.to(activation.device)]
    groups, channels = torch.nonzero(first_rows.flatten(2).abs().amax(dim=2) > 0, as_tuple=True)
    scores = targets.score(clean)[:, None].repeat(1, activation.shape[1]).float()
    size = chunk_size(batch_size, len(shared), images.shape[-2] * images.shape[-1])
    chunks = list(in_chunks(len(groups), size))
    for chunk in progress_bar(chunks, disable=not progress, desc="ablationcam", leave=False):
        group, channel = groups[chunk].cpu(), channels[chunk]
        first = shared.first[group].to(activation.device)
        zeroed = torch.zeros(
            (len(first), activation.shape[1]) + (1,) * (activation.dim() - 2),
            dtype=torch.bool,
            device=activation.device,
        )
        zeroed[torch.arange(len(first), device=zeroed.device), channel] = True
        with replaced_output(prepared.module, name, partial(_channels_zeroed, zeroed)):
            with torch.no_grad():
                output = prepared.module(images[first.to(images.device)])
        copy, row, score = shared.scores(targets, clean, output, group)  # targets: on CPU
        scores[row.to(scores.device), channel[copy.to(channel.device)]] = score.to(scores)
    return scores


def _channels_zeroed(zeroed: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """The layer's ``output`` with the channels ``zeroed`` (bool, broadcast over the rest)
    set to 0. Made from the output itself, not from a stored copy of the clean activation:
    a model that differentiates through the layer inside its own forward pass (a test-time
    adaptation step) keeps its graph."""
    return torch.where(zeroed.to(output.device), 0, output)


# ---- FinerCAM ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FinerScore:
    """FinerCAM's score, ``Tensor[N]``, differentiable w.r.t. the output ``Tensor[N, K]``:
    ``sum_j p_j (y_c - alpha y_j) / (sum_j p_j + 1e-9)`` over the ``n_similar`` classes
    ``j != c`` whose logits are closest to the explained class ``c``'s, ``p = softmax(y)``."""

    targets: Targets
    alpha: float
    n_similar: int

    def score(self, output: torch.Tensor) -> torch.Tensor:
        logits = self.targets.class_scores(output)
        if logits.shape[1] < 2:
            raise MethodError("finercam needs a model with at least two classes to contrast")
        main = self.targets.positive.resolve(logits)[:, None].to(logits.device)
        own = logits.gather(1, main)
        distance = (logits - own).abs().detach().scatter(1, main, float("inf"))
        similar = distance.topk(min(self.n_similar, logits.shape[1] - 1), largest=False).indices
        weights = logits.softmax(dim=1).gather(1, similar)
        differences = own - self.alpha * logits.gather(1, similar)
        return (weights * differences).sum(dim=1) / (weights.sum(dim=1) + 1e-9)


@register_method("finercam", "cam", uses_layer=True)
def finercam(
    model: Model,
    images: torch.Tensor,
    target: object = None,
    *,
    layer: LayerSpec | None = None,
    alpha: float = 1.0,
    n_similar: int = 3,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
) -> MethodResult:
    """FinerCAM (Zhang et al. 2025): Grad-CAM of the score's lead over the most similar classes.

    Grad-CAM with ``Y = sum_j p_j (y_c - alpha y_j) / sum_j p_j``, ``j`` the ``n_similar``
    classes whose logits are closest to the explained class ``c``'s and ``p = softmax(y)``
    (the gradient flows through ``p`` too, as in pytorch-grad-cam's FinerCAM); ``alpha = 0``
    is Grad-CAM of ``y_c``. Needs class targets (not a contrast: the comparison classes
    are chosen here). Returns ``Tensor[N, H, W] >= 0``.
    """
    positive_int("n_similar", n_similar)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
        raise MethodError(f"alpha must be a finite number (1 in the paper), got {alpha!r}")
    base = gradient_layer_map(weigh_gradcam)

    def layer_map(prepared: Prepared, name: str, eigen: bool) -> MethodResult:
        _check_finer_targets(prepared.targets)
        finer = FinerScore(prepared.targets, float(alpha), n_similar)
        return base(dataclasses.replace(prepared, targets=finer), name, eigen)

    return cam_maps(model, images, target, layer, layer_map, eigen_smooth, aug_smooth)


def _check_finer_targets(targets: Targets) -> None:
    if targets.fn is not None or targets.negative is not None:
        raise TargetError(
            "finercam needs class targets (ids, names or top-k); it picks the classes to "
            "contrast itself. For a callable or contrast(a, b) target use gradcam"
        )
