"""Maps that a localising head computes itself (`convlens.models.heads`), as attribution
methods: ``nin`` (the NIN head's class map), ``acol`` (ACoL's fused map), ``scouter``
(SCOUTER's slot attention). Each applies only to a `HeadModel` with that head; any other
model gets a `MethodError` that says how to make one (``convlens train head``).
"""

from __future__ import annotations

import torch
from torch import nn

from convlens.attribution.common import prepare
from convlens.attribution.registry import MethodResult, register_method
from convlens.errors import MethodError, TargetError
from convlens.layers.borrow import borrowed_model
from convlens.maps import full_precision, resize_maps
from convlens.models.heads import HeadModel
from convlens.models.loading import LoadedModel

Model = nn.Module | LoadedModel


def _head_maps(model: Model, images: torch.Tensor, target: object, kind: str) -> MethodResult:
    """The head's own map of each row's target class, upsampled (bilinear) to the input
    size: ``Tensor[N, H, W]``, and the logits of the same pass."""
    prepared = prepare(model, images, target)
    module = prepared.module
    if not isinstance(module, HeadModel) or module.kind != kind:
        has = f"a {module.kind} head" if isinstance(module, HeadModel) else "no convlens head"
        raise MethodError(
            f"the {kind} method reads the maps of a model with the {kind} head, and this model "
            f"has {has}; train one with 'convlens train head {kind} --out DIR' and pass "
            "--model DIR/model.pt"
        )
    targets = prepared.targets
    if targets.fn is not None or targets.negative is not None or targets.region is not None:
        raise TargetError(
            f"{kind} maps answer for one class per image; pass a class id, name or 'topK' "
            "(no callable, contrast or region)"
        )
    with borrowed_model(module), torch.no_grad():
        features = module.backbone(prepared.images)
        output = module.head(features)
        classes = targets.class_ids(output).to(output.device)
        maps = module.head.class_maps(features, classes)
    return MethodResult(resize_maps(full_precision(maps), tuple(images.shape[-2:])), output)


@register_method("nin", "cam", head="nin")
def nin(model: Model, images: torch.Tensor, target: object = None) -> MethodResult:
    """NIN head (Lin et al. 2014): the class map whose spatial mean is the class's logit.

    ``M_c`` from 1x1 convolutions on the features, read directly (can be negative),
    upsampled to ``Tensor[N, H, W]``. Needs a model trained with --head nin.
    """
    return _head_maps(model, images, target, "nin")


@register_method("acol", "cam", head="acol")
def acol(model: Model, images: torch.Tensor, target: object = None) -> MethodResult:
    """ACoL head (Zhang et al. 2018): the fused map of its two adversarial classifiers.

    ``max(norm M^A_c, norm M^B_c)`` in [0, 1], B seeing the features with A's region above
    delta erased; upsampled to ``Tensor[N, H, W]``. Needs a model trained with --head acol.
    """
    return _head_maps(model, images, target, "acol")


@register_method("scouter", "cam", head="scouter")
def scouter(model: Model, images: torch.Tensor, target: object = None) -> MethodResult:
    """SCOUTER head (Li et al. 2021): the class's slot attention, why it is (or is not) c.

    Attention in (0, 1) of the class's slot over positions, upsampled to ``Tensor[N, H, W]``:
    positive evidence for a SCOUTER+ head, evidence against c for SCOUTER-. Needs a model
    trained with --head scouter.
    """
    return _head_maps(model, images, target, "scouter")
