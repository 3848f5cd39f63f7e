"""The benchmark leaderboard as text (plain or Markdown) and as a PNG of its curves.

Rows are methods and the model-free floors (``floor:...``), best headline score first; the
``margin`` column is a method's headline score minus the best floor's (`Leaderboard.margins`).
"""

from __future__ import annotations

import numpy as np

COLUMNS = (
    ("maxboxacc_v2", "MaxBoxAccV2", "{:.3f}"),
    ("margin", "margin", "{:+.3f}"),
    ("maxboxacc", "MaxBoxAcc", "{:.3f}"),
    ("loc_acc", "Loc@20%", "{:.3f}"),
    ("pointing", "Pointing", "{:.3f}"),
    ("mask_iou", "MaskIoU", "{:.3f}"),
    ("deletion_auc", "Del.AUC(lower)", "{:.3f}"),
    ("insertion_auc", "Ins.AUC(higher)", "{:.3f}"),
    ("sanity_spearman", "Rand.Spearman", "{:+.3f}"),
    ("ms_per_image", "ms/img", "{:.1f}"),
)
GRIDPG_COLUMNS = (
    ("gridpg", "GridPG", "{:.3f}"),
    ("margin", "margin", "{:+.3f}"),
    ("pointing", "Pointing", "{:.3f}"),
    ("gridpg_2x2", "GridPG 2x2", "{:.3f}"),
    ("gridpg_3x3", "GridPG 3x3", "{:.3f}"),
    ("difull", "DiFull", "{:.3f}"),
    ("ms_per_image", "ms/cell", "{:.1f}"),
)
CF_COLUMNS = (
    ("cf_spearman", "CF.Spearman", "{:+.3f}"),
    ("margin", "margin", "{:+.3f}"),
    ("cf_top1", "CF.Top1", "{:.3f}"),
    ("ms_per_image", "ms/row", "{:.1f}"),
)

SHORTCUT_COLUMNS = (
    ("shortcut_corr", "ShortcutCorr", "{:+.3f}"),
    ("margin", "margin", "{:+.3f}"),
    ("shortcut_corr_cued", "Corr(cued)", "{:+.3f}"),
    ("shortcut_slope", "Slope", "{:+.4f}"),
    ("slope_margin", "slope margin", "{:+.4f}"),
    ("cue_share_0.0", "Share@0.0", "{:.3f}"),
    ("cue_share_1.0", "Share@1.0", "{:.3f}"),
    ("ms_per_image", "ms/img", "{:.1f}"),
)


CONSTANT_TITLE = "Rand.const"
LEADERBOARD_NOTE = (
    "margin: the method's headline score minus the best model-free floor's (floor:*).\n"
    "Rand.Spearman: mean rank correlation of |map| with the original once every layer is\n"
    "re-drawn at random (near 0: the map depends on the weights), over the maps where it is\n"
    "defined. Rand.const: maps constant before or after (no ranking; left out of the mean)."
)
GRIDPG_NOTE = (
    "GridPG: share of the map's positive mass in the explained photo's cell (chance 1/4 on\n"
    "2x2, 1/9 on 3x3); Pointing: the map's maximum lies in that cell; margin: GridPG minus\n"
    "the best model-free floor's (floor:*). DiFull: the same share on 2x2 grids of a\n"
    "disconnected model (each cell through the network alone, its own head): mass outside\n"
    "the cell there is leakage by the method (1.000: none; '-': not run)."
)
CF_NOTE = (
    "CF.Spearman: per row, rank correlation between the map's positive mass on each scene\n"
    "element and the class logit's drop when that element is left out (mean over rows);\n"
    "CF.Top1: the element with the most mass is the one whose removal costs the most;\n"
    "margin: CF.Spearman minus the best model-free floor's (floor:*)."
)


SHORTCUT_NOTE = (
    "ShortcutCorr: rank correlation across held-out scenes of the map's positive-mass share on\n"
    "the cue's window with the cue's effect on the shortcut-1.0 model's triangle logit (0 where\n"
    "no cue); Corr(cued): the same on the scenes with the cue; Slope: mean cue share vs the\n"
    "models' stored reliance (shortcut-0.0 .. 1.0); Share@R: mean cue share on shortcut-R;\n"
    "margins: minus the best model-free floor's (floor:*)."
)


def _cell(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _constant_cell(board, name: str) -> str:
    """``k/n``: k of the n sanity-check maps were constant (left out of Rand.Spearman)."""
    count = board.sanity_constant.get(name)
    total = board.settings.get("sanity_images")
    return "-" if count is None or total is None else f"{count}/{total}"


METRICS_NOTE = (
    "Metric columns (--metrics): each metric's mean over the rows where it is defined, for the\n"
    "methods and the floors alike; (higher)/(lower): which way is better. The margin of each\n"
    "method over the best floor on each metric is in the JSON as <metric>_margin."
)


def leaderboard_note(board) -> str:
    """The legend printed under `leaderboard_table` for this kind of board (with the metric
    columns' legend when the run has them)."""
    notes = {"gridpg": GRIDPG_NOTE, "cf_spearman": CF_NOTE, "shortcut_corr": SHORTCUT_NOTE}
    note = notes.get(board.headline, LEADERBOARD_NOTE)
    return note + "\n" + METRICS_NOTE if board.settings.get("metrics") else note


def _metric_columns(board) -> tuple:
    """``(key, title, pattern)`` of each metric column the run asked for
    (``board.settings["metrics"]``: name -> ``{"higher_is_better": ...}``)."""
    chosen = board.settings.get("metrics") or {}
    return tuple(
        (name, f"{name}({'higher' if info['higher_is_better'] else 'lower'})", "{:.3f}")
        for name, info in chosen.items()
    )


def _table(board) -> tuple[list[str], list[list[str]]]:
    """The header and the rows (cells as text) of `leaderboard_table`."""
    boxes = board.headline == "maxboxacc_v2"
    columns = {
        "gridpg": GRIDPG_COLUMNS,
        "cf_spearman": CF_COLUMNS,
        "shortcut_corr": SHORTCUT_COLUMNS,
    }.get(board.headline, COLUMNS) + _metric_columns(board)
    margins = board.margins()
    shortcut = board.headline == "shortcut_corr"
    slope_margins = board.margins("shortcut_slope") if shortcut else {}
    header = ["method"] + [title for _, title, _ in columns] + ([CONSTANT_TITLE] if boxes else [])
    rows = []
    for name, scores in board.ranked():
        values = scores | {"margin": margins.get(name), "slope_margin": slope_margins.get(name)}
        row = [name] + [_cell(values.get(key), pattern) for key, _, pattern in columns]
        rows.append(row + [_constant_cell(board, name)] if boxes else row)
    return header, rows


def leaderboard_html(board) -> str:
    """`leaderboard_table` as an HTML fragment (what a notebook shows for a `Leaderboard`):
    a caption with the model, images and accuracy, the table (floor rows in grey italics),
    the failed methods, the legend, and the deletion/insertion curves when the run has
    them (a PNG inline)."""
    from html import escape

    from convlens.render.images import png_data_uri

    header, rows = _table(board)
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = []
    for row in rows:
        floor = row[0].startswith("floor:")
        style = ' style="color:#777;font-style:italic"' if floor else ""
        cells = "".join(
            f'<td style="text-align:{"left" if i == 0 else "right"}">{escape(cell)}</td>'
            for i, cell in enumerate(row)
        )
        body.append(f'<tr class="{"floor" if floor else "method"}"{style}>{cells}</tr>')
    caption = (
        f"{escape(str(board.model))}: {board.images} images, "
        f"classification accuracy {board.accuracy:.3f}"
    )
    parts = [
        f"<table><caption>{caption}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    ]
    if board.errors:
        failed = "".join(
            f"<li>{escape(name)}: {escape(message)}</li>" for name, message in board.errors.items()
        )
        parts.append(f"<p>failed:</p><ul>{failed}</ul>")
    parts.append(f"<pre>{escape(leaderboard_note(board))}</pre>")
    if board.curves:
        parts.append(f'<img src="{png_data_uri(leaderboard_curves(board))}" alt="curves">')
    return "\n".join(parts)


def leaderboard_table(board, markdown: bool = False) -> str:
    """Rows of `Leaderboard.ranked()` (best headline score first: MaxBoxAccV2, GridPG on the
    grid benchmark, CF.Spearman on the counterfactual one, ShortcutCorr on the planted
    shortcut) with the `COLUMNS` (`GRIDPG_COLUMNS`, `CF_COLUMNS`, `SHORTCUT_COLUMNS`: also the
    slope's margin), the ``margin`` over the best floor, and on box benchmarks ``Rand.const``:
    how many of the sanity check's maps were constant before or after the randomisation
    (``k/n``; left out of ``Rand.Spearman``)."""
    header, rows = _table(board)
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
    """``uint8[H, W, 3]``: small multiples, one panel per method or floor, each with its mean
    deletion (solid) and insertion (dashed) curve, drawn by
    `convlens.render.plots.curve_panels`; the random floor's pair in grey on every panel."""
    from convlens.render.plots import curve_panels

    reference = board.curves.get("floor:random")
    return curve_panels(board.curves, reference=reference, reference_label="floor:random", dpi=dpi)
