"""What ``convlens explain`` draws and records per method: panel tiles titled with method,
layer and explained class ("A rather than B" for a contrast), guided backprop and deconvnet
as RGB gradient images, and the panel file itself. Imported only when explain runs."""

from __future__ import annotations

from pathlib import Path


def method_tiles(explanations, notes: dict | None = None) -> tuple[list, list[dict]]:
    """Panel tiles and JSON method records (`Explanation.row_records`) for one image's
    explanations; guided backprop and deconvnet tiles draw the input gradient their
    method computed (`Explanation.gradient`) as an RGB image. ``notes``: ``{method: text}``
    added under that method's tiles (`pattern_note`)."""
    tiles, methods = [], []
    for item in explanations:
        tiles.extend(item.tiles((notes or {}).get(item.method, "")))
        methods.extend(item.row_records())
    return tiles, methods


PATTERN_CORRELATION = 0.95  # above this, the image hardly changes deconvnet's picture


def image_independence(loaded, image, explanation, method_options=None) -> float | None:
    """Pearson correlation of ``explanation``'s first input gradient (deconvnet's) with the
    same method's gradient, for the same class, on seeded noise of the image's shape
    (``image``: the model input ``Tensor[1, 3, H, W]``). Near 1: the picture is the
    network's own pattern (a checkerboard from strided convolutions), not the image's.
    None when there is no gradient to compare."""
    import torch

    from convlens.attribution.explain import explain_methods

    if explanation.gradient is None:
        return None
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(image.shape, generator=generator).to(image.device, image.dtype)
    class_id = int(explanation.row_records()[0]["class_id"])
    options = (method_options or {}).get(explanation.method, {})
    (other,), _ = explain_methods(
        loaded,
        noise,
        [explanation.method],
        class_id,
        method_options={explanation.method: options} if options else None,
    )
    first, second = explanation.gradient[0].flatten(), other.gradient[0].flatten()
    stacked = torch.stack([first.double(), second.double().to(first.device)])
    if bool((stacked.std(dim=1) == 0).any()):
        return None
    return float(torch.corrcoef(stacked)[0, 1])


def pattern_note(correlation: float | None) -> str:
    """The note under a deconvnet tile whose picture does not depend on the image."""
    if correlation is None or correlation <= PATTERN_CORRELATION:
        return ""
    return (
        f"image-independent pattern: r={correlation:.2f} with the map of noise "
        "(deconvnet on this network)"
    )


def explained_text(methods: list[dict]) -> str:
    """What was explained, for the summary line: ``tabby (281)`` or ``tabby rather than
    espresso``, each distinct target once in order (``top3``: three classes); ``nothing``
    when every method failed."""
    if not methods:
        return "nothing"
    found: list[str] = []
    for entry in methods:
        text = _explained_one(entry)
        if text not in found:
            found.append(text)
    return ", ".join(found)


def _explained_one(entry: dict) -> str:
    if "contrast" in entry:
        return f"{entry['class_name']} rather than {entry['contrast']['rather_than']}"
    if entry.get("class_name") is None:
        return "the given target"
    return f"{entry['class_name']} ({entry['class_id']})"


def prediction_text(top: dict, digits: int) -> str:
    """``top: LABEL p=0.93`` for a class prediction, ``output = 1.25`` for a regression
    output (`predictions_from_output`)."""
    if top.get("probability") is None:
        return f"output = {top['value']:.4g}"
    return f"top: {top['label']} p={top['probability']:.{digits}f}"


def write_panel(display, tiles, top: dict, stem: Path, picture, limits=None) -> Path:
    """Draw the panel and write ``stem`` + the picture's format; returns the path.
    ``limits``: the tiles' colour ranges when set across the run (`write_run_panels`)."""
    from convlens.render.figures import check_writable, save_figure
    from convlens.render.panel import explanation_figure

    path = stem.with_name(f"{stem.name}.{picture.fmt}")
    check_writable(path)
    figure = explanation_figure(
        display,
        tiles,
        input_title=f"input\n{prediction_text(top, 2)}",
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
