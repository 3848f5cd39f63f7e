"""``convlens evaluate``: the ground-truth leaderboard."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from convlens.cli.app import DeviceOption, JsonOption, ModelOption, _echo_json, app


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
    device: DeviceOption = "cpu",
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
        model, names, limit, data, images_dir, seed, progress, device=device, cascade_images=cascade
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
