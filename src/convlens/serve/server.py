"""Start the web view: bind the port, load the model, build the app, run uvicorn (loopback
by default), and say it is ready only once it accepts connections."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn

from convlens.errors import ConvlensError
from convlens.models.loading import LoadedModel
from convlens.package import DEFAULT_MODEL
from convlens.serve.inputs import ServeSettings

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
SHUTDOWN_GRACE_SECONDS = 3  # then uvicorn cancels what still runs; stopped work ends sooner


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


class WebServer(uvicorn.Server):
    """uvicorn's server for ``app`` (from `create_app`) on an already bound ``sock``:
    ``on_ready()`` runs once it accepts connections, and shutting down first stops every
    queued and running request of the app's desk, so it ends within a few seconds."""

    def __init__(self, app, sock: socket.socket, on_ready: Callable[[], None] = lambda: None):
        config = uvicorn.Config(
            app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS
        )
        super().__init__(config)
        self.app = app
        self.sock = sock
        self.on_ready = on_ready

    def serve_forever(self) -> None:
        """Serve until interrupted (Ctrl+C) or ``should_exit`` is set; closes the socket."""
        with self.sock:
            self.run(sockets=[self.sock])

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.app.state.desk.stop_all()
        await super().shutdown(sockets)


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host`` (a name or an address, IPv6 with or without brackets)
    and ``port`` (0: a free port); `ConvlensError` naming the fix when that fails."""
    name = host.strip("[]")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise ConvlensError(
            f"cannot listen on {host[:100]!r}: {error.strerror or error}; give --host an "
            "address of this machine"
        ) from error
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise ConvlensError(
            f"cannot listen on {host[:100]}:{port}: {error.strerror or error}; choose another "
            "--port (or stop the program using it) or another --host"
        ) from error
    return sock


def prepare_server(
    model: str | LoadedModel = DEFAULT_MODEL,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str | None = None,
    settings: ServeSettings | None = None,
    echo: Callable[[str], None] = print,
    atlas: str | Path | None = None,
    trust_pickle: bool = False,
) -> WebServer:
    """Bind ``host``:``port``, load ``model`` (moved to ``device`` when given) and build
    the server; it prints that it is ready (with the port, also when ``port`` is 0) once
    it accepts connections. With ``atlas``, also that scan's atlas folder, read-only,
    under ``/atlas/``."""
    from convlens.models import load_model
    from convlens.serve.app import create_app
    from convlens.serve.atlas import AtlasFolder

    start = time.perf_counter()
    folder = AtlasFolder.open(atlas) if atlas is not None else None  # before the model loads
    sock = bind_socket(host, port)
    try:
        loaded = load_model(model, trust_pickle=trust_pickle)
        if device is not None:
            from convlens.models.devices import resolve_device

            loaded.module.to(resolve_device(device))
        port = sock.getsockname()[1]
        app = create_app(loaded, settings, folder, host=host, port=port)
    except BaseException:
        sock.close()
        raise
    warning = exposure_warning(host)
    if warning:
        echo(warning)
    shown = f"[{host.strip('[]')}]" if ":" in host else host

    def ready() -> None:
        echo(
            f"convlens serve: {loaded.name} ready in {time.perf_counter() - start:.1f} s; "
            f"open http://{shown}:{port}/ (API: /openapi.json); Ctrl+C stops"
        )
        if folder is not None:
            echo(f"atlas: {folder.root} at http://{shown}:{port}/atlas/ (read-only)")

    return WebServer(app, sock, ready)


def run_server(
    model: str | LoadedModel = DEFAULT_MODEL,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str | None = None,
    settings: ServeSettings | None = None,
    echo: Callable[[str], None] = print,
    atlas: str | Path | None = None,
    trust_pickle: bool = False,
) -> None:
    """`prepare_server` with these arguments (``trust_pickle``: see `load_model`), then
    serve until interrupted (Ctrl+C)."""
    prepare_server(
        model, host, port, device, settings, echo, atlas, trust_pickle=trust_pickle
    ).serve_forever()
