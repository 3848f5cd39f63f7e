"""``convlens evaluate``: the leaderboards (``--benchmark shapes|shapes-multi|gridpg|
counterfactual``)."""

from __future__ import annotations

from typing import Annotated

import typer

from convlens.cli.app import DeviceOption, JsonOption, _echo_json, _report_skipped, app
from convlens.cli.options import ForceOption, TrustPickleOption
from convlens.package import DEFAULT_MODEL


@app.command("evaluate")
def evaluate_command(
    benchmark: Annotated[
        str | None,
        typer.Option(
            "--benchmark",
            "-b",
            help="shapes (one object per image), shapes-multi (1-4 objects, each class "
            "scored against its own mask), gridpg (grids of real photos), counterfactual "
            "(does the map's mass per scene element rank the elements by how much the class "
            "logit drops when each is left out?) or shortcut (a planted cue, models "
            "shortcut-0.0 .. 1.0; docs/evaluation.md). Default: shapes-multi, where the "
            "methods beat the model-free floors; shapes with --data.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model name or path (default: synthetic-shapes, synthetic-scenes, or the "
            f"embedded {DEFAULT_MODEL} for gridpg).",
        ),
    ] = None,
    method: Annotated[
        str, typer.Option("--method", help="Method names, comma separated, or 'all'.")
    ] = "all",
    methods_alias: Annotated[
        str | None, typer.Option("--methods", hidden=True, help="Old spelling of --method.")
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            "-n",
            min=1,
            help="How much data: images (default 50 shapes), scenes (default 20 "
            "shapes-multi, 40 counterfactual, 60 shortcut) or grids per size (default 1 "
            "gridpg). The defaults run every method in under 10 minutes on two CPU cores "
            "except gridpg (docs/evaluation.md).",
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Annotations: simple JSON or COCO instances JSON."),
    ] = None,
    images_dir: Annotated[
        str | None,
        typer.Option(
            "--images",
            help="Folder of the annotated images; for gridpg a folder of photos or an "
            "ImageFolder (default: photos that installed packages ship).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Synthetic data stream (1 = held out).")] = 1,
    curve_steps: Annotated[
        int | None,
        typer.Option(
            "--curve-steps",
            min=1,
            help="Steps of the deletion/insertion curves (default: the image side, as RISE); "
            "fewer steps make large images faster to score.",
        ),
    ] = None,
    no_faithfulness: Annotated[
        bool,
        typer.Option(
            "--no-faithfulness",
            help="Skip the deletion/insertion curves (most of a box benchmark's forward "
            "passes): those two columns are left empty (null in JSON), the others do not change.",
        ),
    ] = False,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            help="Metric columns on the box benchmarks (shapes, shapes-multi): names from "
            "the metric zoo (docs/metrics.md), comma separated, or 'all'. Each method's and "
            "floor's maps are scored by each metric on the run's rows (--limit images); "
            "the JSON adds <metric> and <metric>_margin (over the best floor). Some "
            "metrics re-run the method many times per image: docs/metrics.md gives the "
            "cost.",
        ),
    ] = None,
    grid_scale: Annotated[
        str,
        typer.Option(
            "--grid-scale",
            help="gridpg only: full (each cell at the model's input size: a 2x2 grid of a "
            "224-pixel model is 448 pixels, 3x3 is 672) or shrunk (the grid squeezed into "
            "the input size: cells of 112 and 75 pixels).",
        ),
    ] = "full",
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
    device: DeviceOption = "cpu",
    force: ForceOption = False,
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Score attribution methods against ground truth: localisation, faithfulness, sanity,
    and the counterfactual ground truth of what the model relies on."""
    from pathlib import Path

    from convlens.cli.options import chosen_methods
    from convlens.evaluate.benchmark import evaluate_on_source
    from convlens.files import check_folder
    from convlens.render.leaderboard import leaderboard_curves, leaderboard_note, leaderboard_table

    if data is not None and model in (None, "synthetic-shapes"):
        raise typer.BadParameter(
            "--data needs --model: the model whose classes the annotations name "
            "(synthetic-shapes only knows its own synthetic classes)",
            param_hint="--model",
        )
    benchmark = _chosen_benchmark(benchmark, data)
    _refuse_unused_options(benchmark, model, data, images_dir, curve_steps, no_faithfulness)
    names = chosen_methods(methods_alias or method)
    chosen_metrics = _chosen_metrics(metrics, benchmark)
    if out is not None:  # before any work
        check_folder(out, ("leaderboard.json", "curves.png", "sanity.png"), force)
    progress = None if as_json else _counted_progress(names, limit)
    boxes = benchmark not in ("gridpg", "counterfactual", "shortcut")
    cascade = {"cascade_images": 8} if out is not None and boxes else {}
    if curve_steps is not None:
        cascade["curve_steps"] = curve_steps
    if no_faithfulness:
        cascade["faithfulness"] = False
    if chosen_metrics:
        cascade["metrics"] = chosen_metrics
    if benchmark == "gridpg":
        cascade["grid_scale"] = _grid_scale(grid_scale)
    elif grid_scale != "full":
        raise typer.BadParameter(
            f"--grid-scale is a gridpg setting, not used by --benchmark {benchmark}: drop it",
            param_hint="--grid-scale",
        )
    board = evaluate_on_source(
        model,
        names,
        limit,
        data,
        images_dir,
        seed,
        progress,
        device=device,
        benchmark=benchmark,
        trust_pickle=trust_pickle,
        **cascade,
    )
    written = []
    if out is not None:
        from convlens.files import write_json, writing
        from convlens.render import save_png
        from convlens.render.plots import similarity_plot

        folder = Path(out)
        with writing(folder, "evaluate", force=force):
            written.append(write_json(folder / "leaderboard.json", board.scores))
            if board.curves:
                written.append(save_png(leaderboard_curves(board), folder / "curves.png"))
            if board.cascades:
                written.append(save_png(similarity_plot(board.cascades), folder / "sanity.png"))
    if as_json:
        _echo_json(board.scores)
    else:
        typer.echo(
            f"{benchmark} on {board.model}: {board.images} {_rows(board)}, {_accuracy(board)}"
        )
        typer.echo(leaderboard_table(board))
        typer.echo(leaderboard_note(board))
        if written:
            typer.echo("wrote " + ", ".join(str(path) for path in written))
    _report_skipped(board.skipped)
    for name, message in board.errors.items():
        typer.echo(f"{name} failed: {message}", err=True)
    if board.errors or board.skipped:
        raise typer.Exit(1)


def _chosen_benchmark(benchmark: str | None, data: str | None) -> str:
    """``--benchmark``, or its default: ``shapes`` scores ``--data`` annotations, else
    ``shapes-multi``. An unknown name, or ``--data`` with another benchmark (it would be
    ignored), is a usage error."""
    from convlens.evaluate.benchmark import BENCHMARKS

    if benchmark is None:
        return "shapes-multi" if data is None else "shapes"
    if benchmark not in BENCHMARKS:
        raise typer.BadParameter(
            f"unknown benchmark {benchmark!r}; use one of {', '.join(BENCHMARKS)}",
            param_hint="--benchmark",
        )
    if data is not None and benchmark != "shapes":
        raise typer.BadParameter(
            f"--data scores your annotations and is not used by --benchmark {benchmark}: "
            "drop --benchmark (or give --benchmark shapes)",
            param_hint="--benchmark",
        )
    return benchmark


def _refuse_unused_options(
    benchmark: str,
    model: str | None,
    data: str | None,
    images_dir: str | None,
    curve_steps: int | None,
    no_faithfulness: bool,
) -> None:
    """Usage errors, before any model loads, for options ``benchmark`` would not use (they
    would be silently ignored): the deletion/insertion settings outside the box benchmarks,
    ``--images`` without annotations or grids, a ``--model`` for the shortcut benchmark."""
    boxes = benchmark in ("shapes", "shapes-multi")
    unused = [
        ("--curve-steps", curve_steps is not None and not boxes),
        ("--no-faithfulness", no_faithfulness and not boxes),
        ("--images", images_dir is not None and not (benchmark == "gridpg" or data is not None)),
        ("--model", model is not None and benchmark == "shortcut"),
    ]
    for option, refused in unused:
        if refused:
            why = {
                "--images": "it reads the images of --data annotations, or gridpg's photos",
                "--model": "the shortcut benchmark explains its own models shortcut-0.0 .. 1.0",
            }.get(option, "the deletion/insertion curves belong to shapes and shapes-multi")
            raise typer.BadParameter(
                f"not used by --benchmark {benchmark} ({why}): drop it", param_hint=option
            )


def _chosen_metrics(spec: str | None, benchmark: str) -> list[str]:
    """``--metrics`` as checked metric names (usage errors, exit 2: an unknown name, or a
    benchmark without per-row images, classes and masks)."""
    if spec is None:
        return []
    from convlens.errors import MetricError
    from convlens.evaluate.metrics_zoo import metric_names

    try:
        names = metric_names(spec)
    except MetricError as error:
        raise typer.BadParameter(str(error), param_hint="--metrics") from error
    if benchmark not in ("shapes", "shapes-multi"):
        raise typer.BadParameter(
            f"metric columns are scored on the box benchmarks (shapes, shapes-multi); "
            f"--benchmark {benchmark} has no rows of image, class and mask: drop --metrics",
            param_hint="--metrics",
        )
    return names


def _grid_scale(scale: str) -> str:
    from convlens.evaluate.gridpg import GRID_SCALES

    if scale not in GRID_SCALES:
        raise typer.BadParameter(
            f"{scale!r} is not a grid scale; use one of {', '.join(GRID_SCALES)}",
            param_hint="--grid-scale",
        )
    return scale


def _counted_progress(names: list[str], limit: int | None):
    """Progress lines on stderr: a header (methods x images), then ``[i/M] method: ...`` as
    each method finishes (other lines, such as the floors, as they come)."""
    images = f"up to {limit} images" if limit is not None else "the benchmark's images"
    typer.echo(f"evaluating {len(names)} methods x {images}", err=True)
    done: list[str] = []

    def report(line: str) -> None:
        name = line.split(":", 1)[0]
        if name in names and name not in done:
            done.append(name)
            line = f"[{len(done)}/{len(names)}] {line}"
        typer.echo(line, err=True)

    return report


def _rows(board) -> str:
    return board.settings.get("rows", "images")


def _accuracy(board) -> str:
    """What the model got right, in the words of the benchmark."""
    rows = _rows(board)
    if rows == "grid cells":
        sizes = board.settings.get("in_top_cells", {})
        each = "".join(f", {size} {value:.3f}" for size, value in sizes.items())
        return f"cell class in the grid's top n^2: {board.accuracy:.3f}{each}"
    if rows == "held-out scenes":
        return f"triangle decided right by shortcut-1.0: {board.accuracy:.3f}"
    if rows == "image-class pairs":
        return f"present classes detected (sigmoid > 0.5): {board.accuracy:.3f}"
    return f"top-1 accuracy {board.accuracy:.3f}"
