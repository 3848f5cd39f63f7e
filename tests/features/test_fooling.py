"""The fooling check (Geirhos et al. 2023) on a hand-built network whose activation path is
the mean colour: a red picture passes as a red-class visualisation and is flagged when
scored as the green class."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convlens.data.photos import Photo
from convlens.errors import MethodError
from convlens.features.fooling import activation_paths, fooling_check, photo_check
from convlens.render.features import to_uint8
from convlens.render.images import save_png


def colour_net() -> nn.Sequential:
    """1x1 identity convolution then ReLU: channel means are the mean colour (normalised)."""
    conv = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        conv.bias.zero_()
    return nn.Sequential(conv, nn.ReLU())


def tinted(channel: int, count: int, seed: int) -> torch.Tensor:
    """``count`` 8 x 8 noisy images, bright in ``channel``, in [0, 1]."""
    images = 0.3 * torch.rand(count, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    images[:, channel] += 0.7
    return images


def test_fooling_check_passes_a_real_case_and_flags_a_broken_one(unchanged):
    model = colour_net()
    natural = {0: tinted(0, 3, 1), 1: tinted(1, 3, 2), 2: tinted(2, 3, 3)}
    picture = tinted(0, 1, 4)[0]  # a "visualisation" of the red class
    with unchanged(model, picture):
        real = fooling_check(model, picture, 0, natural, layers=["0", "1"])
        broken = fooling_check(model, picture, 1, natural, layers=["0", "1"])
    assert not real.flagged and real.nearest_other in (1, 2)
    assert real.path[0] < min(real.path[1], real.path[2])
    assert broken.flagged and broken.nearest_other == 0
    assert real.distances[0].shape == (2,)
    assert "FLAGGED" in broken.summary() and "passes" in real.summary(["red", "green", "blue"])


def test_paths_are_the_channel_means_and_bad_input_is_refused():
    model = colour_net()
    images = tinted(2, 2, 5)
    (conv, relu) = activation_paths(model, images, ["0", "1"])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = ((images - mean) / std).mean((2, 3))
    torch.testing.assert_close(conv, expected)
    torch.testing.assert_close(relu, ((images - mean) / std).clamp_min(0).mean((2, 3)))
    with pytest.raises(MethodError, match="other class"):
        fooling_check(model, images[0], 0, {0: images}, layers=["0"])


def test_photo_check_reads_photo_files_by_class(tmp_path, unchanged):
    """What `convlens visualize` runs beside a class picture: photos with a class are read
    from disk (those without one are ignored); a red picture passes as the red class and is
    flagged as the green one; a class no photo shows gives None (nothing to compare)."""
    photos = []
    for index, (channel, class_id) in enumerate([(0, 0), (0, 0), (1, 1), (2, 1), (2, None)]):
        path = save_png(to_uint8(tinted(channel, 1, 10 + index)[0]), tmp_path / f"{index}.png")
        photos.append(Photo(f"test:{index}", path, class_id, "test"))
    model = colour_net()
    picture = tinted(0, 1, 4)[0]
    with unchanged(model, picture):
        real = photo_check(model, picture, 0, photos, layers=["1"])
        broken = photo_check(model, picture, 1, photos, layers=["1"])
        nothing = photo_check(model, picture, 2, photos, layers=["1"])
    assert not real.flagged and broken.flagged and nothing is None
    assert sorted(real.path) == [0, 1]
