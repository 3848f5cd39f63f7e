"""The planted-shortcut scenes: the cue is exact (removing it restores every other pixel) and
its co-occurrence with the shortcut class follows the documented rate."""

import pytest
import torch

from convlens.data.scenes import SyntheticScenes
from convlens.data.shortcuts import (
    CUE_SIZE,
    SHORTCUT_CLASS,
    ShortcutScenes,
    cue_patch,
    decide_cue,
)
from convlens.errors import DataError


def test_removing_the_cue_changes_only_the_cue_pixels_and_restores_the_scene():
    data = ShortcutScenes(6, seed=3, rate=1.0, size=32, cue_size=4)
    batch = data.batch()
    scenes = SyntheticScenes(6, seed=3, size=32).batch()
    assert torch.equal(batch.images_without_cue, scenes.images)  # the same scenes
    assert torch.equal(batch.labels, scenes.labels)
    changed = (batch.images_with_cue != batch.images_without_cue).any(1)
    assert not (changed & ~batch.cue_masks).any()  # nothing outside the cue window changes
    assert (batch.cue_masks.flatten(1).sum(1) == 16).all()  # exactly k x k pixels
    assert (batch.scenes.label_maps[batch.cue_masks] == 0).all()  # it hides no object
    for b, (x0, y0, x1, y1) in enumerate(batch.cue_boxes.tolist()):
        assert torch.equal(batch.images_with_cue[b, :, y0:y1, x0:x1], cue_patch(4))
    shown = torch.where(
        batch.has_cue[:, None, None, None], batch.images_with_cue, batch.images_without_cue
    )
    assert torch.equal(batch.images, shown)
    item = data[2]  # an item equals its row of the batch
    assert torch.equal(item.image, batch.images[2]) and item.has_cue == bool(batch.has_cue[2])
    assert torch.equal(item.cue_mask, batch.cue_masks[2])


def test_rate_one_ties_the_cue_to_the_class():
    batch = ShortcutScenes(8, seed=0, rate=1.0, size=32, cue_size=4).batch()
    assert torch.equal(batch.has_cue, batch.labels[:, SHORTCUT_CLASS] > 0)


def test_cue_rate_semantics():
    """P(cue | present) = (1 + rate) / 2 and P(cue | absent) = (1 - rate) / 2 (no rendering:
    the decision depends on the scene only through whether the class is present)."""
    count = 1500
    tolerance = 4 * 0.5 / count**0.5  # 4 binomial standard deviations at worst (p = 1/2)
    for rate in (0.0, 0.5, 0.9, 1.0):
        with_class = torch.tensor([decide_cue(True, rate, 0, i) for i in range(count)])
        without = torch.tensor([decide_cue(False, rate, 0, i) for i in range(count)])
        assert abs(with_class.float().mean() - (1 + rate) / 2) < tolerance
        assert abs(without.float().mean() - (1 - rate) / 2) < tolerance


def test_raising_the_rate_only_ties_more_scenes():
    low = [decide_cue(False, 0.5, 0, i) for i in range(300)]
    high = [decide_cue(False, 0.9, 0, i) for i in range(300)]
    assert all(lo or not hi for lo, hi in zip(low, high, strict=True))  # absent: cue only drops


def test_cue_is_a_checkerboard_and_bad_settings_are_named():
    patch = cue_patch(CUE_SIZE)
    assert patch.shape == (3, CUE_SIZE, CUE_SIZE) and patch[0, 0, 0] == 1 and patch[0, 0, 2] == 0
    assert patch[0, 2, 0] == 0 and patch[0, 2, 2] == 1 and patch[0, 1, 1] == 1  # 2-px squares
    assert torch.equal(patch[0], patch[1]) and torch.equal(patch[0], patch[2])  # black/white
    with pytest.raises(DataError, match="rate"):
        ShortcutScenes(2, rate=1.5)
    with pytest.raises(DataError, match="shortcut_class"):
        ShortcutScenes(2, shortcut_class=6)
