"""The benchmark leaderboard as text (plain or Markdown) and as a PNG of its curves."""

from __future__ import annotations

import numpy as np

COLUMNS = (
    ("maxboxacc", "MaxBoxAcc", "{:.3f}"),
    ("loc_acc", "Loc@20%", "{:.3f}"),
    ("pointing", "Pointing", "{:.3f}"),
    ("mask_iou", "MaskIoU", "{:.3f}"),
    ("deletion_auc", "Del.AUC(lower)", "{:.3f}"),
    ("insertion_auc", "Ins.AUC(higher)", "{:.3f}"),
    ("sanity_spearman", "Rand.Spearman", "{:+.3f}"),
    ("ms_per_image", "ms/img", "{:.1f}"),
)


CONSTANT_TITLE = "Rand.const"
LEADERBOARD_NOTE = (
    "Rand.Spearman: mean rank correlation of |map| with the original once every layer is\n"
    "re-drawn at random (near 0: the map depends on the weights), over the maps where it is\n"
    "defined. Rand.const: maps constant before or after (no ranking; left out of the mean)."
)


def _cell(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _constant_cell(board, name: str) -> str:
    """``k/n``: k of the n sanity-check maps were constant (left out of Rand.Spearman)."""
    count = board.sanity_constant.get(name)
    total = board.settings.get("sanity_images")
    return "-" if count is None or total is None else f"{count}/{total}"


def leaderboard_table(board, markdown: bool = False) -> str:
    """Rows of `Leaderboard.ranked()` (best MaxBoxAcc first) with the `COLUMNS`, then
    ``Rand.const``: how many of the sanity check's maps were constant before or after the
    randomisation (``k/n``; their Spearman correlation is undefined and left out of
    ``Rand.Spearman``)."""
    header = ["method"] + [title for _, title, _ in COLUMNS] + [CONSTANT_TITLE]
    rows = [
        [name]
        + [_cell(scores[key], pattern) for key, _, pattern in COLUMNS]
        + [_constant_cell(board, name)]
        for name, scores in board.ranked()
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def leaderboard_curves(board, dpi: int = 100) -> np.ndarray:
    """``uint8[H, W, 3]``: mean deletion curves (left) and insertion curves (right), one line
    per method, drawn with `convlens.render.plots.curve_plot`."""
    from convlens.render.plots import curve_plot

    deletion = {name: c["deletion"] for name, c in board.curves.items()}
    insertion = {name: c["insertion"] for name, c in board.curves.items()}
    left = curve_plot(deletion, title="Deletion (lower AUC is better)", dpi=dpi)
    right = curve_plot(insertion, title="Insertion (higher AUC is better)", dpi=dpi)
    height = max(left.shape[0], right.shape[0])
    pad = [
        np.pad(a, ((0, height - a.shape[0]), (0, 0), (0, 0)), constant_values=255)
        for a in (left, right)
    ]
    return np.concatenate(pad, axis=1)
