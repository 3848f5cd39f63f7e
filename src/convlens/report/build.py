"""`build_report`: one self-contained HTML page answering, per image, "why this decision?"
(predictions, methods side by side for the top classes, the CAM box, a contrastive map,
occlusion) and "what did the network see?" (every stage's channel mean, the last stage's
strongest feature maps), plus the model's first-layer filters."""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from convlens.attribution.explain import explain, explain_methods, method_names, top_predictions
from convlens.data.images import ImageBatch, iter_batches
from convlens.errors import ImageLoadError
from convlens.features import feature_maps, filter_tiles, layer_mean_maps, objectives, optimize
from convlens.files import unique_name, write_text
from convlens.layers import default_cam_layer
from convlens.models.loading import LoadedModel
from convlens.render.boxes import draw_boxes
from convlens.render.features import feature_map_grid, filter_grid, layer_means_grid, to_uint8
from convlens.report.page import (
    PAGE_TOP,
    Section,
    anchor_id,
    figure,
    grid,
    page_html,
    paragraph,
    table,
)
from convlens.report.views import BOX_FRACTION, map_view
from convlens.targets import contrast

DEFAULT_METHODS = "gradcam,gradcam_pp,layercam,saliency,guided_backprop"
OCCLUSION = {"patch": 56, "stride": 28}  # 49 positions at 224 px (patch 32, stride 16: 169)
FEATURE_CHANNELS = 16
FILTERS_ANCHOR = "model-filters"
METHOD_COLUMNS = 5  # at most this many maps side by side (a wider page is unreadable)
MAP_COLUMNS = 3  # the columns of the single-map sections (box, contrast, occlusion)
BROAD_BOX = 0.8  # a CAM box over more than this share of the image gets a note


def build_report(
    model: LoadedModel,
    images: Sequence[str],
    methods: str = DEFAULT_METHODS,
    top: int = 3,
    visualize: bool = False,
    visualize_steps: int = 128,
    progress: Callable[[str], None] | None = None,
) -> tuple[str, list[tuple[str, str]]]:
    """The report page for ``images`` (files, folders, sample names) as one HTML string.

    ``methods``: comma-separated names (or ``"all"``) shown side by side for the ``top``
    most probable classes of each image. ``visualize``: add the class visualisation of the
    top class (``visualize_steps`` gradient-ascent steps; slow). ``progress(message)`` is
    called as each image is done. Returns ``(html, skipped)``: ``skipped`` lists the
    ``(source, reason)`` of inputs that could not be read. An image on which a method fails
    still gets its section, with the failure stated in it.
    """
    names = method_names(methods)
    start = time.perf_counter()
    # image anchors are [a-z0-9-] (`anchor_id`) and their sections' ids add ".part", so
    # no image can take another's section id; the page's own ids are reserved
    sections, skipped, anchors = [], [], {PAGE_TOP, FILTERS_ANCHOR}
    for batch in iter_batches(images, model.preprocess, batch_size=1):
        skipped.extend(batch.errors)
        if not len(batch):
            continue
        anchor = unique_name(anchor_id(Path(batch.sources[0]).stem), anchors, "-")
        sections += image_sections(model, batch, names, top, visualize, visualize_steps, anchor)
        if progress is not None:
            progress(f"{batch.sources[0]}: done after {time.perf_counter() - start:.1f} s")
    if not sections:
        reasons = "; ".join(f"{source}: {reason}" for source, reason in skipped)
        raise ImageLoadError(f"no readable image among the inputs ({reasons})")
    sections += model_sections(model)
    meta = (
        f"model {model.name}; methods {', '.join(names)}; top {top} classes; "
        f"built in {time.perf_counter() - start:.1f} s by convlens"
    )
    return page_html(f"convlens report: {model.name}", meta, sections), skipped


def write_report(path: str | Path, page: str, force: bool | None = None) -> Path:
    """Write ``page`` to ``path`` (parent folders created; all or nothing, and a file
    convlens did not write only with ``force``: `convlens.files`); returns the path."""
    return write_text(path, page, force=force)


def image_sections(
    model: LoadedModel,
    batch: ImageBatch,
    methods: list[str],
    top: int,
    visualize: bool,
    steps: int,
    anchor: str,
) -> list[Section]:
    """The sections of one image (a batch of one): overview, methods, box, contrast,
    occlusion, stages, feature maps and (``visualize``) the class visualisation."""
    source, display = batch.sources[0], batch.display[0]
    predictions = top_predictions(model, batch.tensor, k=max(5, top))[0]
    top = min(top, len(predictions))  # a model with fewer classes than asked for
    overview = Section(source, anchor, 2, [_overview(display, predictions, source)])
    parts = [
        overview,
        _methods_section(model, batch, methods, top, predictions, anchor),
        _box_section(model, batch, anchor),
        *([_contrast_section(model, batch, predictions, anchor)] if len(predictions) > 1 else []),
        _occlusion_section(model, batch, anchor),
        _stages_section(model, batch, anchor),
        _feature_maps_section(model, batch, anchor),
    ]
    if visualize:
        parts.append(_visualize_section(model, predictions[0], steps, anchor))
    return parts


def _overview(display, predictions: list[dict], source: str) -> str:
    rows = [
        [rank, p["label"], p["class_id"], p["probability"]]
        for rank, p in enumerate(predictions[:5], start=1)
    ]
    return figure(display, f"{source} as the model sees it (resized and cropped)") + table(
        ["rank", "class", "id", "probability"], rows, "top-5 predictions (softmax)"
    )


def _methods_section(model, batch, methods, top, predictions, anchor) -> Section:
    """Each method's map for each of the ``top`` classes: one row of figures per class."""
    section = Section("Attribution methods", f"{anchor}.methods", 3)
    results, failures = explain_methods(model, batch, methods, target=f"top{top}", keep_going=True)
    section.blocks.append(
        paragraph(
            f"Each row explains one of the {top} most probable classes; each column is one "
            "method. Non-negative maps: jet (blue = low, red = high); signed maps: blue < 0 < "
            "red, white at 0. The seconds are each method's own time for all rows."
        )
    )
    columns = max(1, min(len(results), METHOD_COLUMNS))
    for rank in range(top):
        label = predictions[rank]["label"] if rank < len(predictions) else f"rank {rank + 1}"
        figures = []
        for item in results:
            view = map_view(item, rank)
            figures.append(
                figure(
                    view.overlay,
                    f"{item.method} for {view.class_name} (rank {rank + 1}, "
                    f"p={view.probability:.3f})",
                    scale=view.scale,
                )
            )
        heading = f"<h4>rank {rank + 1}: {html.escape(label)}</h4>"
        section.blocks.append(heading + grid(figures, columns))
    timing = [[item.method, item.layer or "-", round(item.seconds, 3)] for item in results]
    section.blocks.append(table(["method", "layer", "seconds"], timing, "time per method"))
    for failure in failures:
        section.blocks.append(paragraph(f"{failure.method} failed: {failure.error}", note=True))
    return section


def _box_section(model, batch, anchor) -> Section:
    """The Grad-CAM map of the top class turned into a box, drawn on the image."""
    section = Section("CAM box", f"{anchor}.box", 3)
    view = map_view(explain(model, batch, "gradcam"))
    caption = (
        f"Grad-CAM of {view.class_name} ({view.explanation.layer}) thresholded at "
        f"{BOX_FRACTION:.0%} of its range; the box holds the largest connected region"
    )
    if view.box is None:
        section.blocks.append(paragraph("The Grad-CAM map is constant: no box.", note=True))
        return section
    boxed = draw_boxes(batch.display[0], [view.box])
    figures = [
        figure(boxed, caption + f": {_box_text(view.box)}"),
        figure(draw_boxes(view.overlay, [view.box]), caption + " (map)", scale=view.scale),
    ]
    section.blocks.append(grid(figures, MAP_COLUMNS))
    share = box_share(view.box, view.overlay.shape[:2])
    if share > BROAD_BOX:
        section.blocks.append(
            paragraph(
                f"The box covers {share:.0%} of the image: the map is above {BOX_FRACTION:.0%} "
                "of its range almost everywhere, so the box does not single out where the "
                "class is (look at the map itself).",
                note=True,
            )
        )
    return section


def box_share(box: tuple[float, float, float, float], size: tuple[int, int]) -> float:
    """The share of an image of ``size`` (height, width) that ``box`` (x0, y0, x1, y1,
    x1/y1 exclusive) covers, in [0, 1]."""
    x0, y0, x1, y1 = box
    return max(0.0, x1 - x0) * max(0.0, y1 - y0) / float(size[0] * size[1])


def _contrast_section(model, batch, predictions, anchor) -> Section:
    """Grad-CAM of the score difference top-1 minus top-2 ("why A rather than B")."""
    first, second = predictions[0]["label"], predictions[1]["label"]
    section = Section(f"Why {first} rather than {second}", f"{anchor}.contrast", 3)
    view = map_view(explain(model, batch, "gradcam", target=contrast("top1", "top2")))
    caption = (
        f"Grad-CAM of the logit difference {first} - {second}: red regions raise {first} "
        f"more than {second}"
    )
    section.blocks.append(grid([figure(view.overlay, caption, scale=view.scale)], MAP_COLUMNS))
    return section


def _occlusion_section(model, batch, anchor) -> Section:
    section = Section("Occlusion", f"{anchor}.occlusion", 3)
    item = explain(model, batch, "occlusion", **OCCLUSION)
    view = map_view(item)
    caption = (
        f"occlusion for {view.class_name}: the drop of its score when a grey "
        f"{OCCLUSION['patch']}-pixel patch (stride {OCCLUSION['stride']}) covers each "
        f"place; red = covering hurts, blue = covering helps ({item.seconds:.2f} s)"
    )
    section.blocks.append(grid([figure(view.overlay, caption, scale=view.scale)], MAP_COLUMNS))
    return section


def _stages_section(model, batch, anchor) -> Section:
    section = Section("Every stage", f"{anchor}.stages", 3)
    maps = layer_mean_maps(model, batch.tensor[0])
    section.blocks.append(
        figure(
            layer_means_grid(maps),
            "channel-mean map of each stage's output, input side first: how the picture of "
            "the image changes with depth",
            wide=True,
        )
    )
    ranges = [
        [name, f"{values.shape[0]}x{values.shape[1]}", float(values.min()), float(values.max())]
        for name, values in maps
    ]
    section.blocks.append(
        table(["layer", "size", "min", "max"], ranges, "the raw range of each map above")
    )
    return section


def _feature_maps_section(model, batch, anchor) -> Section:
    section = Section("Last-stage feature maps", f"{anchor}.features", 3)
    layer = default_cam_layer(model.module, batch.tensor)
    result = feature_maps(model, batch.tensor[0], layer, top=FEATURE_CHANNELS)
    section.blocks.append(
        figure(
            feature_map_grid(result),
            f"the {len(result.channels)} channels of {layer} with the largest mean activation "
            "for this image",
            wide=True,
        )
    )
    ranges = [
        [int(channel), float(mean), float(values.abs().max())]
        for channel, mean, values in zip(result.channels, result.means, result.maps, strict=True)
    ]
    section.blocks.append(
        table(["channel", "mean", "max |a|"], ranges, "the raw scale of each tile above")
    )
    return section


def _visualize_section(model, prediction: dict, steps: int, anchor: str) -> Section:
    section = Section(f"Class visualisation: {prediction['label']}", f"{anchor}.visualize", 3)
    result = optimize.visualize(model, objectives.class_logit(prediction["class_id"]), steps=steps)
    section.blocks.append(
        figure(
            to_uint8(result.images[0]),
            f"an image optimised for {steps} steps to raise the logit of "
            f"{prediction['label']} (Fourier parametrisation, random jitter): "
            f"{float(result.history[0, 0]):.3g} at the start, {float(result.final[0]):.3g} after",
        )
    )
    return section


def model_sections(model: LoadedModel) -> list[Section]:
    """The model's own section: its first convolution's filters (the same for every image)."""
    tiles = filter_tiles(model)
    section = Section("Model: first-layer filters", FILTERS_ANCHOR, 2)
    section.blocks.append(
        figure(
            filter_grid(tiles),
            f"filters of {tiles.layer}, the layer that sees the image",
            wide=True,
        )
    )
    return [section]


def _box_text(box) -> str:
    x0, y0, x1, y1 = (round(v) for v in box)
    return f"x {x0}..{x1}, y {y0}..{y1} (pixels of the model's input)"
