"""``convlens serve``: the local web view (FastAPI app served by uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.app import DeviceOption, ModelOption, app
from convlens.cli.options import TrustPickleOption
from convlens.package import DEFAULT_MODEL


@app.command("serve")
def serve_command(
    model: ModelOption = DEFAULT_MODEL,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (default: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.", min=0, max=65535)] = 8000,
    device: DeviceOption = None,
    trust_pickle: TrustPickleOption = False,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", help="Largest accepted upload, in MB (to 1000).")
    ] = 20.0,
    max_megapixels: Annotated[
        float,
        typer.Option("--max-megapixels", help="Largest accepted image, in megapixels (to 1000)."),
    ] = 40.0,
    time_limit: Annotated[
        float,
        typer.Option(
            "--time-limit",
            help="Seconds a request may take in the server (0.01 to 3600); then it stops (503).",
        ),
    ] = 60.0,
    queue: Annotated[
        int,
        typer.Option(
            "--queue", help="Requests waiting or running at once (1 to 1000); more answer 429."
        ),
    ] = 8,
    atlas: Annotated[
        Path | None,
        typer.Option(
            "--atlas",
            help="Also show this scan's atlas folder (convlens scan/embed --out DIR), read-only.",
        ),
    ] = None,
) -> None:
    """Serve a local web app: upload an image or pick a sample, choose method, layer and
    class, see the map; the JSON API behind it is described at /openapi.json."""
    from convlens.errors import ConvlensError
    from convlens.serve import ServeSettings, run_server

    try:
        settings = ServeSettings.from_options(max_upload_mb, max_megapixels, time_limit, queue)
    except ConvlensError as error:  # a limit out of range: a usage error, one line
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    run_server(
        model,
        host=host,
        port=port,
        device=device,
        settings=settings,
        echo=typer.echo,
        atlas=atlas,
        trust_pickle=trust_pickle,
    )
