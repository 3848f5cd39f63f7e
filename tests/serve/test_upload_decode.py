"""Uploads the decoder cannot read (another format, DDS bytes named .png) answer 400 with
the unreadable-image message, and the server keeps serving."""

from __future__ import annotations

import io

import pytest
from PIL import Image

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from convlens import load_model  # noqa: E402
from convlens.serve import create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["DDS", "PPM", "ICO"])
def test_undecodable_upload_is_a_400_and_the_server_keeps_serving(fmt):
    app = create_app(load_model("synthetic-shapes"))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        upload = {"image": ("b_bad.png", encoded(fmt), "image/png")}
        response = client.post("/api/explain", files=upload)
        assert response.status_code == 400, response.text
        assert "not a readable image" in response.json()["error"]
        good = {"image": ("good.png", encoded("PNG"), "image/png")}
        assert client.post("/api/explain", files=good).status_code == 200
