"""Detection targets and D-RISE: exact values on hand-built detector outputs and a hand-built
detector, and Grad-CAM / D-RISE on torchvision's Faster R-CNN and RetinaNet (random weights,
64 px, handed back unchanged)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convlens
from convlens.attribution.black_box import rise_masks
from convlens.attribution.detection import detection_similarity
from convlens.detections import Detection, box_iou, detection
from convlens.errors import TargetError
from convlens.targets import parse_target

REFERENCE = torch.tensor([0.0, 0.0, 10.0, 10.0])


def _output(boxes, labels, scores, **extra):
    item = {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor(labels),
        "scores": torch.tensor(scores, dtype=torch.float32, requires_grad=True),
    }
    return item | {k: torch.tensor(v) for k, v in extra.items()}


def test_score_is_class_score_times_iou_of_best_same_label_box():
    item = _output(
        [[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 5, 10]],  # IoUs 1, 81/119, 0.5
        [2, 1, 1],
        [0.9, 0.8, 0.7],
    )
    target = Detection(0, 0.5, (REFERENCE[None], torch.tensor([1])))
    score = target([item])
    assert score.shape == (1,)
    # the label-2 box overlaps best but has another label; the IoU-0.5 box is not above 0.5
    assert score.item() == pytest.approx(0.8 * 81 / 119, abs=1e-6)
    (gradient,) = torch.autograd.grad(score.sum(), item["scores"])
    assert gradient.tolist() == pytest.approx([0, 81 / 119, 0], abs=1e-6)
    # nothing of the label above the threshold: 0; an empty output: 0
    assert Detection(0, 0.7, (REFERENCE[None], torch.tensor([1])))([item]).item() == 0
    empty = _output(torch.zeros(0, 4).tolist(), [], [])
    assert Detection(0, 0.5, (REFERENCE[None], torch.tensor([1])))([empty]).item() == 0


def test_unpinned_target_scores_its_own_detection_and_pinning_follows_the_box():
    clean = [_output([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 3], [0.9, 0.6])]
    assert detection(1)(clean).item() == pytest.approx(0.6)
    pinned = detection(0).pin(clean)
    assert pinned.references[0].tolist() == [[0, 0, 10, 10]]
    # a perturbed output where the order changed and the box moved by one pixel
    moved = [_output([[20, 20, 30, 30], [1, 0, 11, 10]], [3, 1], [0.7, 0.5])]
    assert pinned(moved).item() == pytest.approx(0.5 * 90 / 110, abs=1e-6)
    with pytest.raises(TargetError, match="has 2 detections"):
        detection(2)(clean)
    with pytest.raises(TargetError, match="list of dicts"):
        detection(0)(torch.zeros(1, 5))


def test_det_text_and_api():
    assert parse_target("det:3") == detection(3) and str(detection(3)) == "det:3"
    assert convlens.detection(1) == Detection(1, 0.5)
    with pytest.raises(TargetError):
        detection(-1)


def test_drise_similarity_uses_class_vectors_and_objectness_when_given():
    box = [[0, 0, 10, 10], [0, 0, 10, 5]]
    vectors = [[0.6, 0.8, 0.0], [0.0, 1.0, 0.0]]
    with_vectors = _output(box, [1, 1], [0.8, 0.9], class_scores=vectors)
    # IoU 1 x cos(e_0, (0.6, 0.8, 0)) = 0.6 beats IoU 0.5 x cos(e_0, e_1) = 0
    assert detection_similarity(with_vectors, REFERENCE, 0).item() == pytest.approx(0.6)
    with_objectness = with_vectors | {"objectness": torch.tensor([0.5, 1.0])}
    assert detection_similarity(with_objectness, REFERENCE, 1).item() == pytest.approx(0.5)
    plain = _output(box, [1, 1], [0.2, 0.9])  # no vectors: [same label] x score
    assert detection_similarity(plain, REFERENCE, 1).item() == pytest.approx(0.45)
    assert detection_similarity(plain, REFERENCE, 0).item() == 0


class BoxDetector(nn.Module):
    """Two fixed boxes; detection 0's score is ``sigmoid(w * mean of the pixels in its box)``
    (rows 2..5, columns 1..4), detection 1's reads another patch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(3.0))

    def forward(self, images):
        found = []
        for image in images:
            first = torch.sigmoid(self.weight * image[:, 2:6, 1:5].mean())
            second = torch.sigmoid(-image[:, 8:12, 8:12].mean())
            found.append(
                {
                    "boxes": torch.tensor([[1.0, 2.0, 5.0, 6.0], [8.0, 8.0, 12.0, 12.0]]),
                    "labels": torch.tensor([1, 0]),
                    "scores": torch.stack([first, second]),
                }
            )
        return found


def test_saliency_and_occlusion_of_a_detection_lie_in_the_pixels_its_score_reads(unchanged):
    model = BoxDetector()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[2:6, 1:5] = True
    with unchanged(model, images):
        found = convlens.explain(model, images, "saliency", target=detection(0))
        occluded = convlens.explain(
            model, images, "occlusion", target=detection(0), patch=2, stride=2
        )
    score = torch.sigmoid(3 * images[:, :, 2:6, 1:5].mean((1, 2, 3)))
    expected = 3 * score * (1 - score) / 48  # d sigmoid(w mean) / d pixel
    assert found.scores.tolist() == pytest.approx(score.tolist())
    assert found.class_ids.tolist() == [1, 1] and found.extras["box"][0].tolist() == [1, 2, 5, 6]
    assert torch.allclose(found.maps[:, inside], expected[:, None].expand(2, 16), rtol=1e-5)
    assert found.maps[:, ~inside].abs().max() == 0
    touched = torch.zeros(16, 16, dtype=torch.bool)  # the 2x2 patches that overlap the box
    touched[2:6, 0:6] = True
    assert occluded.maps[:, ~touched].abs().max() == 0 and occluded.maps[:, inside].min() > 0


def test_drise_equals_the_weighted_mask_sum_by_hand(unchanged):
    model = BoxDetector()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with unchanged(model, images):
        maps = convlens.explain(
            model, images, "drise", target=detection(0), n_masks=20, cells=4, seed=3
        ).maps
        one = convlens.explain(
            model,
            images[1:],
            "drise",
            target=detection(0),
            n_masks=20,
            cells=4,
            seed=3,
            batch_size=7,
        ).maps
    masks = rise_masks(20, (16, 16), cells=4, seed=3)
    masked = images[:, None] * masks[None, :, None]  # [B, N, 3, H, W]
    weights = torch.sigmoid(3 * masked[:, :, :, 2:6, 1:5].mean((2, 3, 4)))  # IoU 1, same label
    expected = (weights[:, :, None, None] * masks[None]).sum(1) / (20 * 0.5)
    assert torch.allclose(maps, expected, atol=1e-6)
    assert torch.allclose(one, maps[1:], atol=1e-6)


class CountingBoxDetector(BoxDetector):
    """`BoxDetector` that records the number of images of each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, images):
        self.batches.append(len(images))
        return super().forward(images)


def test_drise_copies_of_224_pixel_images_go_eight_a_pass_with_the_same_map():
    """D-RISE's masked copies go through `forward_copies` like RISE's: at most eight
    224 x 224 images a pass on the CPU (detectors' lists joined), the same map."""
    model = CountingBoxDetector()
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    options = {"n_masks": 12, "cells": 4, "seed": 3}
    maps = convlens.explain(model, images, "drise", target=detection(0), batch_size=24, **options)
    assert max(model.batches) == 8 and sum(model.batches[1:]) == 24
    masks = rise_masks(12, (224, 224), cells=4, seed=3)
    masked = images[:, None] * masks[None, :, None]
    weights = torch.sigmoid(3 * masked[:, :, :, 2:6, 1:5].mean((2, 3, 4)))
    expected = (weights[:, :, None, None] * masks[None]).sum(1) / (12 * 0.5)
    assert torch.allclose(maps.maps, expected, atol=1e-6)


def test_drise_refuses_a_class_target():
    with pytest.raises(TargetError, match="detection"):
        convlens.explain(BoxDetector(), torch.rand(1, 3, 16, 16), "drise", target=1)


def _faster_rcnn():
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    return fasterrcnn_mobilenet_v3_large_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=3,
        min_size=64,
        max_size=64,
        box_score_thresh=0.0,
        rpn_pre_nms_top_n_test=30,
        rpn_post_nms_top_n_test=10,
        box_detections_per_img=5,
    )


def _retinanet():
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import mobilenet_backbone

    backbone = mobilenet_backbone(
        backbone_name="mobilenet_v3_small", weights=None, fpn=True, trainable_layers=6
    )
    anchors = AnchorGenerator(((16,), (32,), (64,)), ((0.5, 1.0, 2.0),) * 3)
    return RetinaNet(
        backbone,
        3,
        anchor_generator=anchors,
        min_size=64,
        max_size=64,
        score_thresh=0.0,
        topk_candidates=20,
        detections_per_img=5,
    )


def _fcos():
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import mobilenet_backbone

    backbone = mobilenet_backbone(
        backbone_name="mobilenet_v3_small", weights=None, fpn=True, trainable_layers=6
    )
    anchors = AnchorGenerator(((8,), (16,), (32,)), ((1.0,),) * 3)
    return FCOS(
        backbone,
        3,
        anchor_generator=anchors,
        min_size=64,
        max_size=64,
        score_thresh=0.0,
        topk_candidates=20,
        detections_per_img=5,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("build", "layer"),
    [
        (_faster_rcnn, "backbone.body.16"),
        (_retinanet, "backbone.fpn.layer_blocks.1"),
        (_fcos, "backbone.fpn.layer_blocks.1"),
    ],
    ids=["faster_rcnn", "retinanet", "fcos"],
)
def test_gradcam_and_drise_on_torchvision_detectors(unchanged, build, layer):
    torch.manual_seed(0)
    model = build().train()  # handed back in training mode, as it came
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with unchanged(model, images):
        cam = convlens.explain(model, images, "gradcam", target=detection(0), layer=layer)
        drise = convlens.explain(model, images, "drise", target=detection(0), n_masks=6, cells=4)
    model.eval()
    with torch.no_grad():
        first = model(images)[0]
    for found in (cam, drise):
        assert found.maps.shape == (1, 64, 64) and bool(found.maps.isfinite().all())
        assert found.scores.tolist() == pytest.approx([float(first["scores"][0])], rel=1e-4)
        assert torch.allclose(found.extras["box"][0], first["boxes"][0], atol=1e-4)
        assert int(found.class_ids[0]) == int(first["labels"][0])
    assert float(cam.maps.min()) >= 0 and float(drise.maps.max()) > 0
    assert box_iou(first["boxes"][:1], first["boxes"][0]).item() == pytest.approx(1)
