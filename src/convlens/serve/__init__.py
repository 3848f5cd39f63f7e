"""The local web view: a FastAPI app (`create_app`) over the same calls as the CLI, with a
plain HTML/JS page from ``static/`` (no build step, nothing fetched from a CDN), run by
uvicorn (`run_server`, or `prepare_server` to hold the server before it runs). It answers
only its own host names and no cross-site post (`convlens.serve.guard`)."""

from convlens.serve.app import create_app
from convlens.serve.inputs import ServeSettings
from convlens.serve.server import is_loopback, prepare_server, run_server

__all__ = ["ServeSettings", "create_app", "is_loopback", "prepare_server", "run_server"]
