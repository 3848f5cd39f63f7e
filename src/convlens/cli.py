"""The command line: a thin layer over the Python API.

Usage errors (an unknown option, a missing argument) print the usage line and exit 2;
other errors print one line (``error: ...``) and exit 1, and ``--debug`` (anywhere on the
command line) shows their traceback too. IMAGE arguments take files, directories (every
image inside) or sample names (``cat``).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from convlens.errors import ConvlensError, TargetError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="See what a convolutional network learned and why it decided.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

ModelOption = Annotated[
    str, typer.Option("--model", "-m", help="Model name or path (see 'convlens models').")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
ImagesArgument = Annotated[
    list[str],
    typer.Argument(help="Image files, directories, or sample names (" + "cat, coffee, ...)."),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """convlens: filters, feature maps, saliency, CAMs, boxes and metrics for CNNs."""


def _echo_json(value) -> None:
    typer.echo(json.dumps(value, indent=2))


def _report_skipped(errors: list[tuple[str, str]]) -> None:
    for source, message in errors:
        typer.echo(f"skipped {source}: {message}", err=True)


@app.command("models")
def models_command(as_json: JsonOption = False) -> None:
    """List the ways to name a model and what each needs."""
    from convlens.models import MODEL_SOURCES

    rows = [{"name": s.name, "needs": s.needs} for s in MODEL_SOURCES.values()]
    if as_json:
        _echo_json(rows)
        return
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        typer.echo(f"{row['name']:<{width}}  {row['needs']}")
    typer.echo("Any nn.Module works from Python: convlens.load_model(module).")


@app.command("layers")
def layers_command(
    model: ModelOption = "efficientnet_lite0",
    size: Annotated[int | None, typer.Option(help="Input side in pixels.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Table of every layer: type, output shape, receptive field, jump and start."""
    import torch

    from convlens.layers import layer_table
    from convlens.models import load_model

    loaded = load_model(model)
    height, width = (size, size) if size else loaded.preprocess.height_width
    rows = layer_table(loaded.module, torch.zeros(1, 3, height, width))
    if as_json:
        _echo_json([_layer_record(row) for row in rows])
        return
    typer.echo(
        f"{'#':>4}  {'name':<36} {'type':<22} {'output':<18} {'rf':>9} {'jump':>5} {'start':>7}"
    )
    for row in rows:
        record = _layer_record(row)
        shape = "x".join(str(d) for d in row.output_shape[1:]) if row.output_shape else "-"
        typer.echo(
            f"{row.index:>4}  {row.name:<36} {row.type:<22} {shape:<18} "
            f"{record['receptive_field']:>9} {record['jump']:>5} {record['start']:>7}"
        )


def _layer_record(row) -> dict:
    field = row.field
    if field is None:
        rf = jump = start = "-"
    elif field.is_global:
        rf, jump, start = "global", "-", "-"
    else:
        rf = _pair_text(field.size)
        jump = _pair_text(field.jump)
        start = _pair_text(field.start)
    return {
        "index": row.index,
        "name": row.name,
        "type": row.type,
        "output_shape": list(row.output_shape) if row.output_shape else None,
        "receptive_field": rf,
        "jump": jump,
        "start": start,
        "calls": row.calls,
    }


def _pair_text(pair) -> str:
    a, b = (f"{v:g}" for v in pair)
    return a if a == b else f"{a}x{b}"


@app.command("predict")
def predict_command(
    images: ImagesArgument,
    model: ModelOption = "efficientnet_lite0",
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="Classes per image.")] = 5,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 16,
    as_json: JsonOption = False,
) -> None:
    """Classify images and print the top classes with probabilities."""
    from convlens.attribution.explain import top_predictions
    from convlens.data.images import iter_batches
    from convlens.models import load_model

    loaded = load_model(model)
    results, errors = [], []
    for batch in iter_batches(images, loaded.preprocess, batch_size):
        errors.extend(batch.errors)
        _report_skipped(batch.errors)
        if not len(batch):
            continue
        rows = top_predictions(loaded, batch.tensor, k=top)
        for source, predictions in zip(batch.sources, rows, strict=True):
            results.append({"source": source, "predictions": predictions})
            if not as_json:
                text = ", ".join(
                    f"{p['label']} ({p['class_id']}) {p['probability']:.3f}" for p in predictions
                )
                typer.echo(f"{source}: {text}")
    if as_json:
        _echo_json(
            {
                "model": loaded.name,
                "results": results,
                "errors": [{"source": s, "error": m} for s, m in errors],
            }
        )
    if errors:
        raise typer.Exit(1)


@app.command("methods")
def methods_command(as_json: JsonOption = False) -> None:
    """List the registered attribution methods."""
    from convlens.attribution import list_methods

    rows = [
        {
            "name": m.name,
            "family": m.family,
            "uses_layer": m.uses_layer,
            "options": list(m.options),
            "summary": m.summary,
        }
        for m in list_methods()
    ]
    if as_json:
        _echo_json(rows)
        return
    for row in rows:
        typer.echo(f"{row['name']:<22} {row['family']:<13} {row['summary']}")
        if row["options"]:
            typer.echo(f"{'':<22} {'':<13} explain() options: {', '.join(row['options'])}")


@app.command("explain")
def explain_command(
    ctx: typer.Context,
    images: ImagesArgument,
    model: ModelOption = "efficientnet_lite0",
    method: Annotated[
        str, typer.Option("--method", help="Method name(s), comma separated, or 'all'.")
    ] = "gradcam",
    target: Annotated[
        str, typer.Option("--target", "-t", help="top1, topK, a class id or a class name.")
    ] = "top1",
    layer: Annotated[
        str | None, typer.Option("--layer", help="Layer for CAM methods (default: last conv).")
    ] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for panels and JSON.")] = (
        "convlens-out"
    ),
    as_json: JsonOption = False,
) -> None:
    """Explain each image: one PNG panel (input + one overlay per method) and one JSON record.

    A method or image that fails is reported on stderr and skipped; the rest is still
    written, and the exit status is 1. With --method all, a method that cannot apply to
    the model (cam without a global-average-pool + linear head) is skipped with the reason.
    """
    from pathlib import Path

    from convlens.attribution.explain import check_layer_use, method_names
    from convlens.attribution.registry import get_method
    from convlens.data.images import iter_batches
    from convlens.layers import resolve_layer
    from convlens.models import load_model

    debug = bool(ctx.find_root().params.get("debug"))
    loaded = load_model(model)
    names = method_names(method)
    if layer is not None:  # an unknown or unused layer stops before any work
        check_layer_use([get_method(name) for name in names], layer)
        resolve_layer(loaded.module, layer)
    run = _ExplainRun(names, skip_inapplicable=method.strip() == "all" and layer is None)
    records, errors, used = [], [], set()
    for batch in iter_batches(images, loaded.preprocess, batch_size=1):
        errors.extend(batch.errors)
        _report_skipped(batch.errors)
        if not len(batch):
            continue
        stem = _unique_stem(Path(batch.sources[0]).stem, used)
        try:
            record = _explain_one_image(loaded, batch, run, target, layer, Path(out) / stem, debug)
        except TargetError:
            raise  # the same for every image: stop with one line
        except Exception as error:  # this image fails; the next ones still run
            errors.append((batch.sources[0], _error_text(error)))
            _report_failure(f"failed on {batch.sources[0]}", error, debug)
            continue
        records.append(record)
        if not as_json:
            top = record["predictions"][0]
            typer.echo(
                f"{record['source']}: {top['label']} ({top['class_id']}) "
                f"{top['probability']:.3f} -> {record['panel']}"
            )
    if as_json:
        _echo_json(
            {
                "records": records,
                "errors": [{"source": s, "error": m} for s, m in errors],
                "skipped_methods": run.skipped,
            }
        )
    if errors or run.failed:
        raise typer.Exit(1)


class _ExplainRun:
    """The methods still to run, those skipped as inapplicable, and whether any failed."""

    def __init__(self, names: list[str], skip_inapplicable: bool) -> None:
        self.names = list(names)
        self.skip_inapplicable = skip_inapplicable
        self.skipped: dict[str, str] = {}
        self.failed = False

    def settle(self, failures, source: str, debug: bool) -> list[dict]:
        """Report each failure on stderr; return them as JSON records. A layer error under
        ``--method all`` (the method cannot use this model) drops the method for good."""
        from convlens.errors import LayerError

        records = []
        for failure in failures:
            text = _error_text(failure.error)
            if self.skip_inapplicable and isinstance(failure.error, LayerError):
                self.names.remove(failure.method)
                self.skipped[failure.method] = text
                typer.echo(
                    f"skipped {failure.method} (cannot apply to this model): {text}", err=True
                )
                continue
            self.failed = True
            _report_failure(f"{failure.method} failed on {source}", failure.error, debug)
            records.append({"method": failure.method, "error": text})
        return records


def _report_failure(what: str | None, error: BaseException, debug: bool) -> None:
    """One line on stderr (``error: [WHAT: ]message``); with ``--debug`` the traceback first."""
    if debug:
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    prefix = f"{what}: " if what else ""
    typer.echo(f"error: {prefix}{_error_text(error)}", err=True)


def _error_text(error: BaseException) -> str:
    """A convlens error's own message (it names the fix); other errors with their type."""
    if isinstance(error, ConvlensError):
        return _one_line(error)
    return f"{type(error).__name__}: {_one_line(error)} (run with --debug for the traceback)"


def _explain_one_image(loaded, batch, run: _ExplainRun, target, layer, stem, debug) -> dict:
    """Run every method on one image; write ``stem.png`` (panel) and ``stem.json``."""
    from convlens.attribution.explain import explain_methods, top_predictions
    from convlens.render import save_png
    from convlens.render.panel import PanelTile, explanation_panel, tile_title

    predictions = top_predictions(loaded, batch.tensor)[0]
    explanations, failures = explain_methods(
        loaded, batch, run.names, target, layer, progress=True, keep_going=True
    )
    failed = run.settle(failures, batch.sources[0], debug)
    tiles, methods = [], []
    for item in explanations:
        for row, info in enumerate(item.record()["rows"]):
            title = tile_title(item.method, info["class_name"], info["score"], info["probability"])
            tiles.append(PanelTile(item.maps[row], title))
            methods.append(
                {"method": item.method, "layer": item.layer, "seconds": round(item.seconds, 4)}
                | {k: v for k, v in info.items() if k != "source"}
                | {k: _row_extra(v, row) for k, v in item.record()["extras"].items()}
            )
    top = predictions[0]
    panel = explanation_panel(
        batch.display[0], tiles, input_title=f"input: {top['label']} p={top['probability']:.2f}"
    )
    panel_path = save_png(panel, stem.with_suffix(".png"))
    layers = sorted({m["layer"] for m in methods if m["layer"]})
    record = {
        "source": batch.sources[0],
        "model": loaded.name,
        "target": target,
        "layer": layers[0] if len(layers) == 1 else layers or None,
        "predictions": predictions,
        "methods": methods,
        "failed_methods": failed,
        "panel": str(panel_path),
    }
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
    return record


def _row_extra(value, row: int):
    return value[row] if isinstance(value, list) else value


def _unique_stem(stem: str, used: set[str]) -> str:
    candidate, count = stem, 1
    while candidate in used:
        count += 1
        candidate = f"{stem}_{count}"
    used.add(candidate)
    return candidate


@app.command("evaluate")
def evaluate_command(
    model: ModelOption = "synthetic-shapes",
    methods: Annotated[
        str, typer.Option("--methods", help="Method names, comma separated, or 'all'.")
    ] = "all",
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Images to use.")] = 50,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Annotations: simple JSON or COCO instances JSON."),
    ] = None,
    images_dir: Annotated[
        str | None, typer.Option("--images", help="Folder of the annotated images.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Synthetic data stream (1 = held out).")] = 1,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder for leaderboard.json, curves.png and sanity.png (layer-by-layer "
            "randomisation of Grad-CAM, saliency and guided backprop on 8 images).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Score attribution methods against ground truth: localisation, faithfulness, sanity."""
    from pathlib import Path

    from convlens.attribution.explain import method_names
    from convlens.evaluate.benchmark import evaluate_on_source
    from convlens.render.leaderboard import LEADERBOARD_NOTE, leaderboard_curves, leaderboard_table

    names = method_names(methods)
    progress = None if as_json else (lambda line: typer.echo(line, err=True))
    cascade = 8 if out is not None else 0
    board = evaluate_on_source(
        model, names, limit, data, images_dir, seed, progress, cascade_images=cascade
    )
    written = []
    if out is not None:
        from convlens.render import save_png
        from convlens.render.plots import similarity_plot

        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "leaderboard.json").write_text(json.dumps(board.scores, indent=2))
        written.append(folder / "leaderboard.json")
        if board.curves:
            written.append(save_png(leaderboard_curves(board), folder / "curves.png"))
        if board.cascades:
            written.append(save_png(similarity_plot(board.cascades), folder / "sanity.png"))
    if as_json:
        _echo_json(board.scores)
    else:
        typer.echo(f"{board.model}: {board.images} images, top-1 accuracy {board.accuracy:.3f}")
        typer.echo(leaderboard_table(board))
        typer.echo(LEADERBOARD_NOTE)
        if written:
            typer.echo("wrote " + ", ".join(str(path) for path in written))
    for name, message in board.errors.items():
        typer.echo(f"{name} failed: {message}", err=True)
    if board.errors:
        raise typer.Exit(1)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


OutOption = Annotated[str | None, typer.Option("--out", "-o", help="PNG file to write.")]


@app.command("filters")
def filters_command(
    model: ModelOption = "efficientnet_lite0",
    layer: Annotated[
        str | None, typer.Option("--layer", help="Conv2d layer (default: the first).")
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
) -> None:
    """Draw a convolution's filters as a grid of tiles (grey = 0), scaling stated on it."""
    from convlens.features.filters import filter_tiles
    from convlens.models import load_model
    from convlens.render.features import filter_grid
    from convlens.render.images import save_png

    tiles = filter_tiles(load_model(model), layer, reduce=reduce, scaling=scaling)
    path = save_png(filter_grid(tiles), out or f"filters-{tiles.layer or 'model'}.png")
    typer.echo(f"{len(tiles.labels)} {tiles.reduce} tiles of {tiles.layer} ({scaling}) -> {path}")


@app.command("features")
def features_command(
    image: Annotated[str, typer.Argument(help="Image file or sample name (cat, coffee, ...).")],
    model: ModelOption = "efficientnet_lite0",
    layer: Annotated[
        str | None, typer.Option("--layer", help="Layer (default: last conv before pooling).")
    ] = None,
    all_layers: Annotated[
        bool,
        typer.Option("--all-layers", help="Channel-mean map of each stage's output, in order."),
    ] = False,
    top: Annotated[int, typer.Option(help="Channels shown, largest mean first.")] = 32,
    out: OutOption = None,
) -> None:
    """Draw one layer's feature maps (or every layer's channel mean) for one image."""
    from convlens.data.images import load_images
    from convlens.features.maps import feature_maps, layer_mean_maps
    from convlens.layers import default_cam_layer
    from convlens.models import load_model
    from convlens.render.features import feature_map_grid, layer_means_grid
    from convlens.render.images import save_png

    loaded = load_model(model)
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
        str | None, typer.Option("--channel", help="LAYER:C, a channel to visualise.")
    ] = None,
    steps: Annotated[int, typer.Option(help="Gradient-ascent steps.")] = 256,
    param: Annotated[str, typer.Option(help="fourier or pixels.")] = "fourier",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: OutOption = None,
) -> None:
    """Activation maximisation: the image that most excites a class or a channel."""
    from convlens.errors import MethodError
    from convlens.features import optimize
    from convlens.models import load_model
    from convlens.render.features import to_uint8
    from convlens.render.images import save_png

    if (class_ is None) == (channel is None):
        raise MethodError("give exactly one of --class ID|NAME or --channel LAYER:C")
    loaded = load_model(model)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``convlens`` console script; returns the exit status."""
    argv, debug = _take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    try:
        code = app(args=argv, prog_name="convlens", standalone_mode=False)
    except typer.Exit as done:
        return done.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 1
    except typer.TyperException as error:  # usage errors (exit 2) and other CLI errors
        error.show()
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # convlens errors, and anything else (a model that fails...)
        _report_failure(None, error, debug)
        return 1
    return code if isinstance(code, int) else 0


def _take_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """``--debug`` may sit anywhere before a ``--``; it is moved to the front, where the
    root option is parsed."""
    end = argv.index("--") if "--" in argv else len(argv)
    rest = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    debug = len(rest) != len(argv)
    return (["--debug"] + rest if debug else rest), debug


if __name__ == "__main__":
    sys.exit(main())
