"""Feature accentuation (Hamblin et al. 2024) on a tiny network: the objective rises from
the photo's score, the feature distance to the photo is measured as defined, and a strong
regularisation keeps the result near the photo where none lets it drift."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.networks import small_convnet

from convlens.errors import MethodError
from convlens.features.accentuate import accentuate
from convlens.features.objectives import class_logit

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def photo() -> torch.Tensor:
    return 0.2 + 0.6 * torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(3))


def logit(model, images: torch.Tensor, k: int) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()((images - IMAGENET_MEAN) / IMAGENET_STD)[:, k]


def test_accentuation_raises_the_objective_and_strong_closeness_stays_near_the_photo(unchanged):
    model, seed = small_convnet(), photo()
    runs = {}
    with unchanged(model, seed):
        for weight in (0.0, 1000.0):
            runs[weight] = accentuate(
                model, class_logit(2), seed, layer="1", weight=weight, steps=12, lr=0.1
            )
    start = float(logit(model, seed[None], 2)[0])
    free, held = runs[0.0], runs[1000.0]
    # the reported score is the model's on the result; it rose from the photo's
    torch.testing.assert_close(free.final, logit(model, free.images, 2))
    assert float(free.final[0]) > start + 0.02  # (measured: +0.045 in 12 steps)
    # the distance is ||a(x) - a(x0)|| / ||a(x0)|| at layer "1" (the BatchNorm)
    with torch.no_grad():
        bn = lambda x: model[1](model[0]((x - IMAGENET_MEAN) / IMAGENET_STD)).flatten(1)  # noqa: E731
        expected = (bn(free.images) - bn(seed[None])).norm(dim=1) / bn(seed[None]).norm(dim=1)
    torch.testing.assert_close(free.distance, expected, rtol=1e-4, atol=1e-6)
    # a heavy weight on closeness: the result stays much nearer the photo, in features and pixels
    assert float(held.distance[0]) < 0.25 * float(free.distance[0])
    held_change = (held.images[0] - seed).abs().mean()
    assert held_change < 0.25 * (free.images[0] - seed).abs().mean()
    assert held_change < 0.02
    assert free.images.shape == (1, 3, 16, 16) and free.history.shape == (12, 1)


def test_accentuation_needs_a_photo_and_a_sensible_weight():
    model = small_convnet()
    with pytest.raises(MethodError, match="starts from a photo"):
        accentuate(model, class_logit(0), "noise")
    with pytest.raises(MethodError, match="weight"):
        accentuate(model, class_logit(0), photo(), weight=-1.0)


def test_several_pictures_of_one_unit_from_one_photo_come_apart_under_the_diversity_term():
    # they start alike and share each step's transform: without a tie-break they stay alike
    from convlens.features.objectives import diversity

    model, seed = small_convnet(), photo()
    objective = class_logit(2) + diversity("1", 10.0)
    apart = []
    for steps in (1, 8):
        result = accentuate(
            model, [objective] * 2, seed, layer="1", weight=1.0, steps=steps, lr=0.1
        )
        apart.append(float((result.images[0] - result.images[1]).abs().mean()))
    assert apart[1] > 3 * apart[0] > 0  # pushed apart, not only nudged (0.020 -> 0.071)


def test_a_batch_of_different_objectives_gives_what_each_gives_alone():
    # only a repeated picture (same photo, same objective) is nudged apart
    model, seed = small_convnet(), photo()
    objectives = [class_logit(2), class_logit(0)]
    batch = accentuate(model, objectives, seed, layer="1", steps=3, lr=0.1)
    for b, objective in enumerate(objectives):
        alone = accentuate(model, objective, seed, layer="1", steps=3, lr=0.1)
        torch.testing.assert_close(batch.images[b], alone.images[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(batch.history[:, b], alone.history[:, 0], rtol=0, atol=1e-6)
