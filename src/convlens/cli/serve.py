"""``convlens serve``: the local web view (FastAPI app served by uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.app import DeviceOption, ModelOption, app
from convlens.package import DEFAULT_MODEL


@app.command("serve")
def serve_command(
    model: ModelOption = DEFAULT_MODEL,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (default: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.", min=0, max=65535)] = 8000,
    device: DeviceOption = None,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", help="Largest accepted upload, in MB.")
    ] = 20.0,
    max_megapixels: Annotated[
        float, typer.Option("--max-megapixels", help="Largest accepted image, in megapixels.")
    ] = 40.0,
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
    from convlens.serve import ServeSettings, run_server

    settings = ServeSettings(
        max_upload_bytes=int(max_upload_mb * 1e6), max_pixels=int(max_megapixels * 1e6)
    )
    run_server(
        model,
        host=host,
        port=port,
        device=device,
        settings=settings,
        echo=typer.echo,
        atlas=atlas,
    )
