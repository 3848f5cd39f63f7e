"""Images with known classes, boxes and (optionally) masks, ready for a model.

Sources: the synthetic shapes (`convlens.data.synthetic`), the multi-object scenes
(`convlens.data.scenes`: one row per present class, see `scene_ground_truth`), or a user's
annotation file:

- simple JSON: ``{"images": [{"file": "a.jpg", "class": 3, "boxes": [[x0, y0, x1, y1]],
  "mask": "a_mask.png"}]}`` (boxes in pixels of the original image, x1/y1 exclusive, each
  inside the image; ``mask`` optional, an image of the same size whose pixels with any
  non-zero value are the object, see `mask_pixels`; give a mask for every image or for
  none);
- COCO instances JSON (``images``, ``annotations`` with ``bbox = [x, y, w, h]``,
  ``categories``). Category ids map to model classes by name when every category name is a
  model label, else to ``0..K-1`` in increasing id order. Each image gets the class of its
  largest annotation and the boxes of that class; COCO segmentations are not read.

Boxes and masks go through the same resize/crop as the pixels (the model's `Preprocess`), so
they line up with maps at input resolution. Problems in the file (a missing field, a box
outside its image, an empty mask, masks for only some images) raise `DataError` naming the
record and the fix; nothing is clipped or dropped silently (the one cut made on purpose: a
centre crop cuts the boxes with the image, see `_transform_boxes`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convlens.data.decode import ACCEPTED_FORMATS, unreadable_as_error
from convlens.data.preprocess import Preprocess
from convlens.errors import DataError, ImageLoadError, MetricError
from convlens.localize.boxes import check_boxes


@dataclass(frozen=True)
class GroundTruth:
    """``tensor``: model inputs Tensor[N, 3, H, W]; ``display``: uint8[N, H, W, 3] pixels the
    model sees; ``labels``: Tensor[N]; ``boxes``: N float Tensor[k, 4] (x0, y0, x1, y1,
    x1/y1 exclusive, input pixels); ``masks``: bool Tensor[N, H, W] or None; ``sources``;
    ``multilabel``: rows are (image, present class) pairs of a multi-label set (an image
    appears once per class it holds; the model decides each class by its own sigmoid)."""

    tensor: torch.Tensor
    display: np.ndarray
    labels: torch.Tensor
    boxes: list[torch.Tensor]
    masks: torch.Tensor | None
    sources: list[str]
    multilabel: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (record, reason) unread

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
    ``limit`` items), or from `SyntheticScenes` / `SceneBatch` (first ``limit`` images, one
    row per present class)."""
    from convlens.data.scenes import SceneBatch, SyntheticScenes
    from convlens.data.synthetic import SyntheticBatch, SyntheticShapes

    if isinstance(data, SyntheticScenes):
        data = data.batch(range(len(data) if limit is None else min(limit, len(data))))
    if isinstance(data, SceneBatch):
        count = len(data) if limit is None else min(limit, len(data))
        return scene_ground_truth(data, preprocess, count)
    if isinstance(data, GroundTruth):
        return data if limit is None else _first(data, limit)
    if isinstance(data, SyntheticShapes):
        data = data.batch(range(len(data) if limit is None else min(limit, len(data))))
    if isinstance(data, SyntheticBatch):
        return _first(synthetic_ground_truth(data, preprocess), limit or len(data))
    raise DataError(
        f"cannot evaluate on a {type(data).__name__}; pass a SyntheticShapes, a "
        "SyntheticBatch, a SyntheticScenes, a SceneBatch or a GroundTruth (see "
        "convlens.evaluate.ground_truth.load_annotations)"
    )


def synthetic_ground_truth(batch, preprocess: Preprocess) -> GroundTruth:
    """A `SyntheticBatch` as a GroundTruth; its pixels must already have the model's size."""
    if tuple(batch.images.shape[-2:]) != preprocess.height_width and preprocess.mode != "none":
        raise DataError(
            f"synthetic images are {tuple(batch.images.shape[-2:])} but the model expects "
            f"{preprocess.height_width}; make the dataset with size={preprocess.height_width[0]}"
        )
    display = batch.display
    return GroundTruth(
        tensor=preprocess.normalize(display),
        display=display,
        labels=batch.labels.clone(),
        boxes=[box[None].clone() for box in batch.boxes],
        masks=batch.masks.clone(),
        sources=[f"synthetic:{int(i)}" for i in batch.indices],
    )


def scene_ground_truth(batch, preprocess: Preprocess, count: int | None = None) -> GroundTruth:
    """The first ``count`` scenes of a `SceneBatch` as a multi-label GroundTruth: one row per
    (scene, present class), in scene order then class id, with that class's mask only (the
    pixels the class owns in the label map) and one box per 8-connected fragment of it (an
    object cut in two by an occluder has two boxes; a box metric takes the best match, so a
    map equal to the mask scores 1)."""
    from convlens.localize.boxes import mask_to_boxes

    if tuple(batch.images.shape[-2:]) != preprocess.height_width and preprocess.mode != "none":
        raise DataError(
            f"scenes are {tuple(batch.images.shape[-2:])} but the model expects "
            f"{preprocess.height_width}; make them with size={preprocess.height_width[0]}"
        )
    count = len(batch) if count is None else count
    if count < 1:
        raise DataError(f"limit must be at least 1, got {count}")
    scene, label = torch.nonzero(batch.present[:count], as_tuple=True)
    display = batch.display[scene.numpy()]
    masks = batch.masks[scene, label].clone()
    return GroundTruth(
        tensor=preprocess.normalize(display),
        display=display,
        labels=label.clone(),
        boxes=[mask_to_boxes(mask, mode="all") for mask in masks],
        masks=masks,
        sources=[
            f"scene:{int(batch.indices[s])}:{int(k)}" for s, k in zip(scene, label, strict=True)
        ],
        multilabel=True,
    )


def _first(truth: GroundTruth, limit: int) -> GroundTruth:
    if limit < 1:
        raise DataError(f"limit must be at least 1, got {limit}")
    return GroundTruth(
        truth.tensor[:limit],
        truth.display[:limit],
        truth.labels[:limit],
        truth.boxes[:limit],
        None if truth.masks is None else truth.masks[:limit],
        truth.sources[:limit],
        truth.multilabel,
    )


def load_annotations(
    path: str | Path,
    preprocess: Preprocess,
    images_dir: str | Path | None = None,
    labels: tuple[str, ...] | None = None,
    limit: int | None = None,
) -> GroundTruth:
    """Read a simple or COCO annotation JSON (see module docstring). Image files are looked
    up relative to ``images_dir`` (default: the JSON's folder). A malformed file, a box
    outside its image, an empty mask or masks given for only some images raise `DataError`
    naming the record and the fix."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"could not read annotations {path}: {error}") from error
    folder = Path(images_dir) if images_dir is not None else path.parent
    if isinstance(document, dict) and "annotations" in document and "categories" in document:
        records = _coco_records(document, labels, path.name)
    elif isinstance(document, dict) and isinstance(document.get("images"), list):
        records = [
            _simple_record(entry, f"{path.name}: image entry {index}")
            for index, entry in enumerate(document["images"])
        ]
    else:
        raise DataError(
            f"{path} is neither a COCO instances file nor {{'images': [{{'file', 'class', "
            "'boxes'}]}}; see docs/evaluation.md for the format"
        )
    if limit is not None:
        records = records[:limit]
    if not records:
        raise DataError(f"{path} lists no annotated images")
    return _load_records(records, folder, preprocess)


def _simple_record(entry: dict, where: str) -> dict:
    try:
        boxes = [[float(v) for v in box] for box in entry["boxes"]]
        record = {"file": str(entry["file"]), "class": int(entry["class"]), "boxes": boxes}
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"{where} needs 'file', 'class' (int) and 'boxes' ([[x0, y0, x1, y1]]): {error!r}"
        ) from error
    if any(len(box) != 4 for box in boxes) or not boxes:
        raise DataError(f"{where}: every box needs 4 numbers, and one box at least")
    mask = entry.get("mask")
    record["mask"] = None if mask is None else str(mask)
    record["where"] = f"{where} ({record['file']})"
    return record


COCO_FIELDS = (
    "a COCO instances file needs 'images' [{'id', 'file_name'}], 'annotations' "
    "[{'image_id', 'category_id', 'bbox': [x, y, width, height]}] and 'categories' [{'id'}]"
)


def _need(entry, key: str, where: str):
    """``entry[key]``, or a `DataError` naming the record and the COCO fields."""
    if not isinstance(entry, dict) or key not in entry:
        raise DataError(f"{where} has no {key!r}; {COCO_FIELDS}")
    return entry[key]


def _coco_bbox(annotation: dict, where: str) -> list[float]:
    """``[x, y, w, h]`` as the corner box ``[x, y, x + w, y + h]``."""
    bbox = _need(annotation, "bbox", where)
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError) as error:
        raise DataError(f"{where}: 'bbox' must be [x, y, width, height], got {bbox!r}") from error
    return [x, y, x + w, y + h]


def _coco_records(document: dict, labels: tuple[str, ...] | None, source: str) -> list[dict]:
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise DataError(f"{source}: {key!r} must be a list; {COCO_FIELDS}")
    categories = document["categories"]
    ids = [_need(c, "id", f"{source}: category {k}") for k, c in enumerate(categories)]
    names = [c.get("name") for c in categories]
    if labels is not None and names and all(name in labels for name in names):
        class_of = {i: labels.index(name) for i, name in zip(ids, names, strict=True)}
    else:
        class_of = {i: index for index, i in enumerate(sorted(ids))}
    by_image: dict = {}
    for k, annotation in enumerate(document["annotations"]):
        where = f"{source}: annotation {k}"
        category = _need(annotation, "category_id", where)
        if category not in class_of:
            raise DataError(f"{where}: category_id {category!r} is not in 'categories'")
        box = _coco_bbox(annotation, where)
        by_image.setdefault(_need(annotation, "image_id", where), []).append((category, box))
    records = []
    for k, image in enumerate(document["images"]):
        where = f"{source}: image {k}"
        annotations = by_image.get(_need(image, "id", where), [])
        file = str(_need(image, "file_name", where))
        if not annotations:
            continue
        largest, _ = max(annotations, key=lambda a: (a[1][2] - a[1][0]) * (a[1][3] - a[1][1]))
        records.append(
            {
                "file": file,
                "class": class_of[largest],
                "boxes": [box for category, box in annotations if category == largest],
                "mask": None,
                "where": f"{where} ({file})",
            }
        )
    return records


def _load_records(records: list[dict], folder: Path, preprocess: Preprocess) -> GroundTruth:
    with_mask = [bool(record.get("mask")) for record in records]
    if any(with_mask) and not all(with_mask):
        missing = [r["where"] for r, has in zip(records, with_mask, strict=True) if not has]
        raise DataError(
            f"{len(missing)} of {len(records)} images have no 'mask' ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}) while the others do; give every image a "
            "mask, or none (then mask_iou is not scored and the pointing game uses the boxes)"
        )
    displays, labels, boxes, masks, sources, skipped = [], [], [], [], [], []
    for record in records:
        try:
            image = _open(folder / record["file"])
        except ImageLoadError as error:  # one unreadable image is skipped, not the run
            skipped.append((record["where"], str(error)))
            continue
        displays.append(preprocess.display(image))
        labels.append(record["class"])
        boxes.append(_transform_boxes(record["boxes"], image.size, preprocess, record["where"]))
        if record.get("mask"):
            masks.append(
                _read_mask(folder / record["mask"], image.size, preprocess, record["where"])
            )
        sources.append(record["file"])
    if not displays:
        reasons = "; ".join(f"{where}: {reason}" for where, reason in skipped[:3])
        raise DataError(f"none of the annotated images could be read ({reasons})")
    display = np.stack(displays)
    return GroundTruth(
        tensor=preprocess.normalize(display),
        display=display,
        labels=torch.tensor(labels),
        boxes=boxes,
        masks=torch.stack(masks) if masks else None,
        sources=sources,
        skipped=skipped,
    )


def _open(path: Path, mode: str | None = "RGB") -> Image.Image:
    """The image at ``path``, loaded, converted to ``mode`` (None: its own mode); no EXIF
    rotation, since annotations give the stored pixels. `ImageLoadError` when unreadable."""
    with unreadable_as_error(str(path)), Image.open(path, formats=ACCEPTED_FORMATS) as image:
        image.load()
        return image.convert(mode) if mode else image.copy()


def _transform_boxes(boxes, size, preprocess: Preprocess, where: str) -> torch.Tensor:
    """Boxes in the original image's pixels (``size = (width, height)``; each must lie
    inside it) to boxes in the model's input pixels, through `Preprocess.resize_crop`. With
    ``center_crop`` the part of a box the crop cuts away is cut from the box too, and a box
    wholly outside the crop (an object the model never sees) is left out."""
    width, height = size
    try:
        result = check_boxes(torch.tensor(boxes), image_size=(height, width), name="box")
    except MetricError as error:
        raise DataError(
            f"{where}: {error}; boxes are (x0, y0, x1, y1) in the original image's pixels, "
            "x1/y1 exclusive: fix the annotation"
        ) from error
    (scaled_w, scaled_h), (left, top) = preprocess.resize_crop(size)
    out_h, out_w = (height, width) if preprocess.mode == "none" else preprocess.height_width
    sx, sy = scaled_w / width, scaled_h / height
    result = result * torch.tensor([sx, sy, sx, sy]) - torch.tensor([left, top, left, top])
    result[:, 0::2] = result[:, 0::2].clamp(0, out_w)
    result[:, 1::2] = result[:, 1::2].clamp(0, out_h)
    result = result[(result[:, 2] > result[:, 0]) & (result[:, 3] > result[:, 1])]
    if len(result) == 0:
        raise DataError(
            f"{where}: every box lies outside the model's centre crop, so the model never "
            "sees the object; drop this image or use a model preprocess without cropping"
        )
    return result


def mask_pixels(image: Image.Image) -> np.ndarray:
    """bool ``[H, W]``: the object pixels of a mask image, those with any non-zero value in
    any band, alpha ignored. Works in every mode: ``1``, ``L``, ``I;16``, ``I``, ``F``,
    ``P`` (by palette index, 0 = background), ``RGB``, ``RGBA``, ``LA``; colour spaces whose
    zero is not black (``YCbCr``, ``LAB``, ``HSV``, ``CMYK``) are read as RGB."""
    if image.mode in ("YCbCr", "LAB", "HSV", "CMYK"):
        image = image.convert("RGB")
    values = np.asarray(image)
    if values.ndim == 3:
        colour = [i for i, band in enumerate(image.getbands()) if band not in ("A", "a")]
        return (values[..., colour] != 0).any(axis=-1)
    return values != 0


def _read_mask(path: Path, size, preprocess: Preprocess, where: str) -> torch.Tensor:
    """The object mask of ``path`` (see `mask_pixels`) through the model's resize/crop
    (nearest neighbour): bool ``Tensor[H, W]``."""
    mask = _open(path, mode=None)
    if mask.size != size:
        raise DataError(
            f"{where}: mask {path} is {mask.size} pixels, its image is {size}; they must match"
        )
    pixels = mask_pixels(mask)
    if not pixels.any():
        raise DataError(
            f"{where}: mask {path} has no non-zero pixel; mark the object with non-zero values "
            "(alpha is ignored)"
        )
    nearest = dataclasses.replace(preprocess, interpolation="nearest")
    seen = nearest.display(Image.fromarray(pixels.astype(np.uint8) * 255))[..., 0] > 0
    if not seen.any():
        raise DataError(
            f"{where}: the mask's object lies outside the model's centre crop, so the model "
            "never sees it; drop this image or use a model preprocess without cropping"
        )
    return torch.from_numpy(seen)
