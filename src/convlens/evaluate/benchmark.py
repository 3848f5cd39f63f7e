"""The ground-truth benchmark: how well does each method's map localise, and is it faithful?

`evaluate_methods` explains every image's ground-truth class with each method and scores the
maps (all at input resolution):

- ``maxboxacc``: MaxBoxAcc (V1, IoU 0.5; Choe et al. 2020), best threshold of a sweep.
- ``loc_acc``: localisation accuracy at the CAM paper's 20% threshold (Zhou et al. 2016):
  the model's top-1 class is right AND the largest component's box has IoU >= 0.5.
- ``pointing``: pointing-game hit rate (Zhang et al. 2016), with the 15-pixel tolerance of a
  224-pixel image scaled to the image side (4.3 pixels at 64).
- ``mask_iou``: mean IoU of the thresholded map with the object mask at the threshold (of
  0.1, 0.2, ..., 0.9) that is best over the data set; None without masks.
- ``deletion_auc`` / ``insertion_auc``: AUC of the deletion (zero baseline) and insertion
  (blurred start) curves of the target's probability (Petsiuk et al. 2018).
- ``sanity_spearman``: mean Spearman rank correlation of |map| before and after every
  parametrised layer is re-drawn at random (the last step of Adebayo et al.'s cascade), over
  the images where it is defined: a map that is constant before or after (an all-zero
  Grad-CAM, say) has no ranking and is left out; `Leaderboard.sanity_constant` counts those
  (None when every map was constant).
- ``ms_per_image``: wall-clock milliseconds of the method per image (this machine).

With ``cascade_images > 0`` the full layer-by-layer cascade is also run on a few images for
a few methods (`Leaderboard.cascades`, drawn by `convlens.render.plots.similarity_plot`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from convlens.errors import ConvlensError, MethodError
from convlens.evaluate.ground_truth import GroundTruth, as_ground_truth
from convlens.models.devices import DeviceSpec, model_input, placed_on, resolve_device
from convlens.models.loading import LoadedModel

METRIC_KEYS = (
    "maxboxacc",
    "loc_acc",
    "pointing",
    "mask_iou",
    "deletion_auc",
    "insertion_auc",
    "sanity_spearman",
    "ms_per_image",
)
MASK_THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(1, 10))
CASCADE_METHODS = ("gradcam", "saliency", "guided_backprop")


@dataclass
class Leaderboard:
    """Scores per method (``scores[name]`` has exactly `METRIC_KEYS`), the mean deletion and
    insertion curves per method (``curves[name] = {"deletion": Tensor[S+1], "insertion": ...}``),
    methods that failed (``errors[name] = message``) and the run's settings.

    ``sanity_constant[name]``: of the ``settings["sanity_images"]`` maps of the sanity check,
    how many were constant before or after randomisation (no Spearman correlation; left out
    of ``sanity_spearman``). ``cascades[name]``: the layer-by-layer `SanityResult` when
    asked for (``cascade_images``)."""

    model: str
    images: int
    accuracy: float
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)
    curves: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    sanity_constant: dict[str, int] = field(default_factory=dict)
    cascades: dict = field(default_factory=dict)

    def ranked(self) -> list[tuple[str, dict]]:
        """Methods sorted by MaxBoxAcc, best first."""
        return sorted(self.scores.items(), key=lambda item: -item[1]["maxboxacc"])


def evaluate_methods(
    model: LoadedModel,
    data,
    methods: Sequence[str] | None = None,
    limit: int | None = 100,
    *,
    batch_size: int = 32,
    curve_steps: int = 16,
    sanity_images: int = 16,
    pointing_tolerance: float | None = None,
    method_options: dict[str, dict] | None = None,
    progress: Callable[[str], None] | None = None,
    cascade_images: int = 0,
    cascade_methods: Sequence[str] | None = None,
) -> Leaderboard:
    """Run ``methods`` (default: every registered one) on ``data`` and score their maps.

    Args:
        model: a `LoadedModel` (its preprocess turns the data's pixels into inputs).
        data: a `GroundTruth`, a `SyntheticShapes` or a `SyntheticBatch`.
        limit: use the first ``limit`` images (None: all).
        batch_size: images per `explain` call (results do not depend on it).
        curve_steps: points of the deletion/insertion curves (``steps + 1`` forward passes
            per image and curve).
        sanity_images: images used for the randomisation check (the first ones).
        pointing_tolerance: pixels; default ``15 * min(H, W) / 224``.
        method_options: extra keyword arguments per method name, on top of the defaults
            (occlusion: patch = side / 8, stride = side / 16).
        progress: called with a line of text as each method finishes.
        cascade_images: when > 0, also run the layer-by-layer cascading randomisation
            (Spearman and SSIM per step) on that many images (the first ones) for
            ``cascade_methods``; results in ``Leaderboard.cascades``.
        cascade_methods: default: those of `CASCADE_METHODS` (Grad-CAM, saliency, guided
            backprop: the methods Adebayo et al.'s expectations are about) that ran, else
            the first method that ran.

    Returns a `Leaderboard`. A method that raises a convlens error is recorded in
    ``errors`` and the others still run.
    """
    from convlens.attribution import list_methods

    truth = as_ground_truth(data, model.preprocess, limit)
    truth = dataclasses.replace(truth, tensor=model_input(model.module, truth.tensor))
    names = [m.name for m in list_methods()] if methods is None else list(methods)
    _check_methods(names)
    predictions = _predict(model, truth.tensor, batch_size)
    side = min(truth.tensor.shape[-2:])
    tolerance = 15 * side / 224 if pointing_tolerance is None else pointing_tolerance
    board = Leaderboard(
        model=model.name,
        images=len(truth),
        accuracy=float((predictions == truth.labels).float().mean()),
        settings={
            "curve_steps": curve_steps,
            "sanity_images": min(sanity_images, len(truth)),
            "pointing_tolerance": tolerance,
            "batch_size": batch_size,
        },
    )
    for name in names:
        options = _method_options(name, side, method_options)
        try:
            scores, curves, constant = _evaluate_one(
                model,
                truth,
                predictions,
                name,
                options,
                batch_size,
                curve_steps,
                sanity_images,
                tolerance,
            )
        except ConvlensError as error:
            board.errors[name] = str(error)
            if progress is not None:
                progress(f"{name}: failed: {error}")
            continue
        board.scores[name], board.curves[name] = scores, curves
        board.sanity_constant[name] = constant
        if progress is not None:
            progress(
                f"{name}: maxboxacc {scores['maxboxacc']:.3f}, "
                f"{scores['ms_per_image']:.1f} ms/image"
            )
    if cascade_images > 0 and board.scores:
        board.cascades = sanity_cascades(
            model, truth, _cascade_names(board, cascade_methods), cascade_images, method_options
        )
        board.settings["cascade_images"] = min(cascade_images, len(truth))
    return board


def _cascade_names(board: Leaderboard, methods: Sequence[str] | None) -> list[str]:
    if methods is not None:
        return [name for name in methods if name in board.scores]
    chosen = [name for name in CASCADE_METHODS if name in board.scores]
    return chosen or list(board.scores)[:1]


def sanity_cascades(
    model: LoadedModel,
    truth: GroundTruth,
    methods: Sequence[str],
    count: int = 8,
    method_options: dict[str, dict] | None = None,
) -> dict:
    """Layer-by-layer cascading randomisation (logits first; Spearman and SSIM of |map|)
    on the first ``count`` images, explaining their ground-truth classes: one
    `convlens.evaluate.SanityResult` per method name."""
    from convlens.evaluate.sanity import cascading_randomization

    side = min(truth.tensor.shape[-2:])
    return {
        name: cascading_randomization(
            model,
            truth.tensor[:count],
            name,
            target=truth.labels[:count],
            **_method_options(name, side, method_options),
        )
        for name in methods
    }


def _check_methods(names: list[str]) -> None:
    from convlens.attribution import get_method

    if not names:
        raise MethodError("no methods given; pass names from 'convlens methods' or 'all'")
    for name in names:
        get_method(name)


def _method_options(name: str, side: int, method_options: dict[str, dict] | None) -> dict:
    """Keyword arguments of method ``name`` on images of ``side`` pixels: the defaults
    (occlusion: patch = side / 8, stride = side / 16), updated by ``method_options[name]``."""
    defaults = (
        {"patch": max(2, side // 8), "stride": max(1, side // 16)} if name == "occlusion" else {}
    )
    return defaults | (method_options or {}).get(name, {})


@torch.no_grad()
def _predict(model: LoadedModel, tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    from convlens.layers.borrow import borrowed_model

    with borrowed_model(model.module):
        return torch.cat([model.module(chunk).argmax(1) for chunk in tensor.split(batch_size)])


def explain_all(
    model: LoadedModel, truth: GroundTruth, method: str, options: dict, batch_size: int
) -> tuple[torch.Tensor, float]:
    """Maps ``Tensor[N, H, W]`` of ``method`` for each image's ground-truth class, and the
    seconds the method itself took (summed over chunks of ``batch_size`` images)."""
    from convlens.attribution import explain

    maps, seconds = [], 0.0
    for start in range(0, len(truth), batch_size):
        rows = slice(start, start + batch_size)
        result = explain(model, truth.tensor[rows], method, target=truth.labels[rows], **options)
        maps.append(result.maps.float().cpu())
        seconds += result.seconds
    return torch.cat(maps), seconds


def _evaluate_one(
    model, truth, predictions, name, options, batch_size, curve_steps, sanity_images, tolerance
) -> tuple[dict, dict, int]:
    from convlens.evaluate.faithfulness import deletion_curve, insertion_curve
    from convlens.localize import localization_hits, maps_to_boxes, max_box_acc, pointing_game
    from convlens.maps import auc

    maps, method_seconds = explain_all(model, truth, name, options, batch_size)
    size = tuple(truth.tensor.shape[-2:])
    boxes = maps_to_boxes(maps, fraction=0.2)
    loc = localization_hits(boxes, predictions, truth.boxes, truth.labels, iou=0.5, image_size=size)
    deletion = deletion_curve(
        model, truth.tensor, maps, truth.labels, steps=curve_steps, batch_size=4 * batch_size
    )
    insertion = insertion_curve(
        model, truth.tensor, maps, truth.labels, steps=curve_steps, batch_size=4 * batch_size
    )
    sanity, constant = _sanity_spearman(model, truth, name, options, sanity_images)
    scores = {
        "maxboxacc": max_box_acc(maps, truth.boxes, image_size=size)["maxboxacc"],
        "loc_acc": float(loc.float().mean()),
        "pointing": float(pointing_game(maps, truth.point_masks, tolerance).float().mean()),
        "mask_iou": _best_mask_iou(maps, truth.masks) if truth.masks is not None else None,
        "deletion_auc": float(auc(deletion).mean()),
        "insertion_auc": float(auc(insertion).mean()),
        "sanity_spearman": sanity,
        "ms_per_image": 1000.0 * method_seconds / len(truth),
    }
    curves = {"deletion": deletion.mean(0), "insertion": insertion.mean(0)}
    return scores, curves, constant


def _best_mask_iou(maps: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean mask IoU at the threshold (of `MASK_THRESHOLDS`) best over the data set."""
    from convlens.localize import mask_iou, threshold_maps

    return max(float(mask_iou(threshold_maps(maps, tau), masks).mean()) for tau in MASK_THRESHOLDS)


def _sanity_spearman(model, truth, name, options, count) -> tuple[float | None, int]:
    """Mean Spearman correlation of |map| after re-drawing every parametrised layer, over the
    images where it is defined (None if nowhere), and how many maps were constant."""
    from convlens.evaluate.sanity import (
        cascading_randomization,
        mean_defined,
        parametrised_layers,
    )

    images = truth.tensor[:count]
    every_layer = [parametrised_layers(model, images)]
    result = cascading_randomization(
        model,
        images,
        name,
        target=truth.labels[:count],
        layers=every_layer,
        similarity=("spearman",),
        **options,
    )
    return mean_defined(result.final("spearman"))


def evaluate_on_source(
    model: str | LoadedModel = "synthetic-shapes",
    methods: Sequence[str] | None = None,
    limit: int | None = 100,
    data: str | None = None,
    images_dir: str | None = None,
    seed: int = 1,
    progress: Callable[[str], None] | None = None,
    device: DeviceSpec | None = None,
    **options,
) -> Leaderboard:
    """`evaluate_methods` on a model name/path and either an annotation file (``data``,
    images under ``images_dir``) or the synthetic shapes of stream ``seed`` (1: the stream
    the shipped model never saw in training), at the model's input size. ``device``: run
    there (`convlens.resolve_device`), moving the model back afterwards."""
    from convlens.data.synthetic import SyntheticShapes
    from convlens.evaluate.ground_truth import load_annotations
    from convlens.models.loading import load_model

    if device is not None:
        resolve_device(device)  # a missing device fails before any data is read
    loaded = load_model(model)
    if data is not None:
        truth = load_annotations(data, loaded.preprocess, images_dir, loaded.labels, limit)
    else:
        height, width = loaded.preprocess.height_width
        if height != width:
            raise ConvlensError(
                f"the synthetic shapes are square but {loaded.name} expects {height}x{width}; "
                "pass --data with your own annotations"
            )
        truth = SyntheticShapes(limit or 100, seed=seed, size=height)
    with placed_on(loaded.module, device):
        return evaluate_methods(loaded, truth, methods, limit, progress=progress, **options)
