"""The ground-truth benchmark: how well does each method's map localise, and is it faithful?

`evaluate_methods` explains every image's ground-truth class with each method and scores the
maps (all at input resolution); the model-free floors of `convlens.evaluate.floors`
(``floor:center``, ``floor:edges``, ``floor:contrast``, ``floor:random``) are scored the same
way and listed as rows. On the multi-object scenes every present class of an image is a row,
scored against that class's box and mask only (`convlens.evaluate.map_scores`).

- ``maxboxacc_v2``: MaxBoxAccV2 (Choe et al. 2020), the headline box metric: boxes of every
  component, mean over IoU 0.3/0.5/0.7 of the accuracy at the best threshold of 0..0.99.
- ``maxboxacc``: MaxBoxAcc (V1, IoU 0.5, largest component), best threshold of a sweep.
- ``loc_acc``: localisation accuracy at the CAM paper's 20% threshold (Zhou et al. 2016):
  the model's top-1 class is right AND the largest component's box has IoU >= 0.5.
- ``pointing``: pointing-game accuracy (Zhang et al. 2016): the mean over classes of each
  class's hit rate, with the 15-pixel tolerance of a 224-pixel image scaled to the image
  side (4.3 pixels at 64).
- ``mask_iou``: mean IoU of the thresholded map with the object mask at the threshold (of
  0.1, 0.2, ..., 0.9) that is best over the data set; None without masks.
- ``deletion_auc`` / ``insertion_auc``: AUC of the deletion (zero baseline) and insertion
  (blurred start) curves of the target's probability (softmax; sigmoid for the multi-label
  model) (Petsiuk et al. 2018), ``curve_steps`` steps (default: the image side, as RISE),
  tied pixels in a seeded random order. None with ``faithfulness=False`` (no curve is run:
  the localisation columns cost a fraction of the time and do not change).
- ``sanity_spearman``: mean Spearman rank correlation of |map| before and after every
  parametrised layer is re-drawn at random (the last step of Adebayo et al.'s cascade), over
  the images where it is defined: a map that is constant before or after (an all-zero
  Grad-CAM, say) has no ranking and is left out; `Leaderboard.sanity_constant` counts those
  (None when every map was constant); None for floors (they use no model).
- ``ms_per_image``: wall-clock milliseconds of the method per image (this machine).

With ``cascade_images > 0`` the full layer-by-layer cascade is also run on a few images for
a few methods (`Leaderboard.cascades`, drawn by `convlens.render.plots.similarity_plot`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from convlens.errors import ConvlensError
from convlens.evaluate.ground_truth import GroundTruth, as_ground_truth
from convlens.evaluate.leaderboard import (  # noqa: F401  (Leaderboard re-exported)
    Leaderboard,
    _check_methods,
    _method_options,
    explain_all,
)
from convlens.models.devices import DeviceSpec, model_input, placed_on, resolve_device
from convlens.models.loading import LoadedModel

METRIC_KEYS = (
    "maxboxacc_v2",
    "maxboxacc",
    "loc_acc",
    "pointing",
    "mask_iou",
    "deletion_auc",
    "insertion_auc",
    "sanity_spearman",
    "ms_per_image",
)
CASCADE_METHODS = ("gradcam", "saliency", "guided_backprop")


def evaluate_methods(
    model: LoadedModel,
    data,
    methods: Sequence[str] | None = None,
    limit: int | None = 100,
    *,
    batch_size: int = 32,
    curve_steps: int | None = None,
    sanity_images: int = 16,
    pointing_tolerance: float | None = None,
    method_options: dict[str, dict] | None = None,
    progress: Callable[[str], None] | None = None,
    cascade_images: int = 0,
    cascade_methods: Sequence[str] | None = None,
    floors: bool = True,
    faithfulness: bool = True,
    metrics: Sequence[str] | None = None,
    metric_options: dict[str, dict] | None = None,
) -> Leaderboard:
    """Run ``methods`` (default: every registered one) on ``data`` and score their maps.

    Args:
        model: a `LoadedModel` (its preprocess turns the data's pixels into inputs).
        data: a `GroundTruth`, `SyntheticShapes`, `SyntheticBatch`, `SyntheticScenes` or
            `SceneBatch` (one row per present class).
        limit: use the first ``limit`` images (None: all).
        batch_size: images per `explain` call (results do not depend on it).
        curve_steps: steps of the deletion/insertion curves (``steps + 1`` forward passes
            per row and curve); default the image side (64 or 224, as RISE).
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
        floors: also score the model-free floors (`convlens.evaluate.floors`) as rows.
        faithfulness: run the deletion/insertion curves (most of a run's forward passes).
            False: ``deletion_auc`` and ``insertion_auc`` are None, ``curves`` stays empty,
            ``settings["curve_steps"]`` is None, and every other score is the same.
        metrics: names of `convlens.evaluate.metrics_zoo.METRICS` to add as columns: each
            method's and floor's maps are scored on every row, ``scores[name][metric]`` is
            the mean and ``scores[name][metric + "_margin"]`` the margin over the best floor
            (`convlens.evaluate.metric_columns`); ``settings["metrics"]`` records their
            direction and options, ``settings["metric_seconds"]`` their time. Default: none.
        metric_options: keyword arguments per metric name, on top of
            `convlens.evaluate.metric_columns.LEADERBOARD_METRIC_OPTIONS`.

    Returns a `Leaderboard`. A method that raises a convlens error is recorded in
    ``errors`` and the others still run. The data's images follow the model (its device
    and dtype); the maps come back to the CPU, where the metrics are computed.
    """
    from convlens.attribution import list_methods

    truth = as_ground_truth(data, model.preprocess, limit)
    truth = dataclasses.replace(truth, tensor=model_input(model.module, truth.tensor))
    names = [m.name for m in list_methods()] if methods is None else list(methods)
    _check_methods(names)
    chosen_metrics = _metric_columns(model, truth, metrics, metric_options)
    predictions = _predict(model, truth, batch_size)
    side = min(truth.tensor.shape[-2:])
    tolerance = 15 * side / 224 if pointing_tolerance is None else pointing_tolerance
    if not faithfulness:
        curve_steps = None  # no curves: the deletion/insertion columns are None
    elif curve_steps is None:
        curve_steps = side
    board = Leaderboard(
        model=model.name,
        images=len(truth),
        accuracy=float((predictions == truth.labels).float().mean()),
        settings={
            "rows": "image-class pairs" if truth.multilabel else "images",
            "curve_steps": curve_steps,
            "sanity_images": min(sanity_images, len(truth)),
            "pointing_tolerance": tolerance,
            "batch_size": batch_size,
        },
    )
    curve_cache: dict = {}  # maps that order pixels alike share their curves (same inputs)
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
                curve_cache,
                chosen_metrics,
            )
        except ConvlensError as error:
            board.errors[name] = str(error)
            if progress is not None:
                progress(f"{name}: failed: {error}")
            continue
        _record(board, name, scores, curves)
        board.sanity_constant[name] = constant
        _report(progress, name, scores)
    if floors:
        _score_floors(
            board,
            model,
            truth,
            predictions,
            tolerance,
            batch_size,
            progress,
            curve_cache,
            chosen_metrics,
        )
    if chosen_metrics is not None:
        chosen_metrics.finish(board)
    if cascade_images > 0 and board.scores:
        board.cascades = sanity_cascades(
            model, truth, _cascade_names(board, cascade_methods), cascade_images, method_options
        )
        board.settings["cascade_images"] = min(cascade_images, len(truth))
    return board


def _record(board: Leaderboard, name: str, scores: dict, curves: dict) -> None:
    board.scores[name] = scores
    if curves:
        board.curves[name] = curves


def _report(progress, name: str, scores: dict) -> None:
    if progress is not None:
        progress(
            f"{name}: maxboxacc_v2 {scores['maxboxacc_v2']:.3f}, "
            f"{scores['ms_per_image']:.1f} ms/image"
        )


def _score_floors(
    board, model, truth, predictions, tolerance, batch_size, progress, curve_cache, metrics=None
) -> None:
    """Score every floor of `FLOORS` on the displayed pixels, as rows of ``board``."""
    import time

    from convlens.evaluate.floors import FLOORS, floor_maps
    from convlens.evaluate.map_scores import score_maps

    pixels = torch.from_numpy(truth.display).permute(0, 3, 1, 2).float() / 255
    for name in FLOORS:
        start = time.perf_counter()
        maps = floor_maps(name, pixels)
        seconds = time.perf_counter() - start
        scores, curves = score_maps(
            model,
            truth,
            maps,
            predictions,
            tolerance=tolerance,
            curve_steps=board.settings["curve_steps"],
            batch_size=batch_size,
            faithfulness=board.settings["curve_steps"] is not None,
            curve_cache=curve_cache,
        )
        scores |= {"sanity_spearman": None, "ms_per_image": 1000.0 * seconds / len(truth)}
        if metrics is not None:
            from convlens.evaluate.metric_columns import floor_function

            scores |= metrics.score(maps, floor_function(name, model.preprocess))
        _record(board, name, scores, curves)
        _report(progress, name, scores)


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


@torch.no_grad()
def _predict(model: LoadedModel, truth: GroundTruth, batch_size: int) -> torch.Tensor:
    """``Tensor[N]``: the model's decision per row: its top-1 class, or for a multi-label
    set the row's class when its logit is > 0 (sigmoid > 0.5) and -1 otherwise."""
    from convlens.layers.borrow import borrowed_model

    with borrowed_model(model.module):
        logits = torch.cat([model.module(chunk) for chunk in truth.tensor.split(batch_size)])
    logits = logits.float().cpu()
    if not truth.multilabel:
        return logits.argmax(1)
    present = logits.gather(1, truth.labels[:, None])[:, 0] > 0
    return torch.where(present, truth.labels, torch.full_like(truth.labels, -1))


def _evaluate_one(
    model,
    truth,
    predictions,
    name,
    options,
    batch_size,
    curve_steps,
    sanity_images,
    tolerance,
    curve_cache,
    metrics=None,
) -> tuple[dict, dict, int]:
    from convlens.evaluate.map_scores import score_maps

    maps, method_seconds = explain_all(model, truth, name, options, batch_size)
    scores, curves = score_maps(
        model,
        truth,
        maps,
        predictions,
        tolerance=tolerance,
        curve_steps=curve_steps,
        batch_size=batch_size,
        faithfulness=curve_steps is not None,
        curve_cache=curve_cache,
    )
    sanity, constant = _sanity_spearman(model, truth, name, options, sanity_images)
    scores |= {"sanity_spearman": sanity, "ms_per_image": 1000.0 * method_seconds / len(truth)}
    if metrics is not None:
        from convlens.evaluate.metric_columns import method_function

        scores |= metrics.score(maps, method_function(name, options))
    return scores, curves, constant


def _metric_columns(model, truth, metrics, options):
    """The run's `MetricColumns` (names checked against the registry and the data), or None."""
    if not metrics:
        return None
    from convlens.evaluate.metric_columns import MetricColumns, check_metrics

    return MetricColumns(model, truth, check_metrics(metrics, truth), options)


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


BENCHMARKS = {
    "shapes": "synthetic-shapes",
    "shapes-multi": "synthetic-scenes",
    "gridpg": None,
    "counterfactual": "synthetic-scenes",
    "shortcut": None,
}
DEFAULT_LIMITS = {
    "shapes": 50,
    "shapes-multi": 20,
    "gridpg": 1,
    "counterfactual": 40,
    "shortcut": 60,
}


def evaluate_on_source(
    model: str | LoadedModel | None = None,
    methods: Sequence[str] | None = None,
    limit: int | None = None,
    data: str | None = None,
    images_dir: str | None = None,
    seed: int = 1,
    progress: Callable[[str], None] | None = None,
    device: DeviceSpec | None = None,
    benchmark: str = "shapes",
    trust_pickle: bool = False,
    **options,
) -> Leaderboard:
    """Run ``benchmark`` on a model name/path (default: the benchmark's own model).

    - ``"shapes"``: `evaluate_methods` on the single-object shapes of stream ``seed`` (1: the
      stream the shipped model never saw in training), or on an annotation file (``data``,
      images under ``images_dir``); model ``synthetic-shapes``.
    - ``"shapes-multi"``: the multi-object scenes of stream ``seed``, one row per present
      class; model ``synthetic-scenes`` (multi-label).
    - ``"gridpg"``: the grid pointing game (`convlens.evaluate.gridpg`) on the installed
      packages' photos, or on the folder ``images_dir``; ``limit`` grids of each size
      (2x2, 3x3); the embedded model by default. ``options`` may hold ``grid_scale``
      (``"full"``, the default: cells at the model's input size; ``"shrunk"``) and
      ``difull`` (default True: the DiFull control column).
    - ``"counterfactual"``: the counterfactual ground truth (`convlens.evaluate.counterfactual`)
      on the first ``limit`` scenes of stream ``seed``, one row per present class; model
      ``synthetic-scenes``.
    - ``"shortcut"``: the planted-shortcut benchmark (`convlens.evaluate.shortcut`) on scenes
      ``0 .. limit-1`` of stream ``seed`` with the shipped ``shortcut-*`` models (``model``
      must be None: the benchmark needs all of them).

    ``options`` go to `evaluate_methods` on the box benchmarks (``metrics``: metric columns,
    only there: elsewhere `MetricError`). ``limit`` defaults to `DEFAULT_LIMITS`.
    ``device``: run there (`convlens.resolve_device`), moving the model back afterwards.
    ``trust_pickle``: see `convlens.load_model`."""
    from convlens.data.scenes import SyntheticScenes
    from convlens.data.synthetic import SyntheticShapes
    from convlens.evaluate.ground_truth import load_annotations
    from convlens.models.loading import load_model
    from convlens.package import DEFAULT_MODEL

    if benchmark not in BENCHMARKS:
        raise ConvlensError(f"unknown benchmark {benchmark!r}; use one of {', '.join(BENCHMARKS)}")
    if device is not None:
        resolve_device(device)  # a missing device fails before any data is read
    limit = DEFAULT_LIMITS[benchmark] if limit is None else limit
    _check_metric_benchmark(benchmark, options.get("metrics"))
    if benchmark == "shortcut":
        return _shortcut_on_source(model, methods, limit, data, seed, progress, device, options)
    loaded = load_model(model or BENCHMARKS[benchmark] or DEFAULT_MODEL, trust_pickle=trust_pickle)
    if benchmark == "gridpg":
        return _gridpg_on_source(
            loaded, methods, limit, images_dir, seed, progress, device, options
        )
    if benchmark == "counterfactual":
        return _counterfactual_on_source(loaded, methods, limit, seed, progress, device, options)
    height, width = loaded.preprocess.height_width
    if data is not None and benchmark == "shapes":
        truth = load_annotations(data, loaded.preprocess, images_dir, loaded.labels, limit)
    elif height != width:
        raise ConvlensError(
            f"the synthetic sets are square but {loaded.name} expects {height}x{width}; "
            "pass --data with your own annotations"
        )
    elif benchmark == "shapes-multi":
        truth = SyntheticScenes(limit, seed=seed, size=height)
    else:
        truth = SyntheticShapes(limit, seed=seed, size=height)
    with placed_on(loaded.module, device):
        board = evaluate_methods(loaded, truth, methods, limit, progress=progress, **options)
    board.skipped = list(getattr(truth, "skipped", []))
    return board


def _check_metric_benchmark(benchmark: str, metrics) -> None:
    """Metric columns need one map per row with the row's image and class (and masks for
    the mask metrics): the box benchmarks have them; the others score maps another way."""
    if not metrics:
        return
    from convlens.errors import MetricError
    from convlens.evaluate.metric_columns import check_metrics

    check_metrics(metrics)
    if benchmark not in ("shapes", "shapes-multi"):
        raise MetricError(
            f"metric columns (--metrics) are scored on the box benchmarks (shapes, "
            f"shapes-multi), whose rows have an image, a class and a mask; --benchmark "
            f"{benchmark} has no such rows: drop --metrics or use --benchmark shapes-multi"
        )


def _run_options(options: dict, *extra: str) -> dict:
    """The entries of ``options`` the grid and scene benchmarks take: batch size, method
    options and floors, plus ``extra``."""
    names = ("batch_size", "method_options", "floors", *extra)
    return {k: options[k] for k in names if k in options}


def _gridpg_on_source(loaded, methods, limit, folder, seed, progress, device, options):
    from convlens.attribution import list_methods
    from convlens.evaluate.gridpg import build_grid_sets, evaluate_gridpg, grid_photos

    names = [m.name for m in list_methods()] if methods is None else list(methods)
    _check_methods(names)
    grids = build_grid_sets(
        loaded,
        grid_photos(folder),
        grids_per_size=limit,
        seed=seed,
        scale=options.get("grid_scale", "full"),
    )
    keep = _run_options(options, "difull")
    with placed_on(loaded.module, device):
        grids = [dataclasses.replace(g, tensor=model_input(loaded.module, g.tensor)) for g in grids]
        return evaluate_gridpg(loaded, names, grids, progress=progress, **keep)


def _counterfactual_on_source(loaded, methods, limit, seed, progress, device, options):
    from convlens.attribution import list_methods
    from convlens.evaluate.counterfactual import counterfactual_set, evaluate_counterfactual

    names = [m.name for m in list_methods()] if methods is None else list(methods)
    _check_methods(names)
    keep = _run_options(options)
    with placed_on(loaded.module, device):
        cf = counterfactual_set(loaded, limit, seed=seed)
        cf = dataclasses.replace(cf, tensor=model_input(loaded.module, cf.tensor))
        return evaluate_counterfactual(loaded, names, cf, progress=progress, **keep)


def _shortcut_on_source(model, methods, limit, data, seed, progress, device, options):
    from convlens.evaluate.shortcut import evaluate_shortcut

    if model is not None or data is not None:
        raise ConvlensError(
            "the shortcut benchmark explains its own models (shortcut-0.0 .. shortcut-1.0) on "
            "its own scenes; leave out --model and --data"
        )
    if device is not None and resolve_device(device).type != "cpu":
        raise ConvlensError("the shortcut benchmark runs on the CPU; use --device cpu")
    keep = _run_options(options)
    return evaluate_shortcut(methods, limit, seed=seed, progress=progress, **keep)
