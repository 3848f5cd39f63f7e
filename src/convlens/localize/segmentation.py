"""Segmentation scores from label maps: pixel accuracy, mean IoU, frequency-weighted IoU,
per-class IoU and the boundary F1 score, one-shot or accumulated over a stream.

Label maps are ``LongTensor[B, H, W]`` of class ids ``0 .. K-1`` (``K = num_classes``); the
truth may also hold ``ignore_index`` (pixels left out of every score). With the confusion
matrix ``C[t, p]`` (pixels of true class ``t`` predicted as ``p``), ``T_c`` its row sums
and ``P_c`` its column sums:

- pixel accuracy = ``sum_c C[c, c] / sum C``;
- ``IoU_c = C[c, c] / (T_c + P_c - C[c, c])``, NaN for a class absent from both (neither
  true nor predicted anywhere); mean IoU averages the defined ones;
- frequency-weighted IoU = ``sum_c (T_c / sum C) * IoU_c`` (Long et al. 2015, FCN);
- boundary F1 (Csurka et al. 2013, "What is a good evaluation measure for semantic
  segmentation?"): the boundary of a class's mask is its pixels with a 4-neighbour of
  another label (the image edge is no boundary). A predicted boundary pixel is matched when
  a true boundary pixel of the same class lies within ``tolerance`` pixels (Euclidean), and
  the other way round for recall. Per class, precision and recall pool the counts over all
  images; F1 = 2PR / (P + R), NaN for a class with no boundary in either; ``boundary_f1``
  averages the defined classes.

Every score is a sum of per-image counts, so a `ConfusionMatrix` fed a stream in any chunks
gives exactly the one-shot scores. Formulas: docs/segmentation.md.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from convlens.errors import MetricError


class ConfusionMatrix:
    """Accumulate segmentation counts over a stream of ``(pred, truth)`` label-map batches.

    ``matrix``: ``LongTensor[K, K]`` with rows = true class, columns = predicted class.
    ``scores()`` gives the dict of `segmentation_scores`.
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None = None, tolerance: float = 2.0
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise MetricError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise MetricError(
                f"ignore_index {ignore_index} is a class id (0..{num_classes - 1}); use a value "
                "outside the classes, such as 255 or -1"
            )
        if not tolerance >= 0:
            raise MetricError(f"the boundary tolerance must be >= 0 pixels, got {tolerance}")
        self.num_classes, self.ignore_index, self.tolerance = num_classes, ignore_index, tolerance
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
        # per class: matched predicted boundary, predicted boundary, matched true, true
        self.boundary = np.zeros((num_classes, 4), dtype=np.int64)

    def update(self, pred: torch.Tensor, truth: torch.Tensor) -> ConfusionMatrix:
        """Add a batch of label maps ``LongTensor[B, H, W]`` (or one ``[H, W]``); returns self."""
        pred, truth = self._check(pred, truth)
        valid = truth != self.ignore_index if self.ignore_index is not None else None
        pairs = truth * self.num_classes + pred
        if valid is not None:
            pairs = pairs[valid]
        counts = torch.bincount(pairs.flatten(), minlength=self.num_classes**2)
        self.matrix += counts.view(self.num_classes, self.num_classes).cpu()
        for image in range(len(pred)):
            keep = None if valid is None else valid[image].cpu().numpy()
            self.boundary += _boundary_counts(
                pred[image].cpu().numpy(), truth[image].cpu().numpy(), keep, self
            )
        return self

    def scores(self) -> dict:
        """``pixel_accuracy``, ``mean_iou``, ``fw_iou`` (floats in [0, 1], NaN when no pixel
        was counted), ``per_class_iou`` (list of K floats, NaN for a class absent from both),
        ``boundary_f1`` (float) and ``per_class_boundary_f1`` (list), ``pixels`` (count)."""
        matrix = self.matrix.double()
        total = float(matrix.sum())
        hits = matrix.diagonal()
        true_count, pred_count = matrix.sum(1), matrix.sum(0)
        union = true_count + pred_count - hits
        iou = torch.where(union > 0, hits / union.clamp_min(1), torch.nan)
        boundary_f1 = [_f1(*row) for row in self.boundary.tolist()]
        return {
            "pixel_accuracy": float(hits.sum()) / total if total else math.nan,
            "mean_iou": _nanmean(iou.tolist()),
            "fw_iou": float((true_count * iou.nan_to_num()).sum()) / total if total else math.nan,
            "per_class_iou": iou.tolist(),
            "boundary_f1": _nanmean(boundary_f1),
            "per_class_boundary_f1": boundary_f1,
            "pixels": int(total),
        }

    def _check(self, pred: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for name, maps in (("pred", pred), ("truth", truth)):
            if not isinstance(maps, torch.Tensor) or maps.dim() not in (2, 3):
                shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
                raise MetricError(f"{name} must be a label map LongTensor[B, H, W], got {shape}")
            if maps.is_floating_point() or maps.dtype == torch.bool:
                raise MetricError(
                    f"{name} must hold integer class ids, got {maps.dtype}; take "
                    "logits.argmax(1) of a segmentation output"
                )
        if pred.shape != truth.shape:
            raise MetricError(
                f"pred is {tuple(pred.shape)} but truth is {tuple(truth.shape)}; pass label "
                "maps of the same size (resize the prediction's logits before argmax)"
            )
        pred, truth = pred.long(), truth.long().to(pred.device)
        if pred.dim() == 2:
            pred, truth = pred[None], truth[None]
        _check_range(pred, "pred", self.num_classes, None)
        _check_range(truth, "truth", self.num_classes, self.ignore_index)
        return pred, truth


def segmentation_scores(
    pred: torch.Tensor,
    truth: torch.Tensor,
    num_classes: int,
    ignore_index: int | None = None,
    tolerance: float = 2.0,
) -> dict:
    """Scores of predicted label maps against true ones (see the module docstring).

    Args:
        pred: ``LongTensor[B, H, W]`` predicted class ids in ``0 .. num_classes - 1``.
        truth: ``LongTensor[B, H, W]`` true class ids, or ``ignore_index``.
        tolerance: boundary F1 match distance in pixels (>= 0).

    Returns the dict of `ConfusionMatrix.scores`.
    """
    return ConfusionMatrix(num_classes, ignore_index, tolerance).update(pred, truth).scores()


def _check_range(maps: torch.Tensor, name: str, num_classes: int, ignore: int | None) -> None:
    bad = (maps < 0) | (maps >= num_classes)
    if ignore is not None:
        bad &= maps != ignore
    if bool(bad.any()):
        allowed = f"0..{num_classes - 1}" + (f" or {ignore}" if ignore is not None else "")
        raise MetricError(
            f"{name} holds class id {int(maps[bad][0])}, outside {allowed}; check num_classes"
            + ("" if ignore is not None or name == "pred" else " or pass ignore_index")
        )


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """bool[H, W]: pixels with a 4-neighbour (inside the image) of another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:] != labels[:-1]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def _boundary_counts(
    pred: np.ndarray, truth: np.ndarray, keep: np.ndarray | None, matrix: ConfusionMatrix
) -> np.ndarray:
    """int[K, 4] per class: matched / all predicted boundary pixels, matched / all true ones."""
    counts = np.zeros((matrix.num_classes, 4), dtype=np.int64)
    pred_edge, truth_edge = label_boundaries(pred), label_boundaries(truth)
    if keep is not None:
        pred_edge &= keep
        truth_edge &= keep
    for cls in np.union1d(pred[pred_edge], truth[truth_edge]):
        if matrix.ignore_index is not None and cls == matrix.ignore_index:
            continue
        pred_c, truth_c = pred_edge & (pred == cls), truth_edge & (truth == cls)
        counts[cls] = (
            _matched(pred_c, truth_c, matrix.tolerance),
            pred_c.sum(),
            _matched(truth_c, pred_c, matrix.tolerance),
            truth_c.sum(),
        )
    return counts


def _matched(points: np.ndarray, reference: np.ndarray, tolerance: float) -> int:
    """How many True pixels of ``points`` lie within ``tolerance`` of a True pixel of
    ``reference`` (none when the reference is empty)."""
    if not points.any() or not reference.any():
        return 0
    distance = ndimage.distance_transform_edt(~reference)
    return int((distance[points] <= tolerance).sum())


def _f1(matched_pred: int, pred: int, matched_truth: int, truth: int) -> float:
    if pred == 0 and truth == 0:
        return math.nan
    precision = matched_pred / pred if pred else 0.0
    recall = matched_truth / truth if truth else 0.0
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _nanmean(values: list[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else math.nan
