"""The synthetic ground-truth dataset: determinism, exact masks and tight boxes, balance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convlens.data.synthetic import _EXTENT, SHAPES, SyntheticShapes, _inside, make_batch
from convlens.errors import DataError


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


def test_classes_are_balanced_and_pixels_quantised():
    batch = make_batch(60, seed=0)
    assert torch.equal(batch.labels.bincount(minlength=len(SHAPES)), torch.full((6,), 10))
    assert batch.images.min() >= 0 and batch.images.max() <= 1
    assert torch.equal((batch.images * 255).round() / 255, batch.images)


def one_pixel_border(mask: torch.Tensor) -> torch.Tensor:
    """The mask grown by one pixel in all 8 directions (3x3 max filter)."""
    return F.max_pool2d(mask[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0


def test_objects_are_fully_inside_and_distractors_keep_off_their_border():
    """Over 200 items (this range had, before the fix, squares reaching the edge at items
    103, 139 and 193 and distractors touching the object diagonally at 77, 171 and 193):
    no object pixel on the image's first/last row or column, and no distractor pixel in the
    object's 8-neighbourhood."""
    data = SyntheticShapes(200, seed=7, distractor_rate=0.5)
    counts = []
    for index, sample in enumerate(data):
        mask = sample.mask
        edge = mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
        assert not edge, f"item {index} reaches the image edge"
        touching = sample.distractor_mask & one_pixel_border(mask)
        assert not touching.any(), f"item {index}: a distractor touches the object"
        assert bool(sample.distractor_mask.any()) == (sample.distractors > 0)
        counts.append(sample.distractors)
    assert 0 < np.mean([c > 0 for c in counts]) < 1
    clean = SyntheticShapes(12, seed=7, distractor_rate=0.0)
    assert all(s.distractors == 0 and not s.distractor_mask.any() for s in clean)


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_extent_bounds_every_rotation(shape):
    """`_EXTENT` (the margin the placement keeps) is the farthest point of the shape from
    its centre: no inside point lies beyond it, and some lie within 2% of it."""
    grid = torch.linspace(-1.5, 1.5, 1201, dtype=torch.float64).numpy()
    u, v = np.meshgrid(grid, grid)
    radius = np.hypot(u, v)[_inside(shape, u, v)]
    assert radius.max() <= _EXTENT[shape] + 1e-9
    assert radius.max() >= 0.98 * _EXTENT[shape]


def test_bad_arguments_raise():
    with pytest.raises(DataError, match="size"):
        SyntheticShapes(4, size=8)
    with pytest.raises(DataError, match="distractor_rate"):
        SyntheticShapes(4, distractor_rate=2.0)
    with pytest.raises(DataError, match="length and start"):
        SyntheticShapes(-1)
    assert issubclass(DataError, ValueError)


def test_display_is_the_exact_uint8_form_of_the_images():
    batch = make_batch(6, seed=3)
    display = batch.display
    assert display.dtype == np.uint8 and display.shape == (6, 64, 64, 3)
    back = torch.from_numpy(display).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(back, batch.images)
