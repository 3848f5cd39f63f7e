"""Commands about what a network learned: ``filters``, ``features``, ``visualize``."""

from __future__ import annotations

from typing import Annotated

import typer

from convlens.cli.app import DeviceOption, ModelOption, app

OutOption = Annotated[str | None, typer.Option("--out", "-o", help="PNG file to write.")]


@app.command("filters")
def filters_command(
    model: ModelOption = "efficientnet_lite0",
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
            help="auto (rgb for the first layer, else mean), rgb, mean, norm, or slices "
            "(one tile per filter and input channel)."
        ),
    ] = "auto",
    scaling: Annotated[
        str, typer.Option(help="per_filter (each tile by its own max |w|) or shared.")
    ] = "per_filter",
    out: OutOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Draw a convolution's filters as a grid of tiles (grey = 0), scaling stated on it."""
    from convlens.features.filters import filter_tiles
    from convlens.models import load_model
    from convlens.render.features import filter_grid
    from convlens.render.images import save_png

    tiles = filter_tiles(load_model(model, device=device), layer, reduce=reduce, scaling=scaling)
    path = save_png(filter_grid(tiles), out or f"filters-{tiles.layer or 'model'}.png")
    typer.echo(f"{len(tiles.labels)} {tiles.reduce} tiles of {tiles.layer} ({scaling}) -> {path}")


@app.command("features")
def features_command(
    image: Annotated[str, typer.Argument(help="Image file or sample name (cat, coffee, ...).")],
    model: ModelOption = "efficientnet_lite0",
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
    top: Annotated[int, typer.Option(help="Channels shown, largest mean first.")] = 32,
    out: OutOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Draw one layer's feature maps (or every layer's channel mean) for one image."""
    from convlens.data.images import load_images
    from convlens.features.maps import feature_maps, layer_mean_maps
    from convlens.layers import default_cam_layer
    from convlens.models import load_model
    from convlens.render.features import feature_map_grid, layer_means_grid
    from convlens.render.images import save_png

    loaded = load_model(model, device=device)
    tensor = load_images([image], preprocess=loaded.preprocess).tensor
    if all_layers:
        maps = layer_mean_maps(loaded, tensor[0])
        path = save_png(layer_means_grid(maps), out or "features-all-layers.png")
        typer.echo(f"{len(maps)} stages ({', '.join(name for name, _ in maps)}) -> {path}")
        return
    layer = layer or default_cam_layer(loaded.module, tensor)
    result = feature_maps(loaded, tensor[0], layer, top=top)
    path = save_png(feature_map_grid(result), out or f"features-{result.layer}.png")
    typer.echo(f"{len(result.channels)} channels of {result.layer} -> {path}")


@app.command("visualize")
def visualize_command(
    model: ModelOption = "efficientnet_lite0",
    class_: Annotated[
        str | None, typer.Option("--class", help="Class id or name to visualise.")
    ] = None,
    channel: Annotated[
        str | None,
        typer.Option("--channel", help="LAYER:C, a channel to visualise (LAYER: a name, or #N)."),
    ] = None,
    steps: Annotated[int, typer.Option(help="Gradient-ascent steps.")] = 256,
    param: Annotated[str, typer.Option(help="fourier or pixels.")] = "fourier",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: OutOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Activation maximisation: the image that most excites a class or a channel."""
    from convlens.errors import MethodError
    from convlens.features import optimize
    from convlens.models import load_model
    from convlens.render.features import to_uint8
    from convlens.render.images import save_png

    if (class_ is None) == (channel is None):
        raise MethodError("give exactly one of --class ID|NAME or --channel LAYER:C")
    loaded = load_model(model, device=device)
    if class_ is not None:
        objective, stem = optimize.class_logit(class_), f"class-{class_}"
    else:
        layer, _, index = channel.rpartition(":")
        if not layer or not index.isdigit():
            raise MethodError(f"--channel takes LAYER:C (e.g. blocks.4:7), got {channel!r}")
        objective, stem = optimize.channel(layer, int(index)), f"channel-{layer}-{index}"
    result = optimize.render(loaded, objective, steps=steps, param=param, seed=seed, progress=True)
    stem = "-".join(stem.split())
    path = save_png(to_uint8(result.images[0]), out or f"visualize-{stem}.png")
    typer.echo(
        f"{objective.name}: {float(result.history[0, 0]):.3g} at the start, "
        f"{float(result.final[0]):.3g} for the result after {steps} steps -> {path}"
    )
