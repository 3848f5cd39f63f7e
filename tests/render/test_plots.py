"""Plots render to RGB arrays with content."""

from __future__ import annotations

import numpy as np
import torch

from convlens.evaluate import SanityResult
from convlens.render.plots import curve_plot, similarity_plot


def test_similarity_plot_draws_an_image():
    result = SanityResult(
        layers=["fc", "conv2", "conv1"],
        spearman=torch.tensor([[0.9, 0.8], [0.5, 0.4], [0.1, 0.0]]),
        ssim=torch.full((3, 2), float("nan")),
        original=torch.zeros(2, 4, 4),
        maps=None,
        absolute=True,
    )
    image = similarity_plot(result)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10


def test_curve_plot_draws_an_image():
    curves = {"a": torch.rand(3, 11), "b": torch.linspace(1, 0, 11)}
    image = curve_plot(curves, title="deletion")
    assert image.dtype == np.uint8 and image.shape[2] == 3 and image.shape[0] > 100
