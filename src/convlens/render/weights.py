"""A 1x1 convolution's weights as a heat matrix (filters x input channels) or, for a
depthwise 1x1 layer (one weight per filter), as bars. Takes `FilterMatrix`; computes nothing."""

from __future__ import annotations

import numpy as np


def filter_matrix_figure(result, width: float | None = None):
    """A matplotlib Figure of ``result.values`` (``Tensor[rows, columns]``): a blue-white-red
    matrix centred at 0 with a colourbar in weight units, or bars when there is one
    column; titled with the layer and what a cap left out."""
    from matplotlib.figure import Figure

    values = result.values.detach().cpu().numpy()
    rows, columns = values.shape
    peak = float(np.abs(values).max()) or 1.0
    width = width or min(12.0, max(4.0, 0.06 * max(rows, columns) + 2.5))
    figure = Figure(figsize=(width, width * 0.75), layout="constrained")
    axes = figure.add_subplot()
    if columns == 1:
        axes.bar(np.arange(rows), values[:, 0], color=np.where(values[:, 0] >= 0, "C3", "C0"))
        axes.axhline(0, color="black", linewidth=0.6)
        axes.set_xlabel("filter (output channel)")
        axes.set_ylabel("weight")
    else:
        image = axes.imshow(
            values, cmap="RdBu_r", vmin=-peak, vmax=peak, aspect="auto", interpolation="nearest"
        )
        axes.set_xlabel("input channel" + (" (within its group)" if result.groups > 1 else ""))
        axes.set_ylabel("filter (output channel)")
        figure.colorbar(image, ax=axes, label="weight")
    title = f"{result.layer}: 1x1 filters, {result.total[0]} x {result.total[1]} weights"
    note = result.note()
    axes.set_title(title + (f"\n{note}" if note else ""), fontsize=9)
    return figure
