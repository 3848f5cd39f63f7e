"""Plots draw their data: lines where the values are, one per defined measure, nothing for
all-NaN measures, and a change in one value redraws only the part of the plot it governs."""

from __future__ import annotations

import numpy as np
import torch

from convlens.evaluate import SanityResult
from convlens.render.plots import curve_plot, similarity_plot

FIRST, SECOND = (31, 119, 180), (255, 127, 14)  # matplotlib's first two line colours


def _pixels(image: np.ndarray, colour: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the pixels drawn in ``colour`` (antialiased edges excluded)."""
    close = np.abs(image.astype(int) - np.array(colour)).sum(axis=-1) <= 6
    return np.nonzero(close)


def _sanity(spearman: list[float], ssim: list[float] | None = None) -> SanityResult:
    """Three layers, two images (the second 0.1 below the first): a band of one std."""
    values = torch.tensor(spearman)[:, None] - torch.tensor([0.0, 0.1])
    ssim_values = torch.full((3, 2), float("nan")) if ssim is None else torch.tensor(ssim)
    return SanityResult(
        layers=["fc", "conv2", "conv1"],
        spearman=values,
        ssim=ssim_values[:, None].expand(3, 2).clone() if ssim is not None else ssim_values,
        original=torch.zeros(2, 4, 4),
        maps=None,
        absolute=True,
    )


def test_curve_plot_draws_each_curve_where_its_values_are():
    image = curve_plot({"rises": torch.linspace(0, 1, 11), "falls": torch.linspace(1, 0, 11)})
    assert image.dtype == np.uint8 and image.shape[2] == 3
    rises_rows, rises_cols = _pixels(image, FIRST)
    falls_rows, falls_cols = _pixels(image, SECOND)
    # Image rows grow downwards: a rising curve's rows fall as its columns grow.
    assert np.corrcoef(rises_cols, rises_rows)[0, 1] < -0.9
    assert np.corrcoef(falls_cols, falls_rows)[0, 1] > 0.9
    # Both span the x axis [0, 1], so they cover about the same columns.
    assert abs(np.ptp(rises_cols) - np.ptp(falls_cols)) < 0.05 * np.ptp(rises_cols)
    again = curve_plot({"rises": torch.linspace(0, 1, 11), "falls": torch.linspace(1, 0, 11)})
    np.testing.assert_array_equal(image, again)  # deterministic pixels


def test_curve_plot_averages_the_rows_of_a_curve_batch():
    batch = torch.stack([torch.linspace(0, 1, 11), torch.linspace(0, 1, 11) + 0.5])
    mean = curve_plot({"curve": batch.mean(dim=0)})
    np.testing.assert_array_equal(curve_plot({"curve": batch}), mean)


def test_similarity_plot_draws_only_defined_measures():
    spearman_only = similarity_plot(_sanity([0.9, 0.5, 0.1]))
    assert len(_pixels(spearman_only, FIRST)[0]) > 100
    assert len(_pixels(spearman_only, SECOND)[0]) == 0  # SSIM is all NaN: no line
    both = similarity_plot(_sanity([0.9, 0.5, 0.1], ssim=[0.8, 0.6, 0.2]))
    assert len(_pixels(both, SECOND)[0]) > 100


def test_similarity_plot_redraws_only_where_a_value_changed():
    base = similarity_plot(_sanity([0.9, 0.5, 0.1]))
    first_changed = similarity_plot(_sanity([0.2, 0.5, 0.1]))
    last_raised = similarity_plot(_sanity([0.9, 0.5, 0.9]))
    assert base.shape == first_changed.shape == last_raised.shape
    left, right = _changed_columns(base, first_changed), _changed_columns(base, last_raised)
    assert len(left) > 100 and len(right) > 100
    # fc's value governs the left half (fc to conv2), conv1's the right: they meet at conv2.
    assert left.min() < right.min() and left.max() < right.max()
    assert left.max() <= right.min() + 3
    # Raising conv1's value from 0.1 to 0.9 moves its part of the line up the image.
    columns = slice(right.min(), right.max() + 1)
    low_rows, _ = _pixels(base[:, columns], FIRST)
    high_rows, _ = _pixels(last_raised[:, columns], FIRST)
    assert high_rows.mean() < low_rows.mean() - 20


def _changed_columns(image: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Columns where the pictures differ by more than antialiasing noise (a few levels)."""
    difference = np.abs(image.astype(int) - other.astype(int)).max(axis=-1)
    return np.nonzero((difference > 5).any(axis=0))[0]
