"""Does the map of one detection lie in that detection's box? Measured on held-out
synthetic scenes with a detector (by default the shipped ``synthetic-detector``).

For each scene, detection 0 (`convlens.detection(0)`) is explained and its map ``M`` (raw,
clamped at 0) is scored by its positive mass inside the detection's own box ``b``:

    mass(M, b) = sum_{u in b} M(u) / sum_u M(u)      (0 for a map without positive mass)

where ``u in b`` means the pixel's centre lies in the box (clipped to the image). Floors:
``area`` = the box's share of the image's pixels (what a constant map scores), and
``center`` = the mass of ``floor:center`` (a centred Gaussian, `convlens.evaluate.floors`)
in the same box. ``margin`` = mean mass minus mean area share. ``correct``: whether the
detection matches the true box of its class with IoU >= 0.5 (its class present), so the
result can be read on correct detections only.
"""

from __future__ import annotations

import torch

from convlens.attribution.explain import explain
from convlens.data.scenes import SyntheticScenes
from convlens.data.synthetic import TEST_SEED
from convlens.detections import box_iou, detection
from convlens.evaluate.floors import floor_maps
from convlens.models.loading import LoadedModel


def box_pixels(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bool ``Tensor[N, H, W]``: the pixels whose centre lies in each box of ``boxes``
    ``Tensor[N, 4]`` (``(x0, y0, x1, y1)``, continuous pixel coordinates)."""
    ys = torch.arange(height, dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, None, :] + 0.5
    x0, y0, x1, y1 = (boxes.float()[:, k, None, None] for k in range(4))
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


def mass_in_boxes(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``Tensor[N]``: each map's positive mass inside its box, as a share of its positive
    mass (0 for a map with none). ``maps``: ``Tensor[N, H, W]``; ``boxes``: ``Tensor[N, 4]``."""
    positive = maps.float().clamp_min(0)
    inside = box_pixels(boxes, *maps.shape[-2:])
    total = positive.sum((1, 2))
    share = (positive * inside).sum((1, 2)) / total.clamp_min(1e-30)
    return torch.where(total > 0, share, torch.zeros_like(share))


def detection_mass(
    model: LoadedModel,
    count: int = 100,
    method: str = "gradcam",
    layer: str | None = None,
    seed: int = TEST_SEED,
    start: int = 0,
    **options,
) -> dict:
    """Explain detection 0 of scenes ``start .. start+count-1`` of ``SyntheticScenes(seed)``
    with ``method`` (one scene per call) and score it (module docstring). Returns per-scene
    ``mass``, ``area``, ``center`` and ``correct`` (``Tensor[count]``) and the summary
    ``mean_mass``, ``mean_area``, ``mean_center``, ``margin`` (mass - area), ``wins`` (share
    of scenes with mass > area), each also over the correct detections only (``*_correct``),
    and ``correct_share``."""
    size = model.preprocess.height_width
    scenes = SyntheticScenes(count, seed=seed, size=size[0], start=start).batch()
    gaussians = floor_maps("floor:center", scenes.images)
    mass, area, center, correct = [], [], [], []
    for row in range(count):
        images = model.preprocess.normalize(scenes.display[row : row + 1])
        found = explain(model, images, method, detection(0), layer, **options)
        box = found.extras["box"].reshape(1, 4)
        mass.append(float(mass_in_boxes(found.maps, box)[0]))
        area.append(float(box_pixels(box, *size).float().mean()))
        center.append(float(mass_in_boxes(gaussians[row : row + 1], box)[0]))
        label = int(found.class_ids[0])
        iou = float(box_iou(box, scenes.boxes[row, label])[0])
        correct.append(bool(scenes.present[row, label]) and iou >= 0.5)
    record = {
        "mass": torch.tensor(mass),
        "area": torch.tensor(area),
        "center": torch.tensor(center),
        "correct": torch.tensor(correct),
    }
    summary = _summary(record, torch.ones(count, dtype=torch.bool), "")
    summary |= _summary(record, record["correct"], "_correct")
    return record | summary | {"correct_share": float(record["correct"].float().mean())}


def _summary(record: dict, rows: torch.Tensor, suffix: str) -> dict:
    mass, area, center = (record[k][rows] for k in ("mass", "area", "center"))
    if not len(mass):
        return {}
    return {
        f"mean_mass{suffix}": float(mass.mean()),
        f"mean_area{suffix}": float(area.mean()),
        f"mean_center{suffix}": float(center.mean()),
        f"margin{suffix}": float((mass - area).mean()),
        f"wins{suffix}": float((mass > area).float().mean()),
        f"count{suffix}": int(rows.sum()),
    }
