"""Detector outputs and the detection target: what score is explained for one detection.

A detector here is any model whose output is a list (one entry per image) of dicts holding
``boxes`` ``Tensor[D, 4]`` (``(x0, y0, x1, y1)`` in input pixels), ``labels``
``LongTensor[D]`` and ``scores`` ``Tensor[D]`` -- what torchvision's Faster R-CNN, RetinaNet,
FCOS and SSD/SSDlite return in eval mode, and what convlens's ``synthetic-detector`` returns.
Optional entries used where present: ``class_scores`` ``Tensor[D, K]`` (each detection's
class-probability vector) and ``objectness`` ``Tensor[D]`` (D-RISE reads them).

`detection(index)` is the target (``--target det:N`` on the command line). For each image it
refers to one *reference detection*: the ``index``-th detection of the model's output on the
unmodified image (in the model's own order; torchvision sorts by decreasing score). For an
output ``{boxes b_j, labels l_j, scores s_j}`` the explained score of an image is

    S = s_m * IoU(b_m, b_ref),   m = argmax_{j : l_j = l_ref, IoU(b_j, b_ref) > t} IoU(b_j, b_ref)

and ``S = 0`` when no box of the reference label overlaps the reference box by more than
``t = iou_threshold`` (default 0.5). On the unmodified image ``m`` is the reference itself,
so ``S`` is its class score; on a perturbed image ``S`` falls both when the detection's
class score falls and when its box moves. ``S`` is differentiable in the output's scores
and boxes (the reference box is a constant).

This follows pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` in matching the reference box
by IoU above a threshold with the same label, with two differences, both deliberate: that
target takes the highest-IoU box over all labels and then requires its label to match (a
better-overlapping box of another class zeroes the score), and it ADDS ``IoU + score``; here
the best box among those of the same label is taken and the two are MULTIPLIED, so ``S``
is 0 whenever either the class evidence or the box is gone, and equals the class score at
the reference.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from convlens.errors import TargetError

KEYS = ("boxes", "labels", "scores")
DETECTION_TEXT = re.compile(r"^det:(\d+)$")


def is_detections(output: object) -> bool:
    """Whether ``output`` is a detector's output: a list or tuple of dicts, each with
    ``boxes``, ``labels`` and ``scores``."""
    return (
        isinstance(output, (list, tuple))
        and len(output) > 0
        and all(isinstance(item, Mapping) and all(k in item for k in KEYS) for item in output)
    )


def check_detections(output: object) -> Sequence[Mapping]:
    """``output`` if it is a detector's output (`is_detections`), else `TargetError`."""
    if not is_detections(output):
        kind = type(output).__name__
        if isinstance(output, torch.Tensor):
            kind = f"a Tensor {tuple(output.shape)}"
        raise TargetError(
            f"a detection target needs a detector's output (a list of dicts with boxes, labels "
            f"and scores, one per image, as torchvision detectors return in eval mode), got "
            f"{kind}; use a class target for classifiers"
        )
    return output


def detach_output(output):
    """``output`` detached: a tensor, or a detector's list of dicts with each tensor
    detached; anything else as it is."""
    if isinstance(output, torch.Tensor):
        return output.detach()
    if is_detections(output):
        return [
            {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in item.items()}
            for item in output
        ]
    return output


def box_iou(boxes: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """IoU of each of ``boxes`` ``Tensor[D, 4]`` with one ``box`` ``Tensor[4]`` (both
    ``(x0, y0, x1, y1)``): ``Tensor[D]`` in [0, 1], 0 for boxes of no area."""
    top_left = torch.maximum(boxes[:, :2], box[:2])
    bottom_right = torch.minimum(boxes[:, 2:], box[2:])
    overlap = (bottom_right - top_left).clamp_min(0).prod(dim=1)
    areas = (boxes[:, 2:] - boxes[:, :2]).clamp_min(0).prod(dim=1)
    area = (box[2:] - box[:2]).clamp_min(0).prod()
    union = areas + area - overlap
    return torch.where(union > 0, overlap / union.clamp_min(1e-12), torch.zeros_like(union))


def matched_score(
    item: Mapping, box: torch.Tensor, label: int, iou_threshold: float
) -> torch.Tensor:
    """The explained score of one image's detections ``item`` for the reference ``(box,
    label)``: ``s_m * IoU(b_m, box)`` of the highest-IoU box ``m`` of label ``label`` with IoU
    above ``iou_threshold``, else 0 (a 0-d tensor, differentiable in ``item``)."""
    boxes, labels, scores = item["boxes"], item["labels"], item["scores"]
    if len(boxes) == 0:
        return scores.sum() * 0  # keeps the graph (and dtype, device) of an empty output
    ious = box_iou(boxes, box.to(boxes))
    eligible = (labels == label) & (ious > iou_threshold)
    if not bool(eligible.any()):
        return scores.sum() * 0
    best = torch.where(eligible, ious.detach(), torch.full_like(ious, -1)).argmax()
    return scores[best] * ious[best]


def reference_detections(output: object, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``index``-th detection of each image of a detector's ``output``: ``(boxes
    Tensor[B, 4], labels LongTensor[B])`` (detached, CPU). `TargetError` when an image has
    fewer detections."""
    items = check_detections(output)
    boxes, labels = [], []
    for row, item in enumerate(items):
        count = len(item["boxes"])
        if index >= count:
            raise TargetError(
                f"det:{index} asked for detection {index} but image {row} has {count} "
                f"detection{'s' if count != 1 else ''}; pick an index below {count} (or lower "
                "the detector's score threshold)"
            )
        boxes.append(item["boxes"][index].detach().float().cpu())
        labels.append(int(item["labels"][index]))
    return torch.stack(boxes), torch.tensor(labels, dtype=torch.long)


@dataclass(frozen=True)
class Detection:
    """The detection target (see the module docstring); a callable target
    ``f(output) -> Tensor[B]`` on a detector's output.

    ``references``: ``(boxes Tensor[B, 4], labels LongTensor[B])`` pinned from the output on
    the unmodified images (`pin`), so that perturbed copies are scored against the clean
    detection; None (unpinned): the output it is called on is taken as the clean one (right
    for methods that score the unmodified images only: gradients, Grad-CAM).
    """

    index: int = 0
    iou_threshold: float = 0.5
    references: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def __name__(self) -> str:  # noqa: PLW3201 (what `resolve_targets` names the spec by)
        return f"det:{self.index}"

    def __str__(self) -> str:
        return f"det:{self.index}"

    def pin(self, output: object) -> Detection:
        """This target with its reference detections read from ``output`` (the output on
        the unmodified images); already pinned: itself."""
        if self.references is not None:
            return self
        references = reference_detections(output, self.index)
        return Detection(self.index, self.iou_threshold, references)

    def __call__(self, output: object) -> torch.Tensor:
        items = check_detections(output)
        boxes, labels = self.references or reference_detections(output, self.index)
        if len(boxes) != len(items):
            raise TargetError(
                f"the detection target was pinned on {len(boxes)} images but scores {len(items)}"
            )
        return torch.stack(
            [
                matched_score(item, boxes[row], int(labels[row]), self.iou_threshold)
                for row, item in enumerate(items)
            ]
        )


def detection(index: int = 0, iou_threshold: float = 0.5) -> Detection:
    """Target: detection ``index`` of each image (0 = the detector's first, for torchvision
    its highest-scoring), scored as its class score times its box's IoU with the reference
    box (the module docstring gives the exact rule). ``--target det:N`` on the command line.
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise TargetError(f"a detection index is an integer >= 0, got {index!r}")
    if not 0 <= float(iou_threshold) < 1:
        raise TargetError(f"iou_threshold must be in [0, 1), got {iou_threshold!r}")
    return Detection(index, float(iou_threshold))


def parse_detection(text: str) -> Detection | None:
    """`detection(N)` for the text ``det:N``, else None."""
    match = DETECTION_TEXT.match(text.strip())
    return detection(int(match[1])) if match else None


def top_detections(output: object, k: int = 5) -> list[list[dict]]:
    """Per image, its first ``k`` detections (the model's order) as ``{"class_id", "score",
    "box"}`` dicts (box as ``[x0, y0, x1, y1]`` floats)."""
    return [
        [
            {
                "class_id": int(label),
                "score": float(score),
                "box": [float(v) for v in box.tolist()],
            }
            for box, label, score in zip(
                item["boxes"][:k], item["labels"][:k], item["scores"][:k], strict=True
            )
        ]
        for item in check_detections(output)
    ]
