"""The fooling check for class visualisations (Geirhos et al. 2023, "Don't trust your eyes:
on the (un)reliability of feature visualizations"): a network can be changed so that its
visualisations show anything while it classifies natural images as before, so a picture
is evidence about the class only if the network processes it like natural images of
that class.

The activation path of an image is its channel-mean activation ``Tensor[C_l]`` at each of
a list of layers (default: the last `LATE_STAGES` stages, `stage_layers`). A picture's
distance to a set
of images at a layer is ``1 - cos(path_l(picture), mean of path_l over the set)``; its
path distance is the mean over layers. The picture is flagged when its path is not
closer to the natural images of its own class than to those of every other class given.

Why only the late stages by default: Geirhos et al. found that even on an unmanipulated
network the paths of visualisations and natural images of the same class agree only in
the last layers; earlier, a picture made by optimisation is far from every photo. Measured
on EfficientNet-Lite0 (a 32-step espresso visualisation against the 21 classes of the
installed photos): its own class ranks 12th to 22nd by distance at the stages up to
``blocks.4``, 2nd at ``blocks.5`` and 1st at ``blocks.6`` and ``bn2``; the mean over all nine
stages put it nearer to a bottle cap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convlens.data.photos import Photo, package_photos
from convlens.data.preprocess import IMAGENET_PREPROCESS
from convlens.errors import MethodError
from convlens.features.activations import spatial_activation, stage_layers
from convlens.features.maco import _square
from convlens.layers import borrowed_model, capture, resolve_layer
from convlens.models.devices import model_input
from convlens.models.loading import LoadedModel, as_module

LATE_STAGES = 3


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
    one size; resize first), at ``layers`` (default: the last `LATE_STAGES` stages).
    `MethodError` when ``target`` has no natural images or no other class is given."""
    if target not in natural or len(natural) < 2:
        raise MethodError(
            f"the fooling check needs natural images of class {target} and of at least one "
            f"other class; got classes {sorted(natural)}"
        )
    if layers is None:
        layers = stage_layers(model, picture)[-LATE_STAGES:]
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


def photos_by_class(photos: Sequence[Photo], size: int) -> dict[int, torch.Tensor]:
    """The photos with a known class, each its centre square resized to ``size``, as
    ``{class: Tensor[N_c, 3, size, size]}`` in [0, 1]; unreadable photos are left out."""
    natural: dict[int, list[torch.Tensor]] = {}
    for photo in photos:
        if photo.class_id is None:
            continue
        try:
            natural.setdefault(photo.class_id, []).append(_square(photo.load(), size))
        except Exception:  # noqa: BLE001 - an unreadable photo is left out, not fatal
            continue
    return {c: torch.stack(images) for c, images in natural.items() if images}


def photo_check(
    model: nn.Module | LoadedModel,
    picture: torch.Tensor,
    target: int,
    photos: Sequence[Photo] | None = None,
    layers: Sequence[str] | None = None,
) -> FoolingCheck | None:
    """`fooling_check` of ``picture`` ``Tensor[3, H, W]`` in [0, 1] (a visualisation of
    class ``target``) against natural photos: ``photos`` (default: those installed packages
    ship, `convlens.data.photos.package_photos`) with a known class, each its centre
    square, and the picture, at the model's input size (square; a bare module: the
    picture's height). ``None`` when no photo shows ``target`` or none shows another class
    (nothing to compare with); what `convlens visualize` prints beside a class picture."""
    photos = package_photos() if photos is None else list(photos)
    classes = {p.class_id for p in photos if p.class_id is not None}
    if target not in classes or len(classes) < 2:
        return None
    prep = model.preprocess if isinstance(model, LoadedModel) else None
    size = prep.height_width[0] if prep is not None else picture.shape[-2]
    natural = photos_by_class(photos, size)
    if target not in natural or len(natural) < 2:
        return None
    seen = F.interpolate(
        picture.detach().float()[None], size=(size, size), mode="bilinear", antialias=True
    )[0]
    return fooling_check(model, seen, target, natural, layers)
