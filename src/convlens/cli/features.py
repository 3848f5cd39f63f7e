"""Commands about what a network learned: ``filters``, ``features``, ``visualize``."""

from __future__ import annotations

from typing import Annotated

import typer

from convlens.cli.app import DeviceOption, JsonOption, ModelOption, _echo_json, app
from convlens.cli.options import (
    DpiOption,
    ForceOption,
    TrustPickleOption,
    WidthOption,
    check_choice,
)
from convlens.package import DEFAULT_MODEL

OutOption = Annotated[
    str | None,
    typer.Option(
        "--out",
        "-o",
        help="File to write: .png, .pdf or .svg (a folder if it ends with / or exists).",
    ),
]


@app.command("filters")
def filters_command(
    model: ModelOption = DEFAULT_MODEL,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            help="Conv2d layer: a name, or #N for row N of 'convlens layers' (default: the first).",
        ),
    ] = None,
    reduce: Annotated[
        str,
        typer.Option(
            help="auto (rgb for the first layer, a weight matrix for 1x1 layers, else mean), rgb, "
            "mean, norm, or slices "
            "(one tile per filter and input channel)."
        ),
    ] = "auto",
    scaling: Annotated[
        str, typer.Option(help="per_filter (each tile by its own max |w|) or shared.")
    ] = "per_filter",
    max_filters: Annotated[
        int, typer.Option("--max-filters", min=1, help="Most filters (tiles or rows) drawn.")
    ] = 256,
    out: OutOption = None,
    force: ForceOption = False,
    dpi: DpiOption = None,
    width: WidthOption = None,
    device: DeviceOption = "cpu",
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Draw a convolution's filters as a grid of tiles (grey = 0), scaling stated on it;
    1x1 convolutions as a filters x input-channels matrix (bars for depthwise 1x1)."""
    from convlens.features.filters import REDUCTIONS, SCALINGS

    check_choice(reduce, REDUCTIONS, "--reduce")  # usage errors, before the model loads
    check_choice(scaling, SCALINGS, "--scaling")
    _checked_picture_out(out, force)
    loaded = _loaded_model(model, device, trust_pickle)
    from convlens.features.pointwise import filter_matrix, is_pointwise

    if reduce == "auto" and is_pointwise(loaded, layer):  # an explicit --reduce gets tiles
        from convlens.render.figures import output_path, save_figure
        from convlens.render.weights import filter_matrix_figure

        matrix = filter_matrix(loaded, layer, max_rows=max_filters)
        path = output_path(out, f"filters-{matrix.layer}.png", force)
        save_figure(filter_matrix_figure(matrix, width), path, dpi, force)
        if matrix.note():
            typer.echo(f"{matrix.layer}: {matrix.note()}", err=True)
        rows, columns = matrix.values.shape
        typer.echo(f"{rows}x{columns} weight matrix of 1x1 layer {matrix.layer} -> {path}")
        return
    _filter_tiles(loaded, layer, reduce, scaling, max_filters, out, force, dpi)


def _loaded_model(model: str, device: str, trust_pickle: bool):
    """The model a features command draws (loaded on ``device``)."""
    from convlens.models import load_model

    return load_model(model, device=device, trust_pickle=trust_pickle)


def _filter_tiles(loaded, layer, reduce, scaling, max_filters, out, force, dpi) -> None:
    import dataclasses

    from convlens.features.filters import filter_tiles
    from convlens.render.features import filter_grid
    from convlens.render.figures import output_path, save_image

    tiles = filter_tiles(loaded, layer, reduce=reduce, scaling=scaling)
    total = len(tiles.labels)
    if total > max_filters:
        tiles = dataclasses.replace(
            tiles, tiles=tiles.tiles[:max_filters], labels=tiles.labels[:max_filters]
        )
        typer.echo(
            f"{tiles.layer}: showing the first {max_filters} of {total} tiles "
            "(pass --max-filters to see more)",
            err=True,
        )
    path = output_path(out, f"filters-{tiles.layer or 'model'}.png", force)
    save_image(filter_grid(tiles), path, dpi, force)
    typer.echo(f"{len(tiles.labels)} {tiles.reduce} tiles of {tiles.layer} ({scaling}) -> {path}")


@app.command("features")
def features_command(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(help="Image file or sample name (cat, coffee, ...).")],
    model: ModelOption = DEFAULT_MODEL,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            help="Layer: a name, or #N for row N of 'convlens layers' (default: the last "
            "convolution stage).",
        ),
    ] = None,
    all_layers: Annotated[
        bool,
        typer.Option("--all-layers", help="Channel-mean map of each stage's output, in order."),
    ] = False,
    top: Annotated[int, typer.Option(min=1, help="Channels shown, largest mean first.")] = 32,
    out: OutOption = None,
    force: ForceOption = False,
    dpi: DpiOption = None,
    device: DeviceOption = "cpu",
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Draw one layer's feature maps (or every layer's channel mean) for one image."""
    from pathlib import Path

    from convlens.data.images import load_images
    from convlens.errors import ImageLoadError
    from convlens.features.activations import feature_maps, layer_mean_maps
    from convlens.layers import default_cam_layer
    from convlens.render.features import feature_map_grid, layer_means_grid
    from convlens.render.figures import output_path, save_image

    if Path(image).is_dir():
        raise ImageLoadError(
            f"{image} is a folder; features draws one image: give one file or sample name "
            "(for a folder, run it per file, or use 'convlens explain DIR' for every image)"
        )
    if all_layers and layer is not None:
        raise typer.BadParameter(
            "--all-layers draws every stage, --layer one layer: give one of them",
            param_hint="--layer",
        )
    top_given = getattr(ctx.get_parameter_source("top"), "name", "DEFAULT") != "DEFAULT"
    if all_layers and top_given:
        raise typer.BadParameter(
            "--all-layers draws each stage's channel mean, not its top channels: drop --top",
            param_hint="--top",
        )
    _checked_picture_out(out, force)
    loaded = _loaded_model(model, device, trust_pickle)
    tensor = load_images([image], preprocess=loaded.preprocess).tensor
    if all_layers:
        maps = layer_mean_maps(loaded, tensor[0])
        path = output_path(out, "features-all-layers.png", force)
        save_image(layer_means_grid(maps), path, dpi, force)
        typer.echo(f"{len(maps)} stages ({', '.join(name for name, _ in maps)}) -> {path}")
        return
    layer = layer or default_cam_layer(loaded.module, tensor)
    result = feature_maps(loaded, tensor[0], layer, top=top)
    path = output_path(out, f"features-{result.layer}.png", force)
    save_image(feature_map_grid(result), path, dpi, force)
    typer.echo(f"{len(result.channels)} channels of {result.layer} -> {path}")


@app.command("visualize")
def visualize_command(
    ctx: typer.Context,
    model: ModelOption = DEFAULT_MODEL,
    class_: Annotated[
        str | None, typer.Option("--class", help="Class id or name to visualise.")
    ] = None,
    channel: Annotated[
        str | None,
        typer.Option("--channel", help="LAYER:C, a channel to visualise (LAYER: a name, or #N)."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Gradient-ascent steps (default: 256 for gradient and maco, 64 for accentuate).",
        ),
    ] = None,
    param: Annotated[
        str, typer.Option(help="fourier or pixels (--method gradient only).")
    ] = "fourier",
    method: Annotated[
        str,
        typer.Option(
            help="gradient (ascent on a Fourier or pixel image), maco (phase only, natural "
            "magnitude; Fel et al. 2023) or accentuate (change the photo --image as little as "
            "a layer's features allow; Hamblin et al. 2024)."
        ),
    ] = "gradient",
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            "--from",
            help="--method accentuate: the photo to start from (a file or sample name).",
        ),
    ] = None,
    closeness: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="--method accentuate: weight of the relative feature distance to the photo.",
        ),
    ] = 10.0,
    closeness_layer: Annotated[
        str | None,
        typer.Option(
            help="--method accentuate: layer where closeness is measured (default: the middle "
            "stage)."
        ),
    ] = None,
    crops: Annotated[
        int | None,
        typer.Option(min=1, help="--method maco: random crops scored per step (default: 1)."),
    ] = None,
    diversity: Annotated[
        int,
        typer.Option(
            min=1,
            help="N pictures of the one unit, pushed apart by a Gram-matrix diversity term "
            "(Olah et al. 2017); 1: off.",
        ),
    ] = 1,
    diversity_weight: Annotated[
        float, typer.Option(help="Weight of the diversity term (per unit of cosine).")
    ] = 10.0,
    diversity_layer: Annotated[
        str | None,
        typer.Option(
            help="Layer whose Gram matrices are pushed apart (default: the channel's layer; "
            "for a class, the third stage from the end)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: OutOption = None,
    force: ForceOption = False,
    dpi: DpiOption = None,
    device: DeviceOption = "cpu",
    trust_pickle: TrustPickleOption = False,
    as_json: JsonOption = False,
) -> None:
    """Activation maximisation: the image that most excites a class or a channel, or (with
    --method accentuate --image PHOTO) the change to a photo that excites it.

    A class picture gets the fooling check (Geirhos et al. 2023): is its activation path
    closer to the installed photos of its class than to those of every other class? The
    verdict is printed on stderr (and in the JSON output); classes without a photo are skipped."""
    import numpy as np
    import torch

    from convlens.features import objectives, optimize
    from convlens.models import load_model
    from convlens.render.features import importance_panel, to_uint8
    from convlens.render.figures import output_path, save_image

    # usage errors (exit 2), before the model loads
    if (class_ is None) == (channel is None):
        raise typer.BadParameter(
            "give exactly one of --class ID|NAME or --channel LAYER:C", param_hint="--class"
        )
    if (method == "accentuate") != (image is not None):
        raise typer.BadParameter(
            "--method accentuate starts from a photo: give it --image PATH (and --image only "
            "with --method accentuate)",
            param_hint="--image",
        )
    _refuse_other_methods_options(ctx, method, param)
    if channel is not None:
        layer, _, index = channel.rpartition(":")
        if not layer or not index.isdigit():
            raise typer.BadParameter(
                f"--channel takes LAYER:C (e.g. blocks.4:7), got {channel!r}",
                param_hint="--channel",
            )
    _checked_picture_out(out, force)
    loaded = load_model(model, device=device, trust_pickle=trust_pickle)
    if class_ is not None:
        objective, stem = objectives.class_logit(class_), f"class-{class_}"
    else:
        objective, stem = objectives.channel(layer, int(index)), f"channel-{layer}-{index}"
    unit_name = objective.name + (" + diversity term" if diversity > 1 else "")
    if diversity > 1:
        if diversity_layer is None:
            from convlens.features.activations import stage_layers

            if channel is not None:
                diversity_layer = layer
            else:
                blank = torch.zeros(3, *loaded.preprocess.height_width)
                diversity_layer = stage_layers(loaded, blank)[-3]
        term = objectives.diversity(diversity_layer, diversity_weight)
        objective, stem = objective + term, f"{stem}-diverse-{diversity}"
    batch = [objective] * diversity
    if method == "maco":
        from convlens.features.maco import CROPS, STEPS, maco

        steps = STEPS if steps is None else steps
        crops = CROPS if crops is None else crops
        result = maco(loaded, batch, steps=steps, crops=crops, seed=seed, progress=True)
        stem = f"maco-{stem}"
    elif method == "accentuate":
        from convlens.data.images import load_images
        from convlens.features.accentuate import accentuate

        steps = 64 if steps is None else steps
        display = load_images([image], preprocess=loaded.preprocess).display[0]
        photo = torch.from_numpy(display.copy()).permute(2, 0, 1).float() / 255
        result = accentuate(
            loaded,
            batch,
            photo,
            layer=closeness_layer,
            weight=closeness,
            steps=steps,
            seed=seed,
            progress=True,
        )
        stem = f"accentuate-{stem}"
    elif method == "gradient":
        steps = 256 if steps is None else steps
        result = optimize.visualize(
            loaded, batch, steps=steps, param=param, seed=seed, progress=True
        )
    stem = "-".join(stem.split())
    if bool(torch.equal(result.final, result.history[0])):
        typer.echo(
            "warning: the objective did not move from its start: its gradient is zero there "
            "(a plain grey start on this model, say); try --method maco, or accentuate "
            "from a photo",
            err=True,
        )
    path = output_path(out, f"visualize-{stem}.png", force)
    rows = []
    for b in range(diversity):
        if result.importance is not None:
            rows.append(importance_panel(result.images[b], result.importance[b]))
        elif method == "accentuate":  # the photo beside what became of it
            side = np.full((display.shape[0], 4, 3), 255, np.uint8)
            rows.append(np.concatenate([display, side, to_uint8(result.images[b])], axis=1))
        else:
            rows.append(to_uint8(result.images[b]))
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    picture = np.concatenate([part for row in rows for part in (row, gap)][:-1], axis=0)
    save_image(picture, path, dpi, force)
    checks = _fooling_checks(loaded, result.images, class_) if class_ is not None else None
    if as_json:
        _echo_json(
            {
                "objective": unit_name,
                "method": method,
                "steps": steps,
                "start": result.history[0].tolist(),
                "final": result.final.tolist(),
                "distance": None if result.distance is None else result.distance.tolist(),
                "path": str(path),
                "fooling_check": checks,
            }
        )
        return
    typer.echo(
        f"{unit_name}: {float(result.history[0].mean()):.3g} at the start, "
        f"{float(result.final.mean()):.3g} for the result after {steps} steps -> {path}"
        + (
            f" ({diversity} pictures, one per row, with the diversity term)"
            if diversity > 1
            else ""
        )
    )
    if result.importance is not None:
        typer.echo(
            "picture | importance (summed |gradient|, inferno) | picture through it; "
            f"magnitude spectrum: {result.spectrum_source.split(':')[0]}"
        )
    if result.distance is not None:
        typer.echo(
            "photo | accentuated; relative feature distance to the photo "
            + ", ".join(f"{float(d):.3g}" for d in result.distance)
        )
    for check in checks or []:
        typer.echo(check["summary"], err=True)


def _checked_picture_out(out: str | None, force: bool) -> None:
    """`check_output` for a picture command: a file name without a picture suffix is a
    usage error (exit 2), as in explain; other refusals keep their own errors."""
    from pathlib import Path

    from convlens.render.figures import FORMATS, check_output

    file = out is not None and not out.endswith(("/", "\\")) and not Path(out).is_dir()
    if file and Path(out).suffix.lower() not in FORMATS:
        raise typer.BadParameter(
            f"{out}: a picture is written as .png, .pdf or .svg; name the file so (or give a "
            "folder, ending in /)",
            param_hint="--out",
        )
    check_output(out, force)


VISUALIZE_METHODS = ("gradient", "maco", "accentuate")
PARAMETRISATIONS = ("fourier", "pixels")
# options that only one method reads: given with another, they would be ignored
_METHOD_OPTIONS = {
    "param": "gradient",
    "crops": "maco",
    "closeness": "accentuate",
    "closeness_layer": "accentuate",
}


def _refuse_other_methods_options(ctx: typer.Context, method: str, param: str) -> None:
    """Usage errors before the model loads: an unknown --method or --param, and an option
    of another method (it would be silently ignored)."""
    check_choice(method, VISUALIZE_METHODS, "--method")
    check_choice(param, PARAMETRISATIONS, "--param")
    for name, owner in _METHOD_OPTIONS.items():
        given = getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"
        if given and method != owner:
            option = "--" + name.replace("_", "-")
            raise typer.BadParameter(
                f"{option} is a --method {owner} setting, not used by --method {method}: drop it",
                param_hint=option,
            )


def _fooling_checks(loaded, images, class_: str) -> list[dict]:
    """The fooling check of each class picture against the installed photos, as records
    (``passes`` None and a reason when no photo shows the class)."""
    import torch

    from convlens.features.fooling import photo_check
    from convlens.targets import resolve_targets

    if loaded.labels:  # a name or an id, as the run resolved it
        count = len(loaded.labels)
        targets = resolve_targets(class_, 1, loaded.labels, count)
        class_id = int(targets.class_ids(torch.zeros(1, count))[0])
    else:
        class_id = int(class_)
    records = []
    for b, picture in enumerate(images):
        check = photo_check(loaded, picture, class_id)
        if check is None:
            records.append(
                {
                    "picture": b,
                    "passes": None,
                    "summary": f"fooling check skipped: no installed photo shows class "
                    f"{class_id} (or no other class), so there is nothing to compare with",
                }
            )
            continue
        records.append(
            {
                "picture": b,
                "passes": not check.flagged,
                "path_distance": check.path,
                "nearest_other": check.nearest_other,
                "layers": check.layers,
                "summary": check.summary(loaded.labels),
            }
        )
    return records
