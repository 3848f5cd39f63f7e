"""Maps to masks and boxes, and how well they localise: box IoU, localisation accuracy,
MaxBoxAcc (V1/V2), pixel accuracy, mask IoU, the pointing game; segmentation scores
(pixel accuracy, mean/frequency-weighted/per-class IoU, boundary F1) of label maps.

Boxes are float ``(x0, y0, x1, y1)`` in pixels with x1/y1 EXCLUSIVE. Maps are min-max
normalised before thresholding (see `threshold_maps`). Formulas and citations:
docs/metrics.md.
"""

from convlens.localize.boxes import (
    box_area,
    box_iou,
    check_boxes,
    maps_to_boxes,
    mask_to_boxes,
)
from convlens.localize.masks import (
    check_maps,
    check_masks,
    connected_components,
    constant_maps,
    mask_iou,
    pixel_accuracy,
    threshold_maps,
)
from convlens.localize.metrics import (
    localization_accuracy,
    localization_hits,
    max_box_acc,
    pointing_game,
    pointing_points,
)
from convlens.localize.segmentation import ConfusionMatrix, segmentation_scores
from convlens.maps import resize_maps  # re-exported: boxes of maps resized first

__all__ = [
    "ConfusionMatrix",
    "box_area",
    "box_iou",
    "check_boxes",
    "check_maps",
    "check_masks",
    "connected_components",
    "constant_maps",
    "localization_accuracy",
    "localization_hits",
    "mask_iou",
    "mask_to_boxes",
    "maps_to_boxes",
    "max_box_acc",
    "pixel_accuracy",
    "pointing_game",
    "pointing_points",
    "resize_maps",
    "segmentation_scores",
    "threshold_maps",
]
