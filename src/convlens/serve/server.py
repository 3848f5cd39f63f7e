"""Start the web view: load the model, build the app, run uvicorn (loopback by default)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from pathlib import Path

from convlens.models.loading import LoadedModel
from convlens.package import DEFAULT_MODEL
from convlens.serve.inputs import ServeSettings

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (127.0.0.0/8, ::1,
    localhost). ``0.0.0.0`` and every other address are reachable from the network."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str) -> str | None:
    """The warning printed when ``host`` is not a loopback address (None when it is)."""
    if is_loopback(host):
        return None
    return (
        f"warning: serving on {host}, reachable from other machines. The web view has no "
        "authentication: anyone who can connect can run the model on their images. Use "
        "--host 127.0.0.1 unless that is what you want."
    )


def run_server(
    model: str | LoadedModel = DEFAULT_MODEL,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str | None = None,
    settings: ServeSettings | None = None,
    echo: Callable[[str], None] = print,
    atlas: str | Path | None = None,
) -> None:
    """Load ``model`` (moved to ``device`` when given), then serve it until interrupted;
    with ``atlas``, also that scan's atlas folder, read-only, under ``/atlas/``."""
    import uvicorn

    from convlens.models import load_model
    from convlens.serve.app import create_app
    from convlens.serve.atlas import AtlasFolder

    start = time.perf_counter()
    folder = AtlasFolder.open(atlas) if atlas is not None else None  # before the model loads
    loaded = load_model(model)
    if device is not None:
        from convlens.models.devices import resolve_device

        loaded.module.to(resolve_device(device))
    app = create_app(loaded, settings, folder)
    warning = exposure_warning(host)
    if warning:
        echo(warning)
    shown = f"[{host}]" if ":" in host else host
    echo(
        f"convlens serve: {loaded.name} ready in {time.perf_counter() - start:.1f} s; "
        f"open http://{shown}:{port}/ (API: /openapi.json); Ctrl+C stops"
    )
    if folder is not None:
        echo(f"atlas: {folder.root} at http://{shown}:{port}/atlas/ (read-only)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
