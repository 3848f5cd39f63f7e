"""Plots of evaluation results, as ``uint8[H, W, 3]`` RGB arrays (save with `save_png`).

Figures are built with matplotlib's object API on an Agg canvas (no pyplot global state,
no display needed). Importing this module loads matplotlib, so `convlens.render` does not
import it eagerly.
"""

from __future__ import annotations

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
    """Mean and standard deviation over the last axis, ignoring NaN."""
    array = values.detach().double().cpu().numpy()
    if array.ndim == 1:
        return array, np.zeros_like(array)
    mean = np.nanmean(array, axis=-1)
    spread = np.nanstd(array, axis=-1)
    return mean, spread


def similarity_plot(result, title: str | None = None, dpi: int = 100) -> np.ndarray:
    """Similarity to the original maps against randomisation depth, for a
    `convlens.evaluate.SanityResult`: one line per similarity measure (mean over images,
    band = one standard deviation), x = the layer randomised at each cumulative step
    (logits on the left), y in [-1, 1]. Returns ``uint8[H, W, 3]``."""
    steps = len(result.layers)
    figure = Figure(figsize=(max(5.0, 0.35 * steps + 3), 4.0), dpi=dpi)
    axes = figure.add_subplot()
    x = np.arange(steps)
    for name, values in (("Spearman", result.spearman), ("SSIM", result.ssim)):
        if bool(torch.isnan(values).all()):
            continue
        mean, spread = _mean_and_spread(values)
        axes.plot(x, mean, marker="o", label=name)
        axes.fill_between(x, mean - spread, mean + spread, alpha=0.2)
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.set_ylim(-1.05, 1.05)
    axes.set_xticks(x)
    axes.set_xticklabels(result.layers, rotation=90, fontsize=7)
    axes.set_xlabel("randomised down to layer (cumulative, logits first)")
    axes.set_ylabel("similarity to original map" + (" (|map|)" if result.absolute else ""))
    axes.set_title(title or "Cascading parameter randomisation")
    axes.legend(loc="upper right")
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
    insertion curves). The legend shows each mean curve's trapezoid AUC. Returns
    ``uint8[H, W, 3]``."""
    figure = Figure(figsize=(5.5, 4.0), dpi=dpi)
    axes = figure.add_subplot()
    for name, values in curves.items():
        values = values.detach().double().cpu()
        mean = values.mean(dim=0) if values.dim() == 2 else values
        x = torch.linspace(0, 1, len(mean), dtype=torch.float64)
        area = float(torch.trapezoid(mean, x))
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
