"""Region targets of segmentation outputs: the score is a class's logits summed over a box,
a mask or the class's predicted mask."""

from __future__ import annotations

import pytest
import torch

from convlens.attribution.common import fix_ranked_targets
from convlens.errors import TargetError
from convlens.targets import contrast, region, resolve_targets


def _output() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 3, 5, 6)


def test_box_and_mask_regions_sum_the_class_logits_inside():
    output = _output()
    box = resolve_targets(region(2, box=(1, 2, 4, 5)), 2)
    assert torch.allclose(box.score(output), output[:, 2, 2:5, 1:4].sum((1, 2)))
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[0, 0] = mask[4, 5] = True
    masked = resolve_targets(region(1, mask=mask), 2)
    assert torch.allclose(masked.score(output), output[:, 1, 0, 0] + output[:, 1, 4, 5])
    assert box.spec == "2@box" and masked.spec == "1@mask"


def test_predicted_region_and_plain_class_targets_sum_over_the_predicted_mask():
    output = _output()
    predicted = output.argmax(1) == 1
    expected = (output[:, 1] * predicted).sum((1, 2))
    assert torch.allclose(resolve_targets(region(1), 2).score(output), expected)
    assert torch.allclose(resolve_targets(1, 2).score(output), expected)


def test_contrast_sums_each_class_over_the_region_and_top1_ranks_by_the_sum():
    output = _output()
    targets = resolve_targets(region(contrast(0, 2), box=(0, 0, 3, 3)), 2)
    sums = output[:, :, :3, :3].sum((2, 3))
    assert torch.allclose(targets.score(output), sums[:, 0] - sums[:, 2])
    top = resolve_targets(region("top1", box=(0, 0, 3, 3)), 2)
    assert torch.equal(top.class_ids(output), sums.argmax(1))


def test_probability_is_the_mean_softmax_over_the_region():
    output = _output()
    targets = resolve_targets(region(1, box=(0, 0, 2, 2)), 2)
    expected = output.softmax(1)[:, 1, :2, :2].mean((1, 2))
    assert torch.allclose(targets.probabilities(output, torch.tensor([1, 1])), expected)


def test_copies_keep_the_clean_prediction_mask_once_pinned():
    clean = _output()
    pinned = fix_ranked_targets(resolve_targets(region(1), 2), clean)
    shifted = clean.roll(1, dims=3)  # a copy whose own prediction moved
    mask = clean.argmax(1) == 1
    assert torch.allclose(pinned.score(shifted), (shifted[:, 1] * mask).sum((1, 2)))
    assert torch.allclose(pinned.subset(slice(1, 2)).score(shifted[1:]), pinned.score(shifted)[1:])


@pytest.mark.parametrize(
    ("spec", "output", "message"),
    [
        (region(0, box=(0, 0, 7, 2)), _output(), "x1 <= 6"),
        (region(0, box=(2, 0, 2, 2)), _output(), "x0 < x1"),
        (region(0, mask=torch.ones(4, 4)), _output(), "output's resolution"),
        (region(0, box=(0, 0, 1, 1)), torch.randn(2, 3), "segmentation output"),
    ],
)
def test_bad_regions_raise_target_errors_when_scored(spec, output, message):
    with pytest.raises(TargetError, match=message):
        resolve_targets(spec, 2).score(output)


def test_bad_region_specs_raise_target_errors_up_front():
    with pytest.raises(TargetError, match="selects no pixel"):
        resolve_targets(region(0, mask=torch.zeros(3, 3)), 2)
    with pytest.raises(TargetError, match="not both"):
        region(0, box=(0, 0, 1, 1), mask=torch.ones(2, 2))
    with pytest.raises(TargetError, match="3 region boxes for 2 images"):
        resolve_targets(region(0, box=torch.zeros(3, 4)), 2)
    with pytest.raises(TargetError, match="class target"):
        resolve_targets(region(lambda out: out.sum((1, 2, 3))), 2)
