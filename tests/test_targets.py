"""Every target form resolves to exact scores; bad targets raise ValueError naming the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convlens.errors import TargetError
from convlens.targets import Contrast, contrast, parse_target, region, resolve_targets, target_text

LOGITS = torch.tensor([[1.0, 5.0, 3.0, 0.0], [4.0, 2.0, 6.0, 1.0]])
LABELS = ["ant", "bee", "cat", "dog"]


def scores(target, **kwargs):
    targets = resolve_targets(target, 2, labels=LABELS, **kwargs)
    return targets, targets.score(targets.expand(LOGITS))


def test_top1_default_and_explicit():
    for target in (None, "top1"):
        targets, value = scores(target)
        assert value.tolist() == [5.0, 6.0]
        assert targets.class_ids(LOGITS).tolist() == [1, 2]


def test_topk_expands_rows_image_major():
    targets, value = scores("top2")
    assert targets.image_index.tolist() == [0, 0, 1, 1]
    assert targets.class_ids(targets.expand(LOGITS)).tolist() == [1, 2, 2, 0]
    assert value.tolist() == [5.0, 3.0, 6.0, 4.0]


def test_int_name_and_per_image_forms():
    assert scores(3)[1].tolist() == [0.0, 1.0]
    assert scores("Cat")[1].tolist() == [3.0, 6.0]
    assert scores([0, "dog"])[1].tolist() == [1.0, 1.0]
    assert scores(torch.tensor([2, 1]))[1].tolist() == [3.0, 2.0]
    assert scores("2")[1].tolist() == [3.0, 6.0]


def test_contrast_is_difference_of_scores():
    assert scores(contrast("bee", 0))[1].tolist() == [4.0, -2.0]
    assert scores(contrast("top1", "top2"))[1].tolist() == [2.0, 2.0]


def test_a_class_against_itself_is_refused():
    # by name against id, by rank, and in one row of a per-image contrast
    for same in (contrast("bee", 1), contrast("top1", "top1"), contrast([0, 2], [1, 2])):
        with pytest.raises(TargetError, match="against itself"):
            resolve_targets(same, 2, labels=LABELS)
    later = resolve_targets(contrast("top1", 1), 2, labels=LABELS)  # known only with logits
    with pytest.raises(TargetError, match="sets class 1 against itself \\(row 0"):
        later.score(LOGITS)  # row 0's top class is 1 ("bee")
    assert resolve_targets(contrast("top1", 2), 1).score(LOGITS[:1]).tolist() == [2.0]
    with pytest.raises(TargetError, match="against itself"):
        resolve_targets(contrast("top1", "cat"), 2, labels=LABELS).score(LOGITS)  # row 1


def test_callable_target():
    targets, value = scores(lambda out: out[:, 0] * 2)
    assert value.tolist() == [2.0, 8.0]
    assert targets.class_ids(LOGITS) is None


def test_score_is_differentiable():
    logits = LOGITS.clone().requires_grad_()
    targets = resolve_targets(contrast(1, 2), 2)
    (grad,) = torch.autograd.grad(targets.score(logits).sum(), logits)
    assert grad.tolist() == [[0, 1, -1, 0], [0, 1, -1, 0]]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ([1, 2, 3], "got 3 targets for 2 images"),
        (7, r"out of range; allowed: 0\.\.3"),
        (-1, "out of range"),
        ("kat", "did you mean 'cat'"),
        (torch.tensor([0.5, 1.0]), "integer class ids"),
        (True, "cannot be a bool"),
        (2.5, "cannot use a float"),
        ("top9", "top-k needs"),
        ("top0", r"top-k needs 1 <= k <= 4"),
        (torch.tensor(2.7), "integer class ids"),  # a float scalar is not truncated to 2
        (torch.tensor(True), "cannot be a bool"),
        (torch.tensor([True, False]), "cannot be a bool"),
        (torch.tensor([[0], [1]]), "integer class ids"),
        (np.array([0.0, 1.0]), "integer class ids"),
    ],
)
def test_validation_errors(target, message):
    with pytest.raises(ValueError, match=message):
        resolve_targets(target, 2, labels=LABELS)


def test_range_checked_against_output_when_labels_unknown():
    targets = resolve_targets(9, 2)
    with pytest.raises(TargetError, match=r"model has 4 classes \(0\.\.3\)"):
        targets.score(LOGITS)


def test_callable_with_wrong_shape_raises():
    targets = resolve_targets(lambda out: out.sum(), 2)
    with pytest.raises(TargetError, match=r"one score per image"):
        targets.score(LOGITS)


def test_class_targets_need_classifier_output():
    targets = resolve_targets(1, 2)
    with pytest.raises(TargetError, match="callable"):
        targets.score(torch.zeros(2, 4, 5))  # [B, K, H, W] is a segmentation output instead


def test_numpy_ids_and_scalar_tensors_are_class_ids():
    assert scores(np.int64(3))[1].tolist() == [0.0, 1.0]
    assert scores(np.array([2, 1]))[1].tolist() == [3.0, 2.0]
    assert scores(torch.tensor(1))[1].tolist() == [5.0, 2.0]


def test_topk_rows_follow_each_images_own_ranking_and_subset():
    targets, value = scores("top3")
    assert targets.class_ids(targets.expand(LOGITS)).tolist() == [1, 2, 0, 2, 0, 1]
    part = targets.subset(slice(3, 6))
    assert part.image_index.tolist() == [1, 1, 1]
    assert part.score(part.expand(LOGITS)).tolist() == [6.0, 4.0, 2.0]


def test_per_image_contrast_and_unknown_name_without_labels():
    targets = resolve_targets(contrast([1, 2], ["top2", 3]), 2, labels=LABELS)
    assert targets.score(LOGITS).tolist() == [5.0 - 3.0, 6.0 - 1.0]
    with pytest.raises(TargetError, match="needs the model's labels"):
        resolve_targets("cat", 2)
    with pytest.raises(TargetError, match="top-k needs k >= 1"):
        resolve_targets("top0", 2)


# --- the text grammar: one parser for the CLI and the web view ----------------------------


def test_parse_target_splits_a_contrast_only_between_classes():
    labels = ("tabby", "black-and-tan coonhound", "espresso")
    assert parse_target("tabby-espresso", labels) == contrast("tabby", "espresso")
    assert parse_target("281-967") == contrast(281, 967)
    assert parse_target("top1-top2") == contrast("top1", "top2")
    assert parse_target("black-and-tan coonhound", labels) == "black-and-tan coonhound"
    assert parse_target("black-and-tan coonhound-tabby", labels) == contrast(
        "black-and-tan coonhound", "tabby"
    )
    assert parse_target("no-such-thing", labels) == "no-such-thing"  # checked when resolved


def test_parse_target_forms_and_rather_than():
    assert parse_target(" 281 ") == 281 and parse_target("") == "top1"
    assert parse_target("top3") == "top3"  # three rows per image
    assert parse_target("top3", one_image=True) == ["top3"]  # the third class, one row
    assert parse_target("tabby", rather_than=" 967 ") == contrast("tabby", 967)
    assert parse_target("top2", rather_than="") == "top2"
    assert isinstance(parse_target("1-2", one_image=True), Contrast)


@pytest.mark.parametrize("one_image", [False, True])
@pytest.mark.parametrize("text", ["top0", "top00", "top0-top1", "tabby-top0"])
def test_parse_target_refuses_rank_zero_without_the_model(text, one_image):
    with pytest.raises(TargetError, match="ranks count from 1"):
        parse_target(text, ("tabby",), one_image=one_image)
    with pytest.raises(TargetError, match="ranks count from 1"):
        parse_target("tabby", ("tabby",), rather_than="top0")


def test_parse_target_one_image_top_k_is_one_ranked_row():
    output = torch.tensor([[0.1, 3.0, 2.0, -1.0]])
    rows = resolve_targets(parse_target("top2", one_image=True), 1)
    assert len(rows) == 1 and rows.class_ids(output).tolist() == [2]
    assert len(resolve_targets(parse_target("top2"), 1)) == 2


def test_target_text_writes_targets_back_in_the_grammar():
    assert target_text(contrast("tabby", 967)) == "tabby-967"
    assert target_text(region(contrast(1, 2), box=(0, 0, 4, 4))) == "1-2"
    assert target_text("top1") == "top1"
    for text in ("tabby-967", "top2", "5"):
        assert target_text(parse_target(text, ("tabby",))) == text


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda o: o.argmax(1), "floating-point scores, got torch.int64"),
        (lambda o: o[:, 0] > 0, "floating-point scores, got torch.bool"),
        (lambda o: o[:, 0].detach(), "do not depend on the model output"),
    ],
)
def test_a_callable_target_must_give_differentiable_real_scores(fn, message):
    output = LOGITS.clone().requires_grad_(True)
    with pytest.raises(TargetError, match=message):
        resolve_targets(fn, 2).score(output)
    assert resolve_targets(lambda o: o[:, 1], 2).score(output).requires_grad
