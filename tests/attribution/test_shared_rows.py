"""Rows holding the same image share their perturbed forward passes (`SharedRows`): the maps
equal one call per row, and the copies run once per distinct image."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.networks import CountingNet

from convlens import explain
from convlens.attribution.common import SharedRows

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {
    "occlusion": {"patch": 6, "stride": 4},
    "rise": {"n_masks": 10, "cells": 4},
    "superpixel_ablation": {"n_segments": 6, "compactness": 100.0},
    "kernel_shap": {"n_samples": 10, "n_segments": 6, "compactness": 100.0},
    "lime": {"n_samples": 10, "n_segments": 6, "compactness": 100.0},
    "scorecam": {"layer": "net.4"},
    "ablationcam": {"layer": "net.4"},
}


def test_shared_rows_groups_equal_rows_in_order():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    shared = SharedRows.of(torch.stack([a, b, a, a, b]))
    assert shared.first.tolist() == [0, 1] and shared.group.tolist() == [0, 1, 0, 0, 1]
    # a second tensor that differs splits a group; share=False keeps every row apart
    extra = torch.tensor([0, 0, 1, 0, 0])
    assert SharedRows.of(torch.stack([a, b, a, a, b]), extra).group.tolist() == [0, 1, 2, 0, 1]
    assert SharedRows.of(torch.stack([a, a]), share=False).group.tolist() == [0, 1]
    copy, row = shared.expand(torch.tensor([1, 0]))
    assert copy.tolist() == [0, 0, 1, 1, 1] and row.tolist() == [1, 4, 0, 2, 3]


def test_one_backward_per_slot_is_used_only_where_it_costs_less():
    """Gradient methods pay one backward pass per row of the largest group: a grid's cells
    (one image, 4 rows: 1 x 5 < 8) share; 4 equal baselines among 8 path points (5 groups,
    4 slots: 25 > 16) and distinct rows (8 x 2 = 16) do not."""
    a = torch.zeros(3)
    distinct = [torch.full((3,), float(i + 1)) for i in range(8)]
    assert SharedRows.of(torch.stack([a] * 4)).pays_per_row_backward()
    assert SharedRows.of(torch.stack([a] * 9)).pays_per_row_backward()
    assert not SharedRows.of(torch.stack([a] * 4 + distinct[:4])).pays_per_row_backward()
    assert not SharedRows.of(torch.stack(distinct)).pays_per_row_backward()
    two_images_two_classes = torch.stack([a, a, distinct[0], distinct[0]])
    assert SharedRows.of(two_images_two_classes).pays_per_row_backward()  # 2 x 3 < 8


@pytest.mark.parametrize("method", list(SMALL))
def test_rows_of_one_image_share_copies_and_equal_per_row_calls(method, unchanged):
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    batch = images[[0, 0, 1, 0, 1]]  # a grid explained once per cell: one image, several classes
    targets = [0, 1, 2, 2, 0]
    net = CountingNet().eval()
    with unchanged(net, batch):
        shared = explain(net, batch, method, target=targets, **SMALL[method]).maps
    seen_shared = net.seen
    net.calls.clear()
    explain(net, images, method, target=[0, 2], **SMALL[method])
    # the perturbed copies have one row per image; the clean pass one per explained row
    # (one per image for the CAM methods, whose clean pass is shared too)
    assert seen_shared == net.seen + (0 if method in ("scorecam", "ablationcam") else 3)
    for row, target in enumerate(targets):
        alone = explain(net, batch[row : row + 1], method, target=target, **SMALL[method]).maps
        torch.testing.assert_close(shared[row], alone[0], rtol=1e-5, atol=1e-6)


LAYER_METHODS = ["gradcam", "gradcam_pp", "hirescam", "layercam", "finercam", "cam", "eigencam"]


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_layer_methods_run_one_forward_per_distinct_image(method, unchanged):
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    batch, targets = images[[1, 0, 1, 1, 0, 0, 1, 0]], [2, 0, 0, 1, 1, 2, 2, 0]  # 2 x 5 < 16
    net = CountingNet().eval()
    with unchanged(net, batch):
        shared = explain(net, batch, method, target=targets, layer="net.4").maps
    assert net.seen == 2  # one forward of the two distinct images; a backward per row
    for row, target in enumerate(targets):
        alone = explain(net, batch[row : row + 1], method, target=target, layer="net.4").maps
        torch.testing.assert_close(shared[row], alone[0], rtol=1e-5, atol=1e-6)


GRADIENT_METHODS = {
    "saliency": {},
    "input_x_gradient": {},
    "guided_backprop": {},
    "deconvnet": {},
    "integrated_gradients": {"n_steps": 3},
    "smoothgrad": {"n_samples": 3},
    "gradient_shap": {"n_samples": 3},
    "deeplift": {},
    "deeplift_shap": {},
    "lrp": {},
    "fullgrad": {},
}


@pytest.mark.parametrize("method", list(GRADIENT_METHODS))
def test_input_gradients_of_one_image_share_the_forward_pass(method, unchanged):
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    # 2 images, 4 rows each: sharing pays, 2 x (1 + 4) < 16, also in the chunks of 8 path
    # points (or noisy copies) that hold one step of every row
    batch, targets = images[[0, 1, 0, 0, 1, 0, 1, 1]], [1, 2, 0, 2, 0, 1, 1, 0]
    options = GRADIENT_METHODS[method]
    net = CountingNet().eval()
    with unchanged(net, batch):
        shared = explain(net, batch, method, target=targets, **options).maps
    with_grad = sum(rows for rows, grad in net.calls if grad)
    net.calls.clear()
    explain(net, images, method, target=[0, 1], **options)
    # no more forward rows than the distinct images alone (fewer for integrated gradients:
    # its black-baseline end of the path is one point for every row)
    assert with_grad <= sum(rows for rows, grad in net.calls if grad)
    for row, target in enumerate(targets):
        alone = explain(net, batch[row : row + 1], method, target=target, **options).maps
        torch.testing.assert_close(shared[row], alone[0], rtol=1e-5, atol=1e-6)


def test_chunks_of_large_copies_hold_fewer_images():
    from convlens.attribution.common import chunk_size

    assert chunk_size(None, 3) == 8 and chunk_size(None, 32, 224 * 224) == 32  # as before
    assert chunk_size(None, 9, 448 * 448) == 2 and chunk_size(None, 9, 672 * 672) == 1
    assert chunk_size(5, 9, 672 * 672) == 5  # an explicit batch_size is kept
