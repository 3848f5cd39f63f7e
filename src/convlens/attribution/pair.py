"""`explain_pair`: why two images are alike to an embedding model (each image's map of
its similarity to the other)."""

from __future__ import annotations

import torch
from torch import nn

from convlens.attribution.explain import Explanation, explain
from convlens.data.images import ImageBatch, load_images
from convlens.errors import ConvlensError
from convlens.layers.find import LayerSpec
from convlens.models.devices import DeviceSpec
from convlens.models.loading import LoadedModel
from convlens.models.outputs import OutputKey
from convlens.targets import similar_to


def explain_pair(
    model: nn.Module | LoadedModel,
    first: object,
    second: object,
    method: str = "gradcam",
    layer: LayerSpec | None = None,
    *,
    device: DeviceSpec | None = None,
    output_key: OutputKey = None,
    **options,
) -> Explanation:
    """Why ``first`` and ``second`` are alike: `explain` with two rows, row 0 the map on
    ``first`` of ``cos(e(first), e(second))`` (its embedding's cosine similarity to the
    other's, `convlens.targets.similar_to`), row 1 the map on ``second`` of the same
    similarity, read from its side. Both rows have the same score, in [-1, 1].

    ``first``/``second``: preprocessed ``Tensor[3, H, W]`` (or ``[1, 3, H, W]``) of one
    size, or with a `LoadedModel` anything `load_images` takes (paths, sample names).
    ``method``, ``layer``, ``device``, ``output_key`` and ``options``: as for `explain`.
    The pair's picture is ``Explanation.picture()`` (each image with its map), shown by
    itself in a notebook."""
    images = _pair_images(model, first, second)
    tensor = images.tensor if isinstance(images, ImageBatch) else images
    target = similar_to(tensor.flip(0))  # each image against the other
    return explain(
        model, images, method, target, layer, device=device, output_key=output_key, **options
    )


def _pair_images(model, first, second) -> ImageBatch | torch.Tensor:
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
        pair = [t[None] if t.dim() == 3 else t for t in (first, second)]
        if any(t.dim() != 4 or len(t) != 1 for t in pair) or pair[0].shape != pair[1].shape:
            raise ConvlensError(
                f"explain_pair takes two preprocessed images Tensor[3, H, W] of one size, got "
                f"{tuple(first.shape)} and {tuple(second.shape)}"
            )
        return torch.cat(pair)
    if not isinstance(model, LoadedModel):
        raise ConvlensError(
            "with a bare nn.Module, explain_pair takes two preprocessed Tensor[3, H, W]; or "
            "wrap the model with convlens.load_model(module, preprocess=...) to pass files"
        )
    return load_images([first, second], preprocess=model.preprocess)
