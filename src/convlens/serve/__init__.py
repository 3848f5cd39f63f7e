"""The local web view: a FastAPI app (`create_app`) over the same calls as the CLI, with a
plain HTML/JS page from ``static/`` (no build step, nothing fetched from a CDN), run by
uvicorn (`run_server`)."""

from convlens.serve.app import create_app
from convlens.serve.inputs import ServeSettings
from convlens.serve.server import is_loopback, run_server

__all__ = ["ServeSettings", "create_app", "is_loopback", "run_server"]
