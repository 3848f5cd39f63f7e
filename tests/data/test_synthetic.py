"""The synthetic ground-truth dataset: determinism, exact masks and tight boxes, balance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convlens.data.synthetic import SHAPES, SyntheticShapes, make_batch, mask_box


def test_item_is_a_pure_function_of_seed_and_index():
    a = SyntheticShapes(12, seed=3)[7]
    b = SyntheticShapes(20, seed=3)[7]
    c = SyntheticShapes(5, seed=3, start=5)[2]  # the same item reached through an offset
    for other in (b, c):
        assert torch.equal(a.image, other.image)
        assert torch.equal(a.mask, other.mask)
        assert torch.equal(a.box, other.box)
    assert not torch.equal(a.image, SyntheticShapes(12, seed=4)[7].image)


def test_batch_equals_items_and_indexing_rules():
    data = SyntheticShapes(6, seed=2)
    batch = data.batch()
    for i in range(6):
        assert torch.equal(batch.images[i], data[i].image)
        assert torch.equal(batch.masks[i], data[i].mask)
    assert torch.equal(make_batch(6, seed=2).images, batch.images)
    assert torch.equal(data[-1].image, data[5].image)
    with pytest.raises(IndexError):
        data[6]


def test_box_is_tight_around_mask_and_mask_is_painted():
    batch = make_batch(24, seed=5)
    for image, mask, box in zip(batch.images, batch.masks, batch.boxes, strict=True):
        x0, y0, x1, y1 = (int(v) for v in box)
        assert mask.any()
        assert mask[y0:y1, x0:x1].sum() == mask.sum()  # box contains the mask
        # tight: each edge row/column of the box touches the mask
        assert mask[y0, x0:x1].any() and mask[y1 - 1, x0:x1].any()
        assert mask[y0:y1, x0].any() and mask[y0:y1, x1 - 1].any()
        # the object has one colour (up to the pixel noise), different from the rest
        inside = image[:, mask]
        assert float((inside - inside.mean(1, keepdim=True)).abs().max()) < 0.12


def test_mask_box_exclusive_corners():
    mask = torch.zeros(8, 10, dtype=torch.bool)
    mask[2:5, 3:7] = True
    assert mask_box(mask).tolist() == [3.0, 2.0, 7.0, 5.0]
    with pytest.raises(ValueError):
        mask_box(torch.zeros(4, 4, dtype=torch.bool))


def test_classes_are_balanced_and_pixels_quantised():
    batch = make_batch(60, seed=0)
    assert torch.equal(batch.labels.bincount(minlength=len(SHAPES)), torch.full((6,), 10))
    assert batch.images.min() >= 0 and batch.images.max() <= 1
    assert torch.equal((batch.images * 255).round() / 255, batch.images)


def test_distractors_never_touch_the_object_and_follow_the_rate():
    data = SyntheticShapes(48, seed=7, distractor_rate=0.5)
    counts = []
    for sample in data:
        counts.append(sample.distractors)
        assert not (sample.distractor_mask & sample.mask).any()
        assert bool(sample.distractor_mask.any()) == (sample.distractors > 0)
    assert 0 < np.mean([c > 0 for c in counts]) < 1
    clean = SyntheticShapes(12, seed=7, distractor_rate=0.0)
    assert all(s.distractors == 0 and not s.distractor_mask.any() for s in clean)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="size"):
        SyntheticShapes(4, size=8)
    with pytest.raises(ValueError, match="distractor_rate"):
        SyntheticShapes(4, distractor_rate=2.0)
