"""What ``convlens explain`` draws and records per method: panel tiles titled with method,
layer and explained class ("A rather than B" for a contrast), guided backprop and deconvnet
as RGB gradient images, and the panel file itself. Imported only when explain runs."""

from __future__ import annotations

import re
from pathlib import Path

RGB_RULES = {"guided_backprop": "guided", "deconvnet": "deconvnet"}


def single_target(text: str):
    """A one-class ``--target``/``--contrast`` value: an int for digits, else the text."""
    text = text.strip()
    return int(text) if text.isdigit() else text


def _is_class(text: str, labels) -> bool:
    text = text.strip()
    if text.isdigit() or re.fullmatch(r"top\d+", text):
        return True
    return labels is not None and text.lower() in {name.lower() for name in labels}


def contrast_parts(text: str, labels) -> tuple | None:
    """``(A, B)`` when ``text`` is ``A-B`` with both parts classes (ids, topK or names),
    else None; a class name that itself holds a hyphen is one class, not a contrast."""
    if "-" not in text or _is_class(text, labels):
        return None
    for cut in [i for i, char in enumerate(text) if char == "-"]:
        left, right = text[:cut], text[cut + 1 :]
        if left.strip() and right.strip() and _is_class(left, labels) and _is_class(right, labels):
            return single_target(left), single_target(right)
    return None


def target_text(target) -> str:
    """The target as the user would write it (``tabby-espresso`` for a contrast)."""
    from convlens.targets import Contrast

    if isinstance(target, Contrast):
        return f"{target.positive}-{target.negative}"
    return str(getattr(target, "target", target)) if hasattr(target, "box") else str(target)


def _negative_names(loaded, item, target) -> list[tuple[int, str]] | None:
    """Per row of ``item``, the class a contrast explains against (``(id, name)``)."""
    from convlens.targets import Contrast, resolve_targets

    if not isinstance(target, Contrast) or item.output is None:
        return None
    targets = resolve_targets(target, 1, labels=loaded.labels)
    ids = targets.negative.resolve(item.output[:1]).tolist() * len(item.maps)
    return [(int(c), loaded.label(int(c))) for c in ids]


def method_tiles(loaded, batch, explanations, target) -> tuple[list, list[dict]]:
    """Panel tiles and JSON method records for one image's explanations."""
    from convlens.render.panel import PanelTile, gradient_image, tile_title

    tiles, methods = [], []
    for item in explanations:
        record = item.record()
        negatives = _negative_names(loaded, item, target)
        gradients = _rule_gradients(loaded, batch, item, target)
        for row, info in enumerate(record["rows"]):
            rather = negatives[row] if negatives else None
            title = tile_title(
                item.method,
                info["class_name"],
                info["score"],
                info["probability"],
                layer=item.layer,
                rather_than=rather[1] if rather else None,
            )
            rgb, note = None, ""
            if gradients is not None:
                rgb = gradient_image(gradients[row])
                peak = float(gradients[row].abs().max())
                note = f"input gradient, grey = 0, max |g| = {peak:.3g}"
            tiles.append(PanelTile(item.maps[row], title, item.method, rgb, note))
            entry = (
                {"method": item.method, "layer": item.layer, "seconds": round(item.seconds, 4)}
                | {k: v for k, v in info.items() if k != "source"}
                | {k: _row_extra(v, row) for k, v in record["extras"].items()}
            )
            if rather is not None:
                entry["contrast"] = {
                    "class_id": info["class_id"],
                    "class_name": info["class_name"],
                    "rather_than_id": rather[0],
                    "rather_than": rather[1],
                    "score": "logit difference",
                }
            methods.append(entry)
    return tiles, methods


def _rule_gradients(loaded, batch, item, target):
    """The RGB input gradient (``Tensor[N, 3, H, W]``) behind a guided-backprop or deconvnet
    map, for drawing it as an image; None for other methods."""
    rule = RGB_RULES.get(item.method)
    if rule is None:
        return None
    import warnings

    from convlens.attribution.rules import rule_gradient

    with warnings.catch_warnings():  # the method itself already warned, once
        warnings.simplefilter("ignore", RuntimeWarning)
        return rule_gradient(loaded, batch.tensor, target, rule).detach().cpu()


def _row_extra(value, row: int):
    return value[row] if isinstance(value, list) else value


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


def write_panel(display, tiles, top: dict, stem: Path, picture) -> Path:
    """Draw the panel and write ``stem`` + the picture's format; returns the path."""
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
    )
    return save_figure(figure, path, picture.dpi)
