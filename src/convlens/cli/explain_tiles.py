"""What ``convlens explain`` draws and records per method: panel tiles titled with method,
layer and explained class ("A rather than B" for a contrast), guided backprop and deconvnet
as RGB gradient images, and the panel file itself. Imported only when explain runs."""

from __future__ import annotations

from pathlib import Path


def method_tiles(explanations) -> tuple[list, list[dict]]:
    """Panel tiles and JSON method records (`Explanation.row_records`) for one image's
    explanations; guided backprop and deconvnet tiles draw the input gradient their
    method computed (`Explanation.gradient`) as an RGB image."""
    from convlens.render.panel import PanelTile, gradient_image, tile_title

    tiles, methods = [], []
    for item in explanations:
        records = item.row_records()
        for row, entry in enumerate(records):
            title = tile_title(
                item.method,
                entry["class_name"],
                entry["score"],
                entry["probability"],
                layer=item.layer,
                rather_than=entry["contrast"]["rather_than"] if "contrast" in entry else None,
            )
            rgb, note = None, ""
            if item.gradient is not None:
                rgb = gradient_image(item.gradient[row])
                peak = float(item.gradient[row].abs().max())
                note = f"input gradient, grey = 0, max |g| = {peak:.3g}"
            tiles.append(PanelTile(item.maps[row], title, item.method, rgb, note))
        methods.extend(records)
    return tiles, methods


def explained_text(methods: list[dict]) -> str:
    """What was explained, for the summary line: ``tabby (281)`` or ``tabby rather than
    espresso``; ``nothing`` when every method failed."""
    if not methods:
        return "nothing"
    first = methods[0]
    if "contrast" in first:
        return f"{first['class_name']} rather than {first['contrast']['rather_than']}"
    if first.get("class_name") is None:
        return "the given target"
    return f"{first['class_name']} ({first['class_id']})"


def write_panel(display, tiles, top: dict, stem: Path, picture, limits=None) -> Path:
    """Draw the panel and write ``stem`` + the picture's format; returns the path.
    ``limits``: the tiles' colour ranges when set across the run (`write_run_panels`)."""
    from convlens.render.figures import check_writable, save_figure
    from convlens.render.panel import explanation_figure

    path = stem.with_suffix(f".{picture.fmt}")
    check_writable(path)
    figure = explanation_figure(
        display,
        tiles,
        input_title=f"input\ntop: {top['label']} p={top['probability']:.2f}",
        scale=picture.scale,
        width=picture.width,
        region=picture.region,
        limits=limits,
    )
    return save_figure(figure, path, picture.dpi)


def write_run_panels(panels: list[tuple], picture) -> None:
    """Draw the panels held back for a scale across the whole run (``--scale shared`` or
    ``absolute``): each ``(display, tiles, top, stem)``, with its method's one colour range
    over every image."""
    from convlens.render.panel import run_limits

    limits = run_limits([tiles for _, tiles, _, _ in panels], picture.scale)
    for (display, tiles, top, stem), own in zip(panels, limits, strict=True):
        write_panel(display, tiles, top, stem, picture, own)
