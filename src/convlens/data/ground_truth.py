"""Images with known classes, boxes and (optionally) masks, ready for a model.

Sources: the synthetic shapes (`convlens.data.synthetic`), or a user's annotation file:

- simple JSON: ``{"images": [{"file": "a.jpg", "class": 3, "boxes": [[x0, y0, x1, y1]],
  "mask": "a_mask.png"}]}`` (``mask`` optional: a PNG whose non-zero pixels are the object;
  boxes in pixels of the original image, x1/y1 exclusive);
- COCO instances JSON (``images``, ``annotations`` with ``bbox = [x, y, w, h]``,
  ``categories``). Category ids map to model classes by name when every category name is a
  model label, else to ``0..K-1`` in increasing id order. Each image gets the class of its
  largest annotation and the boxes of that class; COCO segmentations are not read.

Boxes and masks go through the same resize/crop as the pixels (the model's `Preprocess`), so
they line up with maps at input resolution.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convlens.errors import ConvlensError, ImageLoadError
from convlens.models.preprocess import Preprocess


@dataclass(frozen=True)
class GroundTruth:
    """``tensor``: model inputs Tensor[N, 3, H, W]; ``display``: uint8[N, H, W, 3] pixels the
    model sees; ``labels``: Tensor[N]; ``boxes``: N float Tensor[k, 4] (x0, y0, x1, y1,
    x1/y1 exclusive, input pixels); ``masks``: bool Tensor[N, H, W] or None; ``sources``."""

    tensor: torch.Tensor
    display: np.ndarray
    labels: torch.Tensor
    boxes: list[torch.Tensor]
    masks: torch.Tensor | None
    sources: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def point_masks(self) -> torch.Tensor:
        """bool Tensor[N, H, W] for the pointing game: the masks, or the union of the boxes."""
        if self.masks is not None:
            return self.masks
        height, width = self.tensor.shape[-2:]
        masks = torch.zeros(len(self), height, width, dtype=torch.bool)
        for n, boxes in enumerate(self.boxes):
            for x0, y0, x1, y1 in boxes.tolist():
                masks[n, int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
        return masks


def as_ground_truth(data, preprocess: Preprocess, limit: int | None = None) -> GroundTruth:
    """A `GroundTruth` from a GroundTruth, `SyntheticShapes` or `SyntheticBatch` (first
    ``limit`` items)."""
    from convlens.data.synthetic import SyntheticBatch, SyntheticShapes

    if isinstance(data, GroundTruth):
        return data if limit is None else _first(data, limit)
    if isinstance(data, SyntheticShapes):
        data = data.batch(range(len(data) if limit is None else min(limit, len(data))))
    if isinstance(data, SyntheticBatch):
        return _first(synthetic_ground_truth(data, preprocess), limit or len(data))
    raise ConvlensError(
        f"cannot evaluate on a {type(data).__name__}; pass a SyntheticShapes, a SyntheticBatch "
        "or a GroundTruth (see convlens.data.ground_truth.load_annotations)"
    )


def synthetic_ground_truth(batch, preprocess: Preprocess) -> GroundTruth:
    """A `SyntheticBatch` as a GroundTruth; its pixels must already have the model's size."""
    if tuple(batch.images.shape[-2:]) != preprocess.height_width and preprocess.mode != "none":
        raise ConvlensError(
            f"synthetic images are {tuple(batch.images.shape[-2:])} but the model expects "
            f"{preprocess.height_width}; make the dataset with size={preprocess.height_width[0]}"
        )
    display = (batch.images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return GroundTruth(
        tensor=preprocess.normalize(display),
        display=display,
        labels=batch.labels.clone(),
        boxes=[box[None].clone() for box in batch.boxes],
        masks=batch.masks.clone(),
        sources=[f"synthetic:{int(i)}" for i in batch.indices],
    )


def _first(truth: GroundTruth, limit: int) -> GroundTruth:
    if limit < 1:
        raise ConvlensError(f"limit must be at least 1, got {limit}")
    return GroundTruth(
        truth.tensor[:limit],
        truth.display[:limit],
        truth.labels[:limit],
        truth.boxes[:limit],
        None if truth.masks is None else truth.masks[:limit],
        truth.sources[:limit],
    )


def load_annotations(
    path: str | Path,
    preprocess: Preprocess,
    images_dir: str | Path | None = None,
    labels: tuple[str, ...] | None = None,
    limit: int | None = None,
) -> GroundTruth:
    """Read a simple or COCO annotation JSON (see module docstring). Image files are looked
    up relative to ``images_dir`` (default: the JSON's folder)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConvlensError(f"could not read annotations {path}: {error}") from error
    folder = Path(images_dir) if images_dir is not None else path.parent
    if isinstance(document, dict) and "annotations" in document and "categories" in document:
        records = _coco_records(document, labels)
    elif isinstance(document, dict) and isinstance(document.get("images"), list):
        records = [_simple_record(entry, index) for index, entry in enumerate(document["images"])]
    else:
        raise ConvlensError(
            f"{path} is neither a COCO instances file nor {{'images': [{{'file', 'class', "
            "'boxes'}]}}; see docs/evaluation.md for the format"
        )
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ConvlensError(f"{path} lists no annotated images")
    return _load_records(records, folder, preprocess)


def _simple_record(entry: dict, index: int) -> dict:
    try:
        boxes = [[float(v) for v in box] for box in entry["boxes"]]
        record = {"file": str(entry["file"]), "class": int(entry["class"]), "boxes": boxes}
    except (KeyError, TypeError, ValueError) as error:
        raise ConvlensError(
            f"image entry {index} needs 'file', 'class' (int) and 'boxes' ([[x0, y0, x1, y1]]): "
            f"{error!r}"
        ) from error
    if any(len(box) != 4 for box in boxes) or not boxes:
        raise ConvlensError(f"image entry {index}: every box needs 4 numbers, and one box at least")
    record["mask"] = entry.get("mask")
    return record


def _coco_records(document: dict, labels: tuple[str, ...] | None) -> list[dict]:
    categories = sorted(document["categories"], key=lambda c: c["id"])
    names = [c.get("name") for c in categories]
    if labels is not None and names and all(name in labels for name in names):
        class_of = {c["id"]: labels.index(c["name"]) for c in categories}
    else:
        class_of = {c["id"]: index for index, c in enumerate(categories)}
    by_image: dict = {}
    for annotation in document["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    records = []
    for image in document["images"]:
        annotations = by_image.get(image["id"], [])
        if not annotations:
            continue
        largest = max(annotations, key=lambda a: a["bbox"][2] * a["bbox"][3])
        same = [
            [x, y, x + w, y + h]
            for x, y, w, h in (
                a["bbox"] for a in annotations if a["category_id"] == largest["category_id"]
            )
        ]
        records.append(
            {
                "file": image["file_name"],
                "class": class_of[largest["category_id"]],
                "boxes": same,
                "mask": None,
            }
        )
    return records


def _load_records(records: list[dict], folder: Path, preprocess: Preprocess) -> GroundTruth:
    displays, labels, boxes, masks, sources = [], [], [], [], []
    have_masks = all(record.get("mask") for record in records)
    for record in records:
        image = _open(folder / record["file"])
        displays.append(preprocess.display(image))
        labels.append(record["class"])
        boxes.append(_transform_boxes(record["boxes"], image.size, preprocess, record["file"]))
        if have_masks:
            masks.append(_transform_mask(folder / record["mask"], image.size, preprocess))
        sources.append(record["file"])
    display = np.stack(displays)
    return GroundTruth(
        tensor=preprocess.normalize(display),
        display=display,
        labels=torch.tensor(labels),
        boxes=boxes,
        masks=torch.stack(masks) if have_masks else None,
        sources=sources,
    )


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except OSError as error:
        raise ImageLoadError(f"could not read image {path}: {error}") from error


def _geometry(size: tuple[int, int], preprocess: Preprocess) -> tuple[float, float, int, int]:
    """Scale (x, y) and crop offset (left, top) that `Preprocess.display` applies to an
    image of ``size = (width, height)``; mirrors its arithmetic."""
    width, height = size
    out_h, out_w = preprocess.height_width
    if preprocess.mode == "none":
        return 1.0, 1.0, 0, 0
    if preprocess.mode == "stretch":
        return out_w / width, out_h / height, 0, 0
    scale = max(out_h, out_w) / preprocess.crop_pct / min(size)
    scaled_w, scaled_h = max(out_w, round(width * scale)), max(out_h, round(height * scale))
    return scaled_w / width, scaled_h / height, (scaled_w - out_w) // 2, (scaled_h - out_h) // 2


def _transform_boxes(boxes, size, preprocess: Preprocess, source: str) -> torch.Tensor:
    sx, sy, left, top = _geometry(size, preprocess)
    out_h, out_w = preprocess.height_width if preprocess.mode != "none" else size[::-1]
    result = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    result = result * torch.tensor([sx, sy, sx, sy]) - torch.tensor([left, top, left, top])
    result[:, 0::2] = result[:, 0::2].clamp(0, out_w)
    result[:, 1::2] = result[:, 1::2].clamp(0, out_h)
    result = result[(result[:, 2] > result[:, 0]) & (result[:, 3] > result[:, 1])]
    if len(result) == 0:
        raise ConvlensError(
            f"{source}: no box is left inside the image after the model's resize/crop; check "
            "the boxes are (x0, y0, x1, y1) in the original image's pixels"
        )
    return result


def _transform_mask(path: Path, size, preprocess: Preprocess) -> torch.Tensor:
    mask = _open(path)
    if mask.size != size:
        raise ConvlensError(f"mask {path} is {mask.size}, its image is {size}; they must match")
    nearest = dataclasses.replace(preprocess, interpolation="nearest")
    return torch.from_numpy(nearest.display(mask)[..., 0] > 0)
