"""``convlens report``: one self-contained HTML page for some images."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.app import DeviceOption, ImagesArgument, ModelOption, _report_skipped, app
from convlens.cli.options import ForceOption, TrustPickleOption
from convlens.package import DEFAULT_MODEL


@app.command("report")
def report_command(
    images: ImagesArgument,
    model: ModelOption = DEFAULT_MODEL,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="Methods shown side by side, comma separated, or 'all' (default: "
            "gradcam, gradcam_pp, layercam, saliency, guided_backprop).",
        ),
    ] = None,
    methods_alias: Annotated[
        str | None, typer.Option("--methods", hidden=True, help="Old spelling of --method.")
    ] = None,
    top: Annotated[int, typer.Option("--top", help="Classes explained per image.", min=1)] = 3,
    visualize: Annotated[
        bool, typer.Option("--visualize", help="Add the class visualisation of the top class.")
    ] = False,
    out: Annotated[str, typer.Option("--out", "-o", help="HTML file to write.")] = "report.html",
    device: DeviceOption = "cpu",
    force: ForceOption = False,
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Write one HTML page (pictures inlined, no network) with a section per image:
    top-5, methods for the top classes, CAM box, contrast, occlusion, stages, feature maps,
    and the first-layer filters. Unreadable inputs are skipped with a message (exit 1). An
    existing --out file that convlens did not write is refused unless --force."""
    from convlens.cli.options import chosen_methods
    from convlens.files import check_writable
    from convlens.models import load_model
    from convlens.report import DEFAULT_METHODS, build_report, write_report

    check_writable(out, force)  # before any work
    if out.endswith(("/", os.sep)) or Path(out).suffix.lower() not in (".html", ".htm"):
        raise typer.BadParameter(
            f"{out} is not an HTML file name: the report is one page; give --out NAME.html",
            param_hint="--out",
        )
    chosen_methods(methods_alias or method or DEFAULT_METHODS)
    loaded = load_model(model, device=device, trust_pickle=trust_pickle)
    page, skipped = build_report(
        loaded,
        images,
        methods_alias or method or DEFAULT_METHODS,
        top=top,
        visualize=visualize,
        progress=lambda message: typer.echo(message, err=True),
    )
    _report_skipped(skipped)
    path = write_report(out, page, force)
    typer.echo(f"{path} ({len(page) / 1e6:.1f} MB)")
    if skipped:
        raise typer.Exit(1)
