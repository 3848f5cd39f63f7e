"""`convlens serve --atlas DIR`: a scan's atlas folder listed and served read-only, and nothing
outside it (traversal, links, hidden files, other suffixes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.helpers.networks import small_convnet

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from convlens import load_model  # noqa: E402
from convlens.errors import ConvlensError  # noqa: E402
from convlens.render import save_png  # noqa: E402
from convlens.report.atlas import write_scan_atlas  # noqa: E402
from convlens.serve import create_app  # noqa: E402
from convlens.serve.atlas import AtlasFolder, AtlasPathError  # noqa: E402

LOCAL = "http://127.0.0.1"  # an address the app answers (TestClient's own is refused)

LAYERS = ["features.8", "features.2"]  # scan order, not sorted order


def atlas_folder(root: Path) -> Path:
    """A scan folder as `convlens scan` leaves it (two layers, two channels each, drawn as
    small PNGs; the atlas page by `write_scan_atlas`), with a resume-state folder."""
    folder = root / "scan"
    for index, layer in enumerate(LAYERS):
        channels = []
        for channel in range(2):
            pixels = np.full((12, 20, 3), 40 * (2 * index + channel), np.uint8)
            save_png(pixels, folder / layer / f"channel-{channel:04d}.png")
            unit = {"source": "cat", "value": 1.5, "y": 0, "x": 0, "box": [0, 0, 8, 8]}
            channels.append({"channel": channel, "top": [unit]})
        topk = {"layer": layer, "k": 1, "by": "max", "channels": channels}
        (folder / layer / "topk.json").write_text(json.dumps(topk))
    summary = {"layers": LAYERS, "scanned": 1, "skipped": [], "projection": None}
    (folder / "scan.json").write_text(json.dumps(summary))
    write_scan_atlas(folder)
    (folder / ".state").mkdir()
    (folder / ".state" / "rank0.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("atlas")
    folder = atlas_folder(root)
    save_png(np.zeros((4, 4, 3), np.uint8), root / "secret.png")  # beside, not inside
    (root / "secret.txt").write_text("not yours")
    (folder / "outside.png").symlink_to(root / "secret.png")
    (folder / "features.8" / "notes.txt").write_text("not a page or picture")
    return folder


@pytest.fixture(scope="module")
def client(atlas):
    app = create_app(load_model(small_convnet()), atlas=atlas)
    with TestClient(app, base_url=LOCAL) as test_client:
        yield test_client


def test_listing_has_pages_and_pictures_in_scan_order(client):
    listing = client.get("/api/atlas").json()
    assert listing["enabled"] and listing["kind"] == "scan" and listing["name"] == "scan"
    assert [page["path"] for page in listing["pages"]] == ["index.html"]
    assert listing["groups"] == LAYERS
    paths = [image["path"] for image in listing["images"]]
    expected = [f"{layer}/channel-000{c}.png" for layer in LAYERS for c in (0, 1)]
    assert sorted(paths) == sorted(expected)
    assert all(image["url"] == "/atlas/" + image["path"] for image in listing["images"])
    assert not listing["truncated"]


def test_pictures_and_pages_are_served_as_written(client, atlas):
    picture = client.get("/atlas/features.2/channel-0001.png")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert picture.content == (atlas / "features.2" / "channel-0001.png").read_bytes()
    page = client.get("/atlas/")
    assert page.status_code == 200 and page.text == (atlas / "index.html").read_text()
    assert "default-src 'none'" in page.headers["content-security-policy"]
    # every picture the atlas page links to is served
    for layer in LAYERS:
        assert f'src="{layer}/channel-0000.png"' in page.text
        assert client.get(f"/atlas/{layer}/channel-0000.png").status_code == 200
    assert client.get("/atlas/features.8/topk.json").json()["layer"] == "features.8"


@pytest.mark.parametrize(
    "url",
    [
        "/atlas/..%2Fsecret.png",
        "/atlas/features.8/..%2F..%2Fsecret.txt",
        "/atlas/%2E%2E/secret.png",
        "/atlas/../secret.png",  # normalised by the client to /secret.png: no such route
        "/atlas/%2Fetc%2Fpasswd",
        "/atlas/outside.png",  # a link leading out of the folder
        "/atlas/.state/rank0.json",  # hidden: the scan's resume state
        "/atlas/features.8/notes.txt",  # not a page, picture or JSON file
        "/atlas/features.8",  # a folder
        "/atlas/missing.png",
    ],
)
def test_anything_outside_the_folder_answers_404(client, url):
    answer = client.get(url)
    assert answer.status_code == 404 and "error" in answer.json()
    assert "not yours" not in answer.text


def test_atlas_folder_refuses_traversal_and_non_folders(atlas):
    folder = AtlasFolder.open(atlas)
    refused = [
        "../secret.png",
        "/etc/passwd",
        "features.8/../../secret.txt",
        "features.8/../features.2/channel-0000.png",  # any '..' is refused, even inside
        "..\\secret.png",
        "",
    ]
    for name in refused:
        with pytest.raises(AtlasPathError):
            folder.file(name)
    assert folder.file("features.2/channel-0000.png").parent.name == "features.2"
    with pytest.raises(ConvlensError, match="not a folder"):
        AtlasFolder.open(atlas / "scan.json")


def test_without_atlas_the_listing_is_empty_and_nothing_is_served():
    with TestClient(create_app(load_model(small_convnet())), base_url=LOCAL) as plain:
        listing = plain.get("/api/atlas").json()
        assert listing["enabled"] is False and listing["images"] == []
        answer = plain.get("/atlas/index.html")
        assert answer.status_code == 404 and "--atlas" in answer.json()["error"]
