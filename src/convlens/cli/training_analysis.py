"""The training analysis of Zeiler & Fergus (2014) and the CAM paper's crops:
``evolution``, ``ablate``, ``invariance``, ``camcrop`` (over `convlens.analysis`).

``--data`` takes ``photos`` (the package photos with a known ImageNet class),
``shapes-test:N`` (the held-out synthetic shapes; ``shapes:N`` is the training stream) or
an ImageFolder tree labelled with the model's classes.
"""

from __future__ import annotations

from typing import Annotated

import typer

from convlens.cli.app import (
    DeviceOption,
    JsonOption,
    ModelOption,
    _echo_json,
    _report_skipped,
    app,
)
from convlens.cli.options import (
    DpiOption,
    ForceOption,
    TrustPickleOption,
    check_choice,
    check_share,
)
from convlens.package import DEFAULT_MODEL

DataOption = Annotated[
    str,
    typer.Option(
        "--data",
        help="photos (package photos, ImageNet ids), shapes-test:N (held out), or an "
        "ImageFolder tree.",
    ),
]
LimitOption = Annotated[
    int | None, typer.Option("--limit", min=1, help="Use the first N images only.")
]
LayersOption = Annotated[
    list[str] | None,
    typer.Option(
        "--layer",
        help="Layer name, repeatable (ablate: also patterns like 'blocks.*.*'; default every "
        "stage; invariance: default the first and last stage).",
    ),
]


def _figure_out(out: str | None, default: str, force: bool):
    """The path a command's figure goes to (``--out``, a folder, or ``default``)."""
    from convlens.render.figures import output_path

    return output_path(out, default, force)


def _load(model: str, device: str, trust_pickle: bool):
    from convlens.models import load_model

    return load_model(model, device=device, trust_pickle=trust_pickle)


def _images(loaded, data: str, limit: int | None):
    """The labelled images of ``data``; unreadable files are reported (`_report_skipped`)
    and left out, and `_exit_if_skipped` ends the command with status 1."""
    from convlens.analysis.data import labelled_images

    images = labelled_images(data, loaded.preprocess, limit)
    _report_skipped(images.skipped)
    return images


def _exit_if_skipped(*results) -> None:
    """Exit with status 1 when any of ``results`` (with a ``skipped`` list) left a file out."""
    if any(result.skipped for result in results):
        raise typer.Exit(1)


@app.command("evolution")
def evolution_command(
    model: Annotated[
        list[str],
        typer.Option(
            "--model",
            "-m",
            help="A 'convlens train head --keep-epochs' folder, or model files (repeat), in order.",
        ),
    ],
    layer: LayersOption = None,
    data: DataOption = "shapes-test:200",
    channels: Annotated[
        str | None, typer.Option("--channels", help="Channels to follow, e.g. 0,5,9.")
    ] = None,
    count: Annotated[
        int, typer.Option("--count", min=1, help="Channels per layer (strongest at the end).")
    ] = 4,
    rule: Annotated[
        str, typer.Option("--rule", help="Projection: deconvnet, guided or none.")
    ] = "deconvnet",
    out: Annotated[str | None, typer.Option("--out", "-o", help="Figure file.")] = None,
    force: ForceOption = False,
    dpi: DpiOption = None,
    as_json: JsonOption = False,
    device: DeviceOption = "cpu",
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Feature evolution during training: each channel's strongest unit over a fixed image
    set, projected to pixels, one column per epoch (Zeiler & Fergus 2014, fig. 4).

    Example: convlens train head cam --random-backbone --keep-epochs --out run; convlens
    evolution --model run --layer backbone.module.features.2 --data shapes-test:200
    """
    from pathlib import Path

    from convlens.analysis.evolution import epoch_files, feature_evolution
    from convlens.layers.rules import RULES
    from convlens.models import load_model
    from convlens.render.analysis import evolution_figure
    from convlens.render.figures import save_figure

    if not layer:
        raise typer.BadParameter(
            "pass --layer NAME (repeatable): the layers whose channels to follow",
            param_hint="--layer",
        )
    check_choice(rule, (*sorted(RULES), "none"), "--rule")
    path = _figure_out(out, "evolution.png", force)
    files = epoch_files(model[0]) if len(model) == 1 and Path(model[0]).is_dir() else model
    models = [load_model(str(f), device=device, trust_pickle=trust_pickle) for f in files]
    evolution = feature_evolution(
        models,
        data,
        layer,
        channels=_channel_list(channels),
        count=count,
        rule=None if rule == "none" else rule,
        columns=[_column(f) for f in files],
    )
    save_figure(evolution_figure(evolution), path, dpi, force)
    _report_skipped(evolution.skipped)
    typer.echo(
        f"{len(evolution.rows)} channels x {len(evolution.columns)} epochs -> {path}", err=True
    )
    if as_json:
        _echo_json(evolution.record())
    _exit_if_skipped(evolution)


def _column(source) -> str:
    from convlens.analysis.evolution import epoch_label

    return epoch_label(source)


def _channel_list(text: str | None) -> list[int] | None:
    from convlens.errors import DataError

    if text is None:
        return None
    try:
        channels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise DataError(f"--channels takes numbers separated by commas, got {text!r}") from error
    if not channels:
        raise DataError(f"--channels names no channel, got {text!r}; give numbers like 0,3,7")
    return channels


@app.command("ablate")
def ablate_command(
    model: ModelOption = DEFAULT_MODEL,
    layer: LayersOption = None,
    data: DataOption = "photos",
    mode: Annotated[
        str,
        typer.Option("--mode", help="auto (skip where shapes allow, else zero), identity, zero."),
    ] = "auto",
    tune_epochs: Annotated[
        int, typer.Option("--tune-epochs", min=0, help="Fine-tune each ablated copy (0: off).")
    ] = 0,
    tune_data: Annotated[
        str | None,
        typer.Option("--tune-data", help="Fine-tuning images (shapes:N: the training stream)."),
    ] = None,
    tune_lr: Annotated[float, typer.Option("--tune-lr", help="Fine-tuning peak rate.")] = 1e-3,
    limit: LimitOption = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Bar chart file.")] = None,
    force: ForceOption = False,
    dpi: DpiOption = None,
    as_json: JsonOption = False,
    device: DeviceOption = "cpu",
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Ablate each layer in turn (skip it, or zero its output) and report the change in
    accuracy and true-class probability as a table and a bar chart (Zeiler & Fergus
    2014, sec. 5.1). The model itself is not changed.

    Example: convlens ablate --data photos --layer 'blocks.*.*' --out ablation.png
    """
    from convlens.analysis.ablation import MODES, FineTune, ablate_layers
    from convlens.render.analysis import ablation_figure
    from convlens.render.figures import save_figure

    if bool(tune_epochs) != (tune_data is not None):  # usage errors, before any work
        raise typer.BadParameter(
            "--tune-epochs N and --tune-data DATA go together (e.g. shapes:2000 or a folder)",
            param_hint="--tune-data",
        )
    if not tune_lr > 0:
        raise typer.BadParameter(f"must be > 0, got {tune_lr}", param_hint="--tune-lr")
    check_choice(mode, MODES, "--mode")
    path = _figure_out(out, "ablation.png", force)
    loaded = _load(model, device, trust_pickle)
    images = _images(loaded, data, limit)
    train = tune = None
    if tune_epochs:
        train = _images(loaded, tune_data, None)
        tune = FineTune(train.inputs, train.labels, tune_epochs, tune_lr)
    result = ablate_layers(loaded, images.inputs, images.labels, layer, mode, fine_tune=tune)
    save_figure(ablation_figure(result), path, dpi, force)
    if as_json:
        _echo_json(result.record())
    else:
        typer.echo(ablation_table(result))
    typer.echo(f"{len(result.rows)} layers ablated on {result.images} images -> {path}", err=True)
    _exit_if_skipped(*[found for found in (images, train) if found is not None])


def ablation_table(result) -> str:
    """The ablation result as a markdown table (one row per layer, the intact model first)."""
    tuned = any(row.tuned_accuracy is not None for row in result.rows)
    head = "| layer | mode | accuracy | change | probability | change |"
    rule = "|---|---|---|---|---|---|"
    if tuned:
        head, rule = head + " fine-tuned accuracy |", rule + "---|"
    lines = [head, rule]
    intact = f"| (intact) | | {result.accuracy:.3f} | | {result.probability:.3f} | |"
    if tuned:
        intact += f" {result.tuned_accuracy:.3f} |"
    lines.append(intact)
    for row in result.rows:
        line = (
            f"| {row.layer} | {row.mode} | {row.accuracy:.3f} | "
            f"{row.accuracy - result.accuracy:+.3f} | {row.probability:.3f} | "
            f"{row.probability - result.probability:+.3f} |"
        )
        if tuned:
            line += f" {row.tuned_accuracy:.3f} |" if row.tuned_accuracy is not None else " |"
        lines.append(line)
    return "\n".join(lines)


@app.command("invariance")
def invariance_command(
    model: ModelOption = DEFAULT_MODEL,
    layer: LayersOption = None,
    data: DataOption = "photos",
    transforms: Annotated[
        str, typer.Option("--transform", help="Comma-separated: translate, scale, rotate.")
    ] = "translate,scale,rotate",
    limit: LimitOption = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Figure file.")] = None,
    force: ForceOption = False,
    dpi: DpiOption = None,
    as_json: JsonOption = False,
    device: DeviceOption = "cpu",
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Invariance curves: relative feature distance at each --layer (default: the first and
    last stage) and the true-class probability as images are shifted, scaled and rotated
    (Zeiler & Fergus 2014, fig. 5).

    Example: convlens invariance --data photos --limit 8 --out invariance.png
    """
    from convlens.analysis.invariance import TRANSFORMS, invariance_curves
    from convlens.render.analysis import invariance_figure
    from convlens.render.figures import save_figure

    kinds = [kind.strip() for kind in transforms.split(",") if kind.strip()]
    if not kinds:
        raise typer.BadParameter(
            "names no transform; use translate, scale and/or rotate", param_hint="--transform"
        )
    for kind in kinds:
        check_choice(kind, TRANSFORMS, "--transform")
    path = _figure_out(out, "invariance.png", force)
    loaded = _load(model, device, trust_pickle)
    images = _images(loaded, data, limit)
    curves = [
        invariance_curves(loaded, images.inputs, images.labels, layer, kind, sources=images.sources)
        for kind in kinds
    ]
    save_figure(invariance_figure(curves), path, dpi, force)
    if as_json:
        _echo_json([curve.record() for curve in curves])
    typer.echo(f"{', '.join(kinds)} on {len(images.sources)} images -> {path}", err=True)
    _exit_if_skipped(images)


@app.command("camcrop")
def camcrop_command(
    model: ModelOption = DEFAULT_MODEL,
    data: DataOption = "photos",
    method: Annotated[str, typer.Option("--method", help="The map that gives the box.")] = "cam",
    fraction: Annotated[
        float, typer.Option("--fraction", help="Threshold, a fraction of the map's range.")
    ] = 0.2,
    box_class: Annotated[
        str, typer.Option("--box-class", help="predicted (top-1 class map) or true.")
    ] = "predicted",
    limit: LimitOption = None,
    as_json: JsonOption = False,
    device: DeviceOption = "cpu",
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Crop each image to the box of its class activation map and report the true-class
    probability and top-1 before and after (the CAM paper's fine-grained use).

    Example: convlens camcrop --data photos
    """
    from convlens.analysis.camcrop import BOX_CLASSES, cam_crops
    from convlens.cli.options import chosen_methods

    (method,) = chosen_methods(method, one=True)
    check_choice(box_class, BOX_CLASSES, "--box-class")
    check_share(fraction, "--fraction")
    loaded = _load(model, device, trust_pickle)
    images = _images(loaded, data, limit)
    crops = cam_crops(
        loaded,
        images.inputs,
        images.labels,
        method=method,
        fraction=fraction,
        box_class=box_class,
        sources=images.sources,
    )
    if as_json:
        _echo_json(crops.record())
    else:
        typer.echo(camcrop_table(crops.record(), loaded.label))
    _exit_if_skipped(images)


def camcrop_table(record: dict, label) -> str:
    """A CAM-crop record as a markdown table, one row per image, then the means."""
    from pathlib import Path

    lines = [
        "| image | class | box (x0 y0 x1 y1) | p before | p after | top-1 before | top-1 after |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in record["images"]:
        box = " ".join(f"{v:.0f}" for v in row["box"])
        lines.append(
            f"| {Path(row['source']).name} | {label(row['label'])} | {box} | "
            f"{row['probability_before']:.3f} | {row['probability_after']:.3f} | "
            f"{label(row['predicted_before'])} | {label(row['predicted_after'])} |"
        )
    lines.append(
        f"| mean ({len(record['images'])} images) | | | {record['mean_probability_before']:.3f} "
        f"| {record['mean_probability_after']:.3f} | accuracy {record['accuracy_before']:.3f} "
        f"| accuracy {record['accuracy_after']:.3f} |"
    )
    return "\n".join(lines)
