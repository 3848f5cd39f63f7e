"""Feature accentuation (Hamblin, Fel, Saha, Konkle & Alvarez 2024, "Feature Accentuation:
Revealing 'What' Features Respond to in Natural Images"): instead of a picture made from
grey, change a real photo so that it drives a class or a unit more, while it stays close
to the photo in the features of a layer of the network: what in *this* image the unit
responds to.

As in the paper: the picture is seeded from the photo in the Fourier parametrisation with
decorrelated colours (`optimize.FourierImage`, whose ``set_image`` inverts the photo
exactly), each step applies a random transform, and the objective is regularised by the
L2 distance between the features of the picture and of the seed at one layer. Here the
seed goes through the same random transform as the picture in each step (one batch), and
the distance is divided by the norm of the seed's features,
``d = ||a_l(T x) - a_l(T x0)||_2 / ||a_l(T x0)||_2``, so that ``weight`` does not depend on
the layer's scale. Each picture maximises ``objective(T x) - weight * d``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from convlens.errors import MethodError
from convlens.features.activations import stage_layers
from convlens.features.objectives import Objective, Seen
from convlens.features.optimize import (
    FourierImage,
    Transforms,
    Visualization,
    _as_objectives,
    _check_fits,
    _preprocess,
    _start_images,
    optimisation_input,
    optimising,
    random_transform,
)
from convlens.layers import resolve_layer
from convlens.layers.borrow import require_autograd
from convlens.models.devices import DeviceSpec, model_device, resolve_device
from convlens.models.loading import LoadedModel, as_module

_TIE_BREAK = 1.0  # grey levels of seeded noise between pictures that start alike
_TINY = 1e-12
_TRANSFORMS = Transforms()  # frozen: one shared default is safe


def accentuate(
    model: nn.Module | LoadedModel,
    objectives: Objective | Sequence[Objective],
    image: torch.Tensor,
    *,
    layer: str | None = None,
    weight: float = 10.0,
    steps: int = 64,
    lr: float = 0.05,
    transforms: Transforms | None = _TRANSFORMS,
    seed: int = 0,
    progress: bool = False,
    device: DeviceSpec | None = None,
) -> Visualization:
    """Accentuate each objective in the photo ``image`` ``Tensor[3, H, W]`` in [0, 1] (or
    ``[1 or B, 3, H, W]`` for ``B`` objectives), rendered at the photo's size.

    ``layer``: where closeness to the photo is measured (default: the middle stage of
    `stage_layers`, an intermediate layer as in the paper); ``weight`` >= 0 the weight of the
    relative feature distance (module docstring; 0: plain gradient ascent from the photo).
    Adam at ``lr`` on the Fourier coefficients. Returns a `Visualization` whose
    ``history[k]`` is each picture's objective in step ``k`` (transformed, before the
    update; ``history[0]`` is the transformed start's: the photo, nudged for a repeated
    picture (`_apart`)), ``final`` the result's objective
    and ``distance`` ``Tensor[B]`` its relative feature distance to the photo at ``layer``
    (both without a transform). Reproducible for a given ``seed``; the model is borrowed
    and left unchanged, ``image`` too."""
    require_autograd("accentuate")
    items = _as_objectives(objectives)
    if steps < 1:
        raise MethodError(f"steps must be at least 1, got {steps}")
    if not weight >= 0:
        raise MethodError(f"weight must be 0 or more, got {weight}")
    if not isinstance(image, torch.Tensor):
        raise MethodError("accentuate starts from a photo: pass image=Tensor[3, H, W] in [0, 1]")
    seeds = _start_images(image, len(items))
    height, width = seeds.shape[-2:]
    _check_fits(height, width, transforms, 0, 1.0)
    module = as_module(model)
    prep = _preprocess(model)
    if layer is None:
        stages = stage_layers(model, seeds[0])
        if not stages:
            raise MethodError("the model has no spatial layer to stay close in; pass layer=")
        layer = stages[len(stages) // 2]
    close_name = resolve_layer(module, layer)[0]
    names = {spec: resolve_layer(module, spec)[0] for o in items for spec in o.layers}
    labels = model.labels if isinstance(model, LoadedModel) else None
    device = model_device(module) if device is None else resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    picture = FourierImage(len(items), height, width, device=device)
    start = _apart(seeds, items, seed)
    seeds = seeds.to(device)
    picture.set_image(start.to(device))
    picture.params[0].requires_grad_(True)
    optimizer = torch.optim.Adam(picture.params, lr=lr)
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1)
    count = len(items)

    def scores_of(images: torch.Tensor, transform: bool, cap) -> tuple[torch.Tensor, ...]:
        both = torch.cat([images, seeds])
        if transform:
            both = random_transform(both, transforms, gen)
        cap.clear()
        output = module(optimisation_input(module, (both - mean) / std))
        activations = {spec: cap.activation(name)[:count] for spec, name in names.items()}
        seen = Seen(images, activations, output[:count], labels)
        gains = torch.stack([o(seen)[b] for b, o in enumerate(items)])
        features = cap.activation(close_name).flatten(1)
        own, photo = features[:count], features[count:].detach()
        distance = (own - photo).norm(dim=1) / photo.norm(dim=1).clamp_min(_TINY)
        return gains, distance

    history = torch.zeros(steps, count)
    layers = sorted(set(names.values()) | {close_name})
    with optimising(module, device, layers, steps, progress) as (cap, bar):
        for step in range(steps):
            gains, distance = scores_of(picture.image(), transforms is not None, cap)
            history[step] = gains.detach().cpu()
            (grad,) = torch.autograd.grad((gains - weight * distance).sum(), picture.params)
            picture.params[0].grad = -grad  # Adam minimises; we ascend
            optimizer.step()
            bar.update(gains.detach())
        with torch.no_grad():
            final_images = picture.image().detach()
            final, distance = scores_of(final_images, False, cap)
        cap.clear()
    return Visualization(
        final_images.cpu(),
        history,
        final.detach().cpu(),
        [o.name for o in items],
        distance=distance.detach().cpu(),
    )


def _apart(seeds: torch.Tensor, items: list, seed: int) -> torch.Tensor:
    """The start pictures: ``seeds`` ``Tensor[B, 3, H, W]``, except that a picture with the
    same photo and the same objective (the same object) as an earlier one is nudged by
    seeded noise of about one grey level: pictures that start alike, share each step's
    transform and ascend one objective stay alike (a diversity term between equal
    pictures has no direction). Other pictures start from their photo exactly, so a batch
    gives what each picture gives alone."""
    start = seeds.clone()
    noise = torch.Generator().manual_seed(seed + 1)  # not the transforms' generator
    for b in range(1, len(items)):
        if any(items[j] is items[b] and torch.equal(seeds[j], seeds[b]) for j in range(b)):
            nudge = torch.randn(seeds[b].shape, generator=noise) * (_TIE_BREAK / 255)
            start[b] = (seeds[b] + nudge).clamp(0, 1)
    return start
