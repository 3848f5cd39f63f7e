"""Plots of evaluation results, as ``uint8[H, W, 3]`` RGB arrays (save with `save_png`).

Figures are built with matplotlib's object API on an Agg canvas (no pyplot global state,
no display needed). Importing this module loads matplotlib, so `convlens.render` does not
import it eagerly.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _to_array(figure: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _mean_and_spread(values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over the last axis, ignoring NaN (NaN where every value
    is NaN, e.g. a step where every map was constant)."""
    array = values.detach().double().cpu().numpy()
    if array.ndim == 1:
        return array, np.zeros_like(array)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN, not a warning
        return np.nanmean(array, axis=-1), np.nanstd(array, axis=-1)


def _similarity_axes(axes, lines: Mapping[str, torch.Tensor], layers: list[str], ylabel: str):
    """One line per entry of ``lines`` (``Tensor[S, N]``: mean over N, band = one std)."""
    x = np.arange(len(layers))
    for label, values in lines.items():
        mean, spread = _mean_and_spread(values)
        axes.plot(x, mean, marker="o", label=label)
        axes.fill_between(x, mean - spread, mean + spread, alpha=0.15)
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.set_ylim(-1.05, 1.05)
    axes.set_xticks(x)
    axes.set_xticklabels(layers, rotation=90, fontsize=7)
    axes.set_xlabel("randomised down to layer (cumulative, logits first)")
    axes.set_ylabel(ylabel)
    if lines:
        axes.legend(loc="upper right", fontsize=8)


def similarity_plot(result, title: str | None = None, dpi: int = 100) -> np.ndarray:
    """Similarity to the original maps against randomisation depth (x = the layer randomised
    at each cumulative step, logits on the left; y in [-1, 1]; mean over images ignoring the
    NaN of constant maps, band = one standard deviation). Returns ``uint8[H, W, 3]``.

    ``result``: a `convlens.evaluate.SanityResult` (one panel, a line per similarity
    measure), or a mapping ``{method name: SanityResult}`` over the same layers (one panel
    per similarity measure, a line per method)."""
    from convlens.errors import ConvlensError

    results = dict(result) if isinstance(result, Mapping) else {"": result}
    if not results:
        raise ConvlensError("similarity_plot needs at least one SanityResult")
    first = next(iter(results.values()))
    if any(r.layers != first.layers for r in results.values()):
        raise ConvlensError(
            "the SanityResults randomise different layers; plot one model's results together"
        )
    measures = {"Spearman": "spearman", "SSIM": "ssim"}
    asked = {
        label: attr
        for label, attr in measures.items()
        if any(not bool(torch.isnan(getattr(r, attr)).all()) for r in results.values())
    }
    suffix = " (|map|)" if first.absolute else ""
    width = max(5.0, 0.35 * len(first.layers) + 3)
    if not isinstance(result, Mapping):
        figure = Figure(figsize=(width, 4.0), dpi=dpi)
        lines = {name: getattr(first, attr) for name, attr in asked.items()}
        axes = figure.add_subplot()
        _similarity_axes(axes, lines, first.layers, "similarity to original map" + suffix)
        axes.set_title(title or "Cascading parameter randomisation")
    else:
        figure = Figure(figsize=(width * max(1, len(asked)), 4.0), dpi=dpi)
        for column, (name, attr) in enumerate(asked.items()):
            axes = figure.add_subplot(1, len(asked), column + 1)
            lines = {method: getattr(r, attr) for method, r in results.items()}
            _similarity_axes(axes, lines, first.layers, f"{name} to original map{suffix}")
            axes.set_title(f"{title or 'Cascading parameter randomisation'}: {name}")
    figure.tight_layout()
    return _to_array(figure)


def curve_plot(
    curves: Mapping[str, torch.Tensor],
    title: str = "",
    ylabel: str = "target probability",
    xlabel: str = "fraction of pixels",
    dpi: int = 100,
) -> np.ndarray:
    """Mean curves, one line per name: ``curves[name]`` is ``Tensor[N, S + 1]`` (averaged
    over the N images) or ``Tensor[S + 1]``, sampled at ``x = 0, 1/S, ..., 1`` (deletion or
    insertion curves). The legend shows each mean curve's AUC (`convlens.evaluate.auc`). Returns
    ``uint8[H, W, 3]``."""
    from convlens.maps import auc

    figure = Figure(figsize=(5.5, 4.0), dpi=dpi)
    axes = figure.add_subplot()
    for name, values in curves.items():
        values = values.detach().double().cpu()
        mean = values.mean(dim=0) if values.dim() == 2 else values
        x = torch.linspace(0, 1, len(mean), dtype=torch.float64)
        area = float(auc(mean[None])[0])
        axes.plot(x.numpy(), mean.numpy(), label=f"{name} (AUC {area:.3f})")
    axes.set_xlim(0, 1)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    if curves:
        axes.legend(fontsize=8)
    figure.tight_layout()
    return _to_array(figure)


def curve_panels(
    curves: Mapping[str, Mapping[str, torch.Tensor]],
    reference: Mapping[str, torch.Tensor] | None = None,
    reference_label: str = "reference",
    columns: int = 4,
    dpi: int = 100,
) -> np.ndarray:
    """Small multiples of deletion/insertion curves: one panel per name of ``curves``
    (``{"deletion": Tensor[S + 1], "insertion": Tensor[S + 1]}``, mean curves sampled at
    ``x = 0, 1/S, ..., 1``), deletion solid, insertion dashed, their AUCs in the panel title;
    ``reference`` (the same pair, e.g. a random map's) is drawn in grey on every panel.
    Shared axes; ``columns`` panels per row. Returns ``uint8[H, W, 3]``."""
    from convlens.maps import auc

    names = list(curves)
    rows = max(1, -(-len(names) // columns))
    figure = Figure(figsize=(2.6 * columns, 2.2 * rows + 0.4), dpi=dpi)
    axes_list = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()

    def draw(axes, pair, colour, label=None):
        for kind, style in (("deletion", "-"), ("insertion", "--")):
            values = pair[kind].detach().double().cpu()
            x = np.linspace(0, 1, len(values))
            axes.plot(x, values.numpy(), style, color=colour, linewidth=1.4, label=label)
            label = None

    for axes, name in zip(axes_list, names, strict=False):
        if reference is not None and name != reference_label:
            draw(axes, reference, "0.7", reference_label)
        draw(axes, curves[name], "tab:blue" if not name.startswith("floor:") else "tab:orange")
        deletion = float(auc(curves[name]["deletion"].double()[None])[0])
        insertion = float(auc(curves[name]["insertion"].double()[None])[0])
        axes.set_title(f"{name}\ndel {deletion:.3f} / ins {insertion:.3f}", fontsize=8)
        axes.tick_params(labelsize=7)
    for axes in axes_list[len(names) :]:
        axes.axis("off")
    figure.suptitle(
        "Deletion (solid, lower AUC better) and insertion (dashed, higher better); "
        f"grey: {reference_label}"
        if reference is not None
        else "Deletion (solid, lower AUC better) and insertion (dashed, higher better)",
        fontsize=9,
    )
    figure.supxlabel("fraction of pixels", fontsize=8)
    figure.supylabel("target score", fontsize=8)
    figure.tight_layout()
    return _to_array(figure)
