"""The fooling check for class visualisations (Geirhos et al. 2023, "Don't trust your eyes:
on the (un)reliability of feature visualizations"): a network can be changed so that its
visualisations show anything while it classifies natural images as before, so a picture
is evidence about the class only if the network processes it like natural images of
that class.

The activation path of an image is its channel-mean activation ``Tensor[C_l]`` at each of
a list of layers (default: one per stage, `stage_layers`). A picture's distance to a set
of images at a layer is ``1 - cos(path_l(picture), mean of path_l over the set)``; its
path distance is the mean over layers. The picture is flagged when its path is not
closer to the natural images of its own class than to those of every other class given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convlens.data.preprocess import IMAGENET_PREPROCESS
from convlens.errors import MethodError
from convlens.features.activations import spatial_activation, stage_layers
from convlens.layers import borrowed_model, capture, resolve_layer
from convlens.models.devices import model_input
from convlens.models.loading import LoadedModel, as_module


@dataclass(frozen=True)
class FoolingCheck:
    """``layers`` compared; ``distances`` ``{class: Tensor[L]}`` the picture's distance at
    each layer to the mean path of each class's natural images; ``path`` ``{class: float}``
    their mean over layers; ``flagged``: the own class is not strictly the closest."""

    target: int
    layers: list[str]
    distances: dict[int, torch.Tensor]
    path: dict[int, float]
    flagged: bool

    @property
    def nearest_other(self) -> int:
        """The other class whose natural images the picture's path is closest to."""
        return min((c for c in self.path if c != self.target), key=self.path.__getitem__)

    def summary(self, labels: Sequence[str] | None = None) -> str:
        """One line for beside the picture: the verdict and both distances."""

        def name(c: int) -> str:
            return labels[c] if labels is not None and 0 <= c < len(labels) else str(c)

        other = self.nearest_other
        verdict = "FLAGGED: not processed like its class" if self.flagged else "passes"
        return (
            f"fooling check {verdict}: path distance to {name(self.target)} photos "
            f"{self.path[self.target]:.3f}, to the nearest other class ({name(other)}) "
            f"{self.path[other]:.3f}, over {len(self.layers)} layers"
        )


def activation_paths(
    model: nn.Module | LoadedModel, images: torch.Tensor, layers: Sequence[str]
) -> list[torch.Tensor]:
    """Channel means ``Tensor[B, C_l]`` of each layer for ``images`` ``Tensor[B, 3, H, W]``
    in [0, 1] (normalised by the model's preprocessing; ImageNet's for a bare module).
    No autograd; the model is borrowed."""
    module = as_module(model)
    prep = model.preprocess if isinstance(model, LoadedModel) else IMAGENET_PREPROCESS
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    names = [resolve_layer(module, layer)[0] for layer in layers]
    with borrowed_model(module), torch.no_grad(), capture(module, names) as cap:
        module(model_input(module, (images.detach().float() - mean) / std))
        return [
            spatial_activation(cap.activation(name), name).float().mean((2, 3)).cpu()
            for name in names
        ]


def fooling_check(
    model: nn.Module | LoadedModel,
    picture: torch.Tensor,
    target: int,
    natural: Mapping[int, torch.Tensor],
    layers: Sequence[str] | None = None,
) -> FoolingCheck:
    """Compare the activation path of ``picture`` ``Tensor[3, H, W]`` in [0, 1], a
    visualisation of class ``target``, with the natural images ``natural[c]``
    ``Tensor[N_c, 3, H, W]`` in [0, 1] of ``target`` and of at least one other class (all
    one size; resize first). `MethodError` when ``target`` has no natural images or no
    other class is given."""
    if target not in natural or len(natural) < 2:
        raise MethodError(
            f"the fooling check needs natural images of class {target} and of at least one "
            f"other class; got classes {sorted(natural)}"
        )
    if layers is None:
        layers = stage_layers(model, picture)
    layers = list(layers)
    if not layers:
        raise MethodError("the fooling check needs at least one spatial layer; pass layers=[...]")
    mine = activation_paths(model, picture[None], layers)
    distances = {}
    for class_id, images in natural.items():
        if images.dim() == 3:
            images = images[None]
        paths = activation_paths(model, images, layers)
        distances[class_id] = torch.stack(
            [
                1 - F.cosine_similarity(own[0], theirs.mean(0), dim=0)
                for own, theirs in zip(mine, paths, strict=True)
            ]
        )
    path = {c: float(d.mean()) for c, d in distances.items()}
    others = min(v for c, v in path.items() if c != target)
    return FoolingCheck(int(target), layers, distances, path, flagged=path[target] >= others)
