"""Baselines (references) for the reference-based methods: Integrated Gradients, DeepLIFT,
DeepLIFT-SHAP and GradientSHAP.

A baseline is given as a Tensor or as text (``--option baseline=...``), a comma-separated
list of names, each giving one baseline per explained image:

- ``zero``: the all-zero input (the mean colour for a model normalised with its mean);
- ``black``: the black image, 0 in pixel space, then normalised like the input;
- ``mean``: the dataset's mean colour, i.e. the preprocessing mean, normalised;
- ``blur``: a blurred copy of the image (`convlens.maps.gaussian_blur`, std 1/16 of the
  shorter side);
- a path: an image file (or a folder of them) read and preprocessed like the inputs.

``black``, ``mean`` and files need the model's preprocessing (a `LoadedModel`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from convlens.data.images import load_images
from convlens.errors import MethodError
from convlens.maps import gaussian_blur
from convlens.models.loading import LoadedModel

NAMES = ("zero", "black", "mean", "blur")


def baseline_rows(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    baseline: object,
    image_index: torch.Tensor,
    inputs: int,
) -> torch.Tensor:
    """One baseline per explained row, ``Tensor[N, C, H, W]``, for ``images``
    ``Tensor[N, C, H, W]`` (rows of the ``inputs`` input images, row ``n`` of input image
    ``image_index[n]``). ``baseline``: None (zeros), one name or path (see the module
    docstring), or a Tensor ``[C, H, W]``, ``[1, C, H, W]`` or one per input image
    ``[inputs, C, H, W]``."""
    if isinstance(baseline, (str, Path)):
        distribution = baseline_distribution(model, images, baseline)
        if len(distribution) != 1:
            raise MethodError(
                f"baseline {str(baseline)!r} gives {len(distribution)} baselines per image; "
                "this method takes one: use deeplift_shap or gradient_shap for several"
            )
        return distribution[0]
    if baseline is None or (isinstance(baseline, (int, float)) and baseline == 0):
        return torch.zeros_like(images)
    if not isinstance(baseline, torch.Tensor):
        raise MethodError(
            f"baseline must be None (zeros), a name ({', '.join(NAMES)}), an image file or "
            f"a Tensor, got {type(baseline).__name__}"
        )
    base = baseline.detach().to(images.device, images.dtype)
    if base.dim() == 3:
        base = base[None]
    if base.dim() != 4 or base.shape[1:] != images.shape[1:]:
        raise MethodError(
            f"baseline shape {tuple(baseline.shape)} does not fit images "
            f"{tuple(images.shape)}; pass [C, H, W], [1, C, H, W] or one per image"
        )
    if len(base) == 1:
        return base.expand_as(images)
    if len(base) != inputs:
        raise MethodError(
            f"got {len(base)} baselines for {inputs} images; pass [C, H, W], [1, C, H, W] "
            "or one per image"
        )
    return base[image_index.to(base.device)]


def baseline_distribution(
    model: nn.Module | LoadedModel, images: torch.Tensor, baseline: object
) -> torch.Tensor:
    """``K`` baselines for each explained row, ``Tensor[K, N, C, H, W]``, for ``images``
    ``Tensor[N, C, H, W]``. ``baseline``: text (names and paths, comma separated; a folder
    gives each image in it), a Tensor ``[K, C, H, W]`` (``[C, H, W]``: one) shared by every
    row, or None: ``zero,black,blur`` (``zero,blur`` for a bare module)."""
    if baseline is None:
        baseline = "zero,black,blur" if isinstance(model, LoadedModel) else "zero,blur"
    if isinstance(baseline, torch.Tensor):
        base = baseline.detach().to(images.device, images.dtype)
        base = base[None] if base.dim() == 3 else base
        if base.dim() != 4 or base.shape[1:] != images.shape[1:] or len(base) == 0:
            raise MethodError(
                f"a baseline distribution is a Tensor[K, C, H, W] with [C, H, W] = "
                f"{tuple(images.shape[1:])}, got {tuple(baseline.shape)}"
            )
        return base[:, None].expand(len(base), *images.shape)
    if not isinstance(baseline, (str, Path)):
        raise MethodError(
            f"baseline must be None, text ({', '.join(NAMES)} or image files, comma "
            f"separated) or a Tensor, got {type(baseline).__name__}"
        )
    specs = [part.strip() for part in str(baseline).split(",") if part.strip()]
    if not specs:
        raise MethodError(f"baseline {baseline!r} names nothing; use {', '.join(NAMES)} or a file")
    return torch.cat([_named(model, images, spec) for spec in specs])


def _named(model: nn.Module | LoadedModel, images: torch.Tensor, spec: str) -> torch.Tensor:
    """The baselines ``Tensor[k, N, C, H, W]`` one name or path gives."""
    if spec == "zero":
        return torch.zeros_like(images)[None]
    if spec == "blur":
        return blurred(images)[None]
    if spec not in ("black", "mean") and not Path(spec).exists():
        raise MethodError(
            f"baseline {spec!r} is neither a name ({', '.join(NAMES)}) nor an existing "
            "image file or folder"
        )
    if not isinstance(model, LoadedModel):
        raise MethodError(
            f"baseline {spec!r} needs the model's preprocessing; wrap the model with "
            "convlens.load_model(module, preprocess=...), or use 'zero', 'blur' or a Tensor"
        )
    preprocess = model.preprocess
    if spec in ("black", "mean"):
        pixel = torch.zeros(3) if spec == "black" else torch.tensor(preprocess.mean)
        colour = (pixel - torch.tensor(preprocess.mean)) / torch.tensor(preprocess.std)
        colour = colour.to(images.device, images.dtype)[None, :, None, None]
        return colour.expand_as(images)[None]
    loaded = load_images(spec, preprocess=preprocess).tensor.to(images.device, images.dtype)
    if loaded.shape[1:] != images.shape[1:]:
        raise MethodError(
            f"baseline image {spec!r} is {tuple(loaded.shape[1:])} after preprocessing but "
            f"the images are {tuple(images.shape[1:])}; use a fixed-size preprocess"
        )
    return loaded[:, None].expand(len(loaded), *images.shape)


def blurred(images: torch.Tensor) -> torch.Tensor:
    """The ``blur`` baseline of ``Tensor[N, C, H, W]``: a Gaussian blur with std 1/16 of
    the shorter side (a kernel of about four std)."""
    sigma = max(1.0, min(images.shape[-2:]) / 16)
    kernel = 2 * math.ceil(2 * sigma) + 1
    return gaussian_blur(images, kernel_size=kernel, sigma=sigma)
