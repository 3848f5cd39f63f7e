"""Figures of the training analysis (`convlens.analysis`): feature evolution across epochs,
layer ablation bars and invariance curves, as matplotlib Figures (save with
`convlens.render.figures.save_figure`). Takes the results; computes nothing."""

from __future__ import annotations

import numpy as np

from convlens.render.features import mark_image_border, projection_image
from convlens.render.scans import _resized, _scaled_inside


def _cell(evolution, column: int, row: int, tile: int) -> np.ndarray:
    """The projection (when computed, normalised to its own range) beside the
    receptive-field patch, each ``tile`` px, the image border marked where it cuts the field."""
    patch = evolution.patches[column][row]
    cut = evolution.inside[column][row] if evolution.inside else None
    parts = [_resized(patch, tile)]
    if evolution.projections and evolution.projections[column]:
        projection = evolution.projections[column][row]
        parts.insert(0, projection_image(projection, size=tile))
    if cut is not None:
        parts = [mark_image_border(p, _scaled_inside(cut, patch.shape, tile)) for p in parts]
    gap = np.full((tile, 2, 3), 255, np.uint8)
    return np.concatenate([parts[0], gap, parts[1]], axis=1) if len(parts) == 2 else parts[0]


def evolution_figure(evolution, tile: int = 48):
    """Epochs as columns, one row per followed (layer, channel): each cell the channel's
    strongest unit over the image set, its projection (grey = 0) beside its patch, with the
    activation value. ``evolution``: a `convlens.analysis.FeatureEvolution`."""
    from matplotlib.figure import Figure

    rows, columns = len(evolution.rows), len(evolution.columns)
    pair = 2 if evolution.projections and evolution.projections[0] else 1
    figure = Figure(figsize=(0.9 + 1.05 * pair * columns, 0.35 + 1.1 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    for r, (layer, channel) in enumerate(evolution.rows):
        for c in range(columns):
            axes = grid[r][c]
            axes.imshow(_cell(evolution, c, r, tile), interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_xlabel(f"{float(evolution.values[c, r]):.3g}", fontsize=7, labelpad=1)
            if r == 0:
                axes.set_title(evolution.columns[c], fontsize=9)
            if c == 0:
                axes.set_ylabel(f"{'.'.join(layer.split('.')[-2:])}\nch {channel}", fontsize=7)
    shown = "projection | patch" if pair == 2 else "patch"
    figure.suptitle(f"strongest unit per channel ({shown}; value below)", fontsize=9)
    return figure


def ablation_figure(result, width: float | None = None):
    """Horizontal bars: change in accuracy and in mean true-class probability when each
    layer is ablated (and the fine-tuned ablated accuracy, when tuned; all against the
    untuned intact model, whose tuned accuracy is stated). ``result``: an
    `convlens.analysis.AblationResult`."""
    from matplotlib.figure import Figure

    names = [f"{row.layer} ({row.mode})" for row in result.rows]
    series = {
        "accuracy": [row.accuracy - result.accuracy for row in result.rows],
        "true-class probability": [row.probability - result.probability for row in result.rows],
    }
    if any(row.tuned_accuracy is not None for row in result.rows):
        series["accuracy, fine-tuned"] = [
            np.nan if row.tuned_accuracy is None else row.tuned_accuracy - result.accuracy
            for row in result.rows
        ]
    positions = np.arange(len(names))
    height = 0.8 / len(series)
    figure = Figure(figsize=(width or 7.0, 1.2 + 0.32 * len(names) * len(series) ** 0.5))
    axes = figure.add_subplot()
    for i, (label, values) in enumerate(series.items()):
        axes.barh(positions + (i - (len(series) - 1) / 2) * height, values, height, label=label)
    axes.set_yticks(positions)
    axes.set_yticklabels(names, fontsize=7)
    axes.invert_yaxis()
    axes.axvline(0, color="black", linewidth=0.6)
    control = ""
    if result.tuned_accuracy is not None:
        control = f", {result.tuned_accuracy:.3f} after the same fine-tuning"
    axes.set_xlabel(
        f"change when ablated\n(intact: accuracy {result.accuracy:.3f}{control}; "
        f"probability {result.probability:.3f}; {result.images} images)",
        fontsize=8,
    )
    axes.legend(fontsize=7, loc="lower left")
    figure.set_layout_engine("constrained")
    return figure


_AXIS_NAMES = {
    "translate": "vertical shift (pixels)",
    "scale": "scale factor",
    "rotate": "rotation (degrees)",
}


def invariance_figure(curves, max_lines: int = 8):
    """Zeiler & Fergus's figure 5: a column per transform (`InvarianceCurves` in
    ``curves``), a row per layer (relative feature distance) and a last row with the
    true-class probability; thin lines per image (the first ``max_lines``), the thick
    black line their mean over all images."""
    from matplotlib.figure import Figure

    layers = list(curves[0].layers)
    figure = Figure(figsize=(3.2 * len(curves), 2.1 * (len(layers) + 1)), layout="constrained")
    grid = figure.subplots(len(layers) + 1, len(curves), squeeze=False)
    for c, curve in enumerate(curves):
        panels = [(curve.distances[name], f"distance at {name}") for name in layers]
        panels.append((curve.probabilities, "true-class probability"))
        for r, (values, label) in enumerate(panels):
            axes = grid[r][c]
            data = values.detach().cpu().numpy()
            for n in range(min(max_lines, data.shape[1])):
                axes.plot(curve.amounts, data[:, n], linewidth=0.8, alpha=0.6)
            axes.plot(curve.amounts, data.mean(1), color="black", linewidth=2.0, label="mean")
            axes.set_ylabel(label, fontsize=7)
            axes.tick_params(labelsize=7)
            if r == len(panels) - 1:
                axes.set_ylim(-0.02, 1.02)
                axes.set_xlabel(_AXIS_NAMES[curve.kind], fontsize=8)
            if r == 0:
                axes.set_title(curve.kind, fontsize=9)
    return figure
