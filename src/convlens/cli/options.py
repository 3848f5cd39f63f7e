"""Options several commands share: how the model is loaded (``--arch/--weights``,
``--random-weights``, ``--trust-pickle``, ``--preprocess``, ``--labels``), method options
(``--option``), and how pictures are written (``--scale``, ``--dpi``, ``--width``,
``--force``).

Nothing heavy is imported at module level: ``convlens --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

PREPROCESS_MODES = {"crop": "center_crop", "resize": "stretch", "pad": "pad"}

ArchOption = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="Architecture for --weights: torchvision:NAME or timm:NAME (random init).",
    ),
]
WeightsOption = Annotated[
    str | None,
    typer.Option("--weights", help="A state_dict file to load into --arch (replaces --model)."),
]
RandomWeightsOption = Annotated[
    bool,
    typer.Option(
        "--random-weights",
        help="torchvision:/timm: models with random weights (no download).",
    ),
]
PreprocessOption = Annotated[
    str | None,
    typer.Option(
        "--preprocess",
        help="crop (centre crop, the ImageNet protocol), resize (stretch to the input "
        "size) or pad (whole image, letterboxed). Default: the model's own.",
    ),
]
TrustPickleOption = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Load a --model file that needs full unpickling (torch.save(model)): this runs "
        "code from the file, so only for files you trust.",
    ),
]
LabelsOption = Annotated[
    str | None, typer.Option("--labels", help="Class names file, one per line, in id order.")
]
MethodOptionOption = Annotated[
    list[str] | None,
    typer.Option(
        "--option",
        help="KEY=VALUE method option, repeatable (e.g. patch=32, n_steps=64; "
        "'convlens methods' lists each method's).",
    ),
]
ScaleOption = Annotated[
    str,
    typer.Option(
        "--scale",
        help="Colour scale of the maps: per-map, shared (one per method, across all images "
        "of the run) or absolute (the same, from 0, unclipped).",
    ),
]
OutFolderOption = Annotated[str, typer.Option("--out", "-o", help="Output folder.")]
TopAliasOption = Annotated[
    int | None, typer.Option("--k", hidden=True, min=1, help="Old spelling of --top.")
]
DpiOption = Annotated[int | None, typer.Option("--dpi", min=20, help="Raster resolution.")]
WidthOption = Annotated[
    float | None,
    typer.Option("--width", min=1.0, help="Figure width in inches (3.3 = one paper column)."),
]
ForceOption = Annotated[
    bool,
    typer.Option("--force", help="Overwrite an existing file convlens did not write."),
]


def load_cli_model(
    model: str,
    *,
    arch: str | None = None,
    weights: str | None = None,
    random_weights: bool = False,
    preprocess: str | None = None,
    labels: str | None = None,
    device: str | None = None,
    trust_pickle: bool = False,
):
    """The `LoadedModel` a command's options describe (checked: ``--arch`` and ``--weights``
    come together, ``--preprocess`` is one of crop|resize|pad, the labels file exists)."""
    import dataclasses

    from convlens.models import load_model

    if (arch is None) != (weights is None):  # a usage error, before anything loads
        raise typer.BadParameter(
            "--arch and --weights go together: --arch NAME --weights FILE", param_hint="--arch"
        )
    mode = None
    if preprocess is not None:
        if preprocess not in PREPROCESS_MODES:
            raise typer.BadParameter(
                f"{preprocess!r} is not a mode; use crop, resize or pad", param_hint="--preprocess"
            )
        mode = PREPROCESS_MODES[preprocess]
    names = read_labels(labels) if labels is not None else None
    if weights is not None:
        from convlens.models.weights import load_weights

        loaded = load_weights(arch, weights)
    else:
        loaded = load_model(model, pretrained=not random_weights, trust_pickle=trust_pickle)
    changed = (
        loaded.preprocess if mode is None else dataclasses.replace(loaded.preprocess, mode=mode)
    )
    loaded = load_model(loaded, preprocess=changed, labels=names)
    if device is not None and device != "cpu":
        loaded = load_model(loaded, device=device)
    return loaded


def read_labels(path: str) -> tuple[str, ...]:
    """Class names from a text file, one per line (blank lines ignored)."""
    from pathlib import Path

    from convlens.errors import ModelLoadError

    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(f"--labels {path}: no such file (one class name per line)")
    names = tuple(line.strip() for line in file.read_text().splitlines() if line.strip())
    if not names:
        raise ModelLoadError(f"--labels {path} holds no names (one class name per line)")
    return names


def as_usage_error(check, *args, hint: str | None = None, **kwargs):
    """``check(*args, **kwargs)`` (a library's own check of what the user gave: settings,
    a target, a method name), its `ConvlensError` turned into a usage error (exit 2),
    raised before any model loads. ``hint``: the option named in the message."""
    from convlens.errors import ConvlensError

    try:
        return check(*args, **kwargs)
    except ConvlensError as error:
        raise typer.BadParameter(str(error), param_hint=hint) from None


def check_choice(value: str, choices, option: str) -> str:
    """``value`` when it is one of ``choices``, else a usage error (exit 2) naming them."""
    if value not in choices:
        raise typer.BadParameter(f"{value!r}; use one of {', '.join(choices)}", param_hint=option)
    return value


def check_share(value: float, option: str, *, closed: bool = False) -> float:
    """``value`` of ``option`` when it lies in (0, 1) (``closed``: [0, 1]), else a usage
    error (exit 2), raised before any model loads."""
    inside = 0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0
    if not inside:
        span = "[0, 1]" if closed else "(0, 1)"
        raise typer.BadParameter(f"must lie in {span}, got {value}", param_hint=option)
    return value


def chosen_methods(spec: str, *, one: bool = False) -> list[str]:
    """The registered names ``spec`` lists (`convlens.attribution.explain.method_names`) for
    a command line: an unknown or empty name, or more than one where the command takes
    ``one``, is a usage error (exit 2) found before any model loads."""
    from convlens.attribution.explain import method_names

    names = as_usage_error(method_names, spec, hint="--method")
    if one and len(names) != 1:
        raise typer.BadParameter(f"{spec!r}: this command takes one method", param_hint="--method")
    return names


def chosen_method_options(pairs: list[str] | None, methods: list[str]) -> dict[str, dict]:
    """`parse_method_options` for a command line: a malformed option, or one no chosen
    method takes, is a usage error (exit 2) found before any model loads."""
    from convlens.attribution.explain import check_method_options
    from convlens.attribution.methods import get_method

    chosen = as_usage_error(parse_method_options, pairs, methods, hint="--option")
    for name, options in chosen.items():  # the kinds of the values too (true/false, ...)
        as_usage_error(check_method_options, get_method(name), options, None, hint="--option")
    return chosen


def parse_method_options(pairs: list[str] | None, methods: list[str]) -> dict[str, dict]:
    """``["patch=32", "n_steps=64"]`` to ``{method: {option: value}}`` for the ``methods``
    that take each option (values: int, float, true/false, none, else text). An option no
    chosen method takes is a `MethodError` naming those that the methods accept."""
    from convlens.attribution.methods import get_method
    from convlens.errors import MethodError

    infos = [get_method(name) for name in methods]
    chosen: dict[str, dict] = {info.name: {} for info in infos}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise MethodError(f"--option takes KEY=VALUE (such as patch=32), got {pair!r}")
        takers = [info for info in infos if key in info.options and key != "progress"]
        if not takers:
            accepted = sorted({o for info in infos for o in info.options if o != "progress"})
            listed = ", ".join(accepted) if accepted else "none"
            raise MethodError(
                f"no chosen method takes the option {key!r}; they accept: {listed} "
                "(see 'convlens methods')"
            )
        for info in takers:
            chosen[info.name][key] = _value(text.strip())
    return {name: options for name, options in chosen.items() if options}


def _value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
