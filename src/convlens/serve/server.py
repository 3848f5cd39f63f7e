"""Start the web view: load the model, build the app, run uvicorn (loopback by default)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from convlens.models.loading import LoadedModel
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
    model: str | LoadedModel = "efficientnet_lite0",
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str | None = None,
    settings: ServeSettings | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Load ``model`` (moved to ``device`` when given), then serve it until interrupted."""
    import uvicorn

    from convlens.models import load_model
    from convlens.serve.app import create_app

    start = time.perf_counter()
    loaded = load_model(model)
    if device is not None:
        from convlens.models.devices import resolve_device

        loaded.module.to(resolve_device(device))
    app = create_app(loaded, settings)
    warning = exposure_warning(host)
    if warning:
        echo(warning)
    shown = f"[{host}]" if ":" in host else host
    echo(
        f"convlens serve: {loaded.name} ready in {time.perf_counter() - start:.1f} s; "
        f"open http://{shown}:{port}/ (API: /openapi.json); Ctrl+C stops"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
