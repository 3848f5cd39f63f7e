"""CAM crops (Zhou et al. 2016, section 4 on fine-grained recognition): box the object with
the class activation map, crop the image to the box, and classify the crop.

Each image's box comes from the map of its top-1 class (``box_class="predicted"``: no label
is used to find it) or of its true class (``"true"``): the map is thresholded at
``fraction`` of its range and the largest connected component boxed
(`convlens.localize.maps_to_boxes`, the CAM paper's rule with 0.2). The crop is resized back
to the model's input size (bilinear) and scored like the original.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convlens.analysis.scores import checked_labels, class_scores
from convlens.attribution.explain import explain
from convlens.errors import DataError
from convlens.localize.boxes import maps_to_boxes
from convlens.models.loading import LoadedModel, as_module

BOX_CLASSES = ("predicted", "true")


def crop_to_box(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each image ``Tensor[B, C, H, W]`` cut to its box ``(x0, y0, x1, y1)`` (float
    ``Tensor[B, 4]`` in pixels, x1/y1 exclusive, clipped to the image; rounded outwards)
    and resized back to ``H x W`` (bilinear). A box of the whole image returns the image."""
    if len(boxes) != len(images):
        raise DataError(f"{len(boxes)} boxes for {len(images)} images; pass one box each")
    height, width = images.shape[-2:]
    crops = []
    for image, box in zip(images, boxes, strict=True):
        x0, y0 = max(0, int(box[0].floor())), max(0, int(box[1].floor()))
        x1, y1 = min(width, int(box[2].ceil())), min(height, int(box[3].ceil()))
        if x1 <= x0 or y1 <= y0:
            raise DataError(f"box {box.tolist()} is empty inside a {width}x{height} image")
        part = image[None, :, y0:y1, x0:x1]
        crops.append(F.interpolate(part, (height, width), mode="bilinear", align_corners=False))
    return torch.cat(crops)


@dataclass(frozen=True)
class CamCrops:
    """Per image: its ``box`` (``Tensor[N, 4]``, x0 y0 x1 y1 in input pixels), true-class
    probability ``before``/``after`` cropping (``Tensor[N]``), top-1 class before/after
    (``LongTensor[N]``), ``labels`` and ``sources``."""

    method: str
    fraction: float
    box_class: str
    boxes: torch.Tensor
    before: torch.Tensor
    after: torch.Tensor
    predicted_before: torch.Tensor
    predicted_after: torch.Tensor
    labels: torch.Tensor
    sources: list[str]

    def record(self) -> dict:
        """JSON-ready: means and accuracies before/after, and each image's row."""
        rows = [
            {
                "source": source,
                "label": int(label),
                "box": [float(v) for v in box],
                "probability_before": float(p0),
                "probability_after": float(p1),
                "predicted_before": int(c0),
                "predicted_after": int(c1),
            }
            for source, label, box, p0, p1, c0, c1 in zip(
                self.sources,
                self.labels,
                self.boxes,
                self.before,
                self.after,
                self.predicted_before,
                self.predicted_after,
                strict=True,
            )
        ]
        return {
            "method": self.method,
            "fraction": self.fraction,
            "box_class": self.box_class,
            "mean_probability_before": float(self.before.mean()),
            "mean_probability_after": float(self.after.mean()),
            "accuracy_before": float((self.predicted_before == self.labels).float().mean()),
            "accuracy_after": float((self.predicted_after == self.labels).float().mean()),
            "images": rows,
        }


def cam_crops(
    model: nn.Module | LoadedModel,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: str = "cam",
    fraction: float = 0.2,
    box_class: str = "predicted",
    sources: Sequence[str] | None = None,
    batch_size: int = 32,
) -> CamCrops:
    """Crop each of ``inputs`` ``Tensor[N, 3, H, W]`` (normalised, class ids ``labels``
    ``LongTensor[N]``) to the box of its ``method`` map (default CAM; any map method of
    `convlens.list_methods`) and score the true class before and after. The model is
    borrowed and handed back unchanged.

    Example:
        >>> from convlens import load_model
        >>> from convlens.analysis import labelled_images
        >>> model = load_model("synthetic-shapes")
        >>> data = labelled_images("shapes-test:20", model.preprocess)
        >>> crops = cam_crops(model, data.inputs, data.labels)
        >>> crops.before.shape, crops.after.shape  # true-class probability per image
        (torch.Size([20]), torch.Size([20]))
    """
    if box_class not in BOX_CLASSES:
        raise DataError(f"box_class must be one of {', '.join(BOX_CLASSES)}, got {box_class!r}")
    labels = checked_labels(inputs, labels)
    module = as_module(model)
    before, predicted = class_scores(module, inputs, labels, batch_size)
    classes = predicted if box_class == "predicted" else labels
    maps = torch.cat(
        [
            explain(model, chunk, method, target=targets).maps
            for chunk, targets in zip(
                inputs.split(batch_size), classes.split(batch_size), strict=True
            )
        ]
    )
    boxes = _largest_boxes(maps, fraction, inputs.shape[-2:])
    after, predicted_after = class_scores(module, crop_to_box(inputs, boxes), labels, batch_size)
    return CamCrops(
        method,
        fraction,
        box_class,
        boxes,
        before,
        after,
        predicted,
        predicted_after,
        labels.clone(),
        list(sources) if sources is not None else [str(i) for i in range(len(inputs))],
    )


def _largest_boxes(maps: torch.Tensor, fraction: float, size) -> torch.Tensor:
    """One box per map (the largest component above ``fraction``); the whole image for a
    map with none (a constant map)."""
    height, width = size
    whole = torch.tensor([0.0, 0.0, float(width), float(height)])
    found = maps_to_boxes(maps.float(), fraction, mode="largest", upsample_to=(height, width))
    return torch.stack([boxes[0] if len(boxes) else whole for boxes in found])
