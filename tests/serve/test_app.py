"""The web API through FastAPI's TestClient, on the shipped synthetic-shapes model (64 px)."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import assert_same_state, model_state
from tests.helpers.networks import small_convnet

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from convlens import explain, load_model  # noqa: E402
from convlens.data.samples import sample_path  # noqa: E402
from convlens.report.views import map_view  # noqa: E402
from convlens.serve import ServeSettings, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
LOCAL = "http://127.0.0.1"  # an address the app answers (TestClient's own is refused)


@pytest.fixture(scope="module")
def shapes():
    return load_model("synthetic-shapes")


@pytest.fixture(scope="module")
def client(shapes):
    with TestClient(create_app(shapes), base_url=LOCAL) as test_client:
        yield test_client


def decode_png(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def png_file(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring ``width x height`` 1-bit pixels, with almost no data:
    decoding it would need ~1.25 GB; reading its header costs nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


def test_health_methods_samples_classes(client, shapes):
    assert client.get("/api/health").json() == {
        "status": "ok",
        "model": "synthetic-shapes",
        "version": client.get("/api/health").json()["version"],
    }
    names = {m["name"] for m in client.get("/api/methods").json()}
    assert {"gradcam", "occlusion", "saliency"} <= names
    assert "cat" in client.get("/api/samples").json()
    classes = client.get("/api/classes").json()
    assert [c["name"] for c in classes] == list(shapes.labels)


def test_layers_lists_the_cam_layer(client):
    table = client.get("/api/layers").json()
    spatial = [row["name"] for row in table["layers"] if row["spatial"]]
    assert table["default"] in spatial
    conv = next(row for row in table["layers"] if row["name"] == "features.0")
    assert conv["type"] == "Conv2d" and conv["receptive_field"] == [3, 3]


def test_openapi_documents_the_api_and_no_cdn_page_is_served(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/health", "/api/layers", "/api/predict", "/api/explain"} <= set(paths)
    assert "multipart/form-data" in paths["/api/explain"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 404
    page = client.get("/").text
    assert "http://" not in page and "https://" not in page


def test_explain_answers_what_the_library_computes(client, shapes):
    answer = client.post("/api/explain", data={"sample": "cat", "method": "gradcam"}).json()
    library = explain(shapes, "cat", "gradcam")
    assert answer["class_id"] == int(library.class_ids[0])
    assert answer["class_name"] == library.class_names[0]
    assert answer["score"] == pytest.approx(float(library.scores[0]), rel=1e-5)
    assert answer["layer"] == library.layer and answer["method"] == "gradcam"
    assert answer["seconds"] >= 0 and answer["total_seconds"] >= answer["seconds"]
    assert np.array_equal(decode_png(answer["overlay"]), map_view(library).overlay)
    x0, y0, x1, y1 = answer["box"]
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64


def test_upload_equals_sample(client):
    data = sample_path("cat").read_bytes()
    uploaded = client.post("/api/explain", files={"image": ("c.png", data, "image/png")}).json()
    named = client.post("/api/explain", data={"sample": "cat"}).json()
    assert uploaded["overlay"] == named["overlay"] and uploaded["class_id"] == named["class_id"]


def test_target_rank_id_and_contrast(client, shapes):
    ranked = client.post("/api/predict", data={"sample": "cat", "top": 3}).json()["predictions"]
    second = client.post("/api/explain", data={"sample": "cat", "target": "top2"}).json()
    assert second["class_id"] == ranked[1]["class_id"]
    by_name = client.post("/api/explain", data={"sample": "cat", "target": ranked[2]["label"]})
    assert by_name.json()["class_id"] == ranked[2]["class_id"]
    both = client.post(
        "/api/explain", data={"sample": "cat", "target": "top1", "contrast": "top2"}
    ).json()
    image = explain(shapes, "cat", "saliency").display  # the pixels the model saw
    tensor = shapes.preprocess.normalize(image[0])[None]
    with torch.no_grad():
        logits = shapes.module(tensor)[0]
    first, runner_up = ranked[0]["class_id"], ranked[1]["class_id"]
    assert both["score"] == pytest.approx(float(logits[first] - logits[runner_up]), abs=1e-4)


def test_layer_choice_and_non_layer_method(client):
    layers = [r["name"] for r in client.get("/api/layers").json()["layers"] if r["spatial"]]
    answer = client.post("/api/explain", data={"sample": "cat", "layer": layers[0]}).json()
    assert answer["layer"] == layers[0]
    plain = client.post("/api/explain", data={"sample": "cat", "method": "saliency"}).json()
    assert plain["layer"] is None and plain["method"] == "saliency"


def test_predict_returns_top_k_and_the_image(client):
    answer = client.post("/api/predict", data={"sample": "coffee", "top": 3}).json()
    probabilities = [p["probability"] for p in answer["predictions"]]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
    assert decode_png(answer["image"]).shape == (64, 64, 3)


@pytest.mark.parametrize(
    ("form", "files", "status", "words"),
    [
        ({}, {"image": ("x.png", b"not an image", "image/png")}, 400, "not a readable image"),
        ({"sample": "cat", "method": "nope"}, None, 400, "unknown method"),
        ({"sample": "cat", "layer": "nope"}, None, 400, "no layer named"),
        ({"sample": "cat", "target": "zebra"}, None, 400, "no class named"),
        ({"sample": "cat", "target": "99"}, None, 400, "out of range"),
        ({"sample": "cat", "method": "saliency", "layer": "features"}, None, 400, "layer"),
        ({"sample": "/etc/passwd"}, None, 400, "paths on the server are never read"),
        ({"sample": str(sample_path("cat"))}, None, 400, "not a sample name"),
        ({"sample": "../cat"}, None, 400, "not a sample name"),
        ({}, None, 400, "exactly one of"),
        ({"sample": "cat"}, {"image": ("x.png", png_file(), "image/png")}, 400, "exactly one"),
        ({"sample": "cat", "job": "bad id!"}, None, 400, "POST /api/jobs"),
        ({}, {"image": ("b.png", bomb_png(), "image/png")}, 413, "decompression bomb"),
    ],
)
def test_errors_are_json_and_the_server_keeps_serving(client, form, files, status, words):
    response = client.post("/api/explain", data=form, files=files)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert client.post("/api/explain", data={"sample": "cat"}).status_code == 200


def test_feature_and_filter_errors(client):
    assert client.post("/api/features", data={"sample": "cat", "layer": "x"}).status_code == 400
    assert client.get("/api/filters", params={"layer": "pool"}).status_code == 400
    features = client.post("/api/features", data={"sample": "cat", "top": 4}).json()
    assert len(features["channels"]) == 4 and decode_png(features["grid"]).ndim == 3
    filters = client.get("/api/filters").json()
    assert filters["layer"] == "features.0" and filters["count"] == 16


def test_upload_and_pixel_limits(shapes):
    settings = ServeSettings(max_upload_bytes=2_000, max_pixels=50 * 50)
    with TestClient(create_app(shapes, settings), base_url=LOCAL) as small:
        big = bytes(np.random.default_rng(0).integers(0, 255, 5_000, dtype=np.uint8))
        oversized = small.post("/api/explain", files={"image": ("x.png", big, "image/png")})
        assert oversized.status_code == 413 and "limit" in oversized.json()["error"]
        wide = small.post("/api/predict", files={"image": ("w.png", png_file((60, 60)))})
        assert wide.status_code == 413 and "60x60 pixels" in wide.json()["error"]
        fits = small.post("/api/predict", files={"image": ("w.png", png_file((40, 40)))})
        assert fits.status_code == 200


def test_concurrent_requests_match_sequential_ones_and_leave_the_model(shapes, client):
    forms = [
        {"sample": "cat", "method": "gradcam"},
        {"sample": "coffee", "method": "guided_backprop"},
        {"sample": "cat", "method": "layercam", "layer": "features.8"},
        {"sample": "horse", "method": "saliency"},
    ] * 2
    sequential = [client.post("/api/explain", data=form).json()["overlay"] for form in forms]
    before = model_state(shapes.module)
    with ThreadPoolExecutor(len(forms)) as pool:
        answers = list(pool.map(lambda f: client.post("/api/explain", data=f), forms))
    assert [a.status_code for a in answers] == [200] * len(forms)
    assert [a.json()["overlay"] for a in answers] == sequential
    assert_same_state(before, model_state(shapes.module))
    assert client.app.state.desk.running_jobs() == []


def test_explain_runs_one_forward_pass():
    """Grad-CAM through the API: one forward pass; the class, score and probability come
    from it (no separate prediction pass)."""
    net = CountingNet(after=10**6, delay=0.0)
    loaded = load_model(net, labels=["a", "b", "c"])
    with TestClient(create_app(loaded), base_url=LOCAL) as counted:
        counted.post("/api/explain", data={"sample": "cat"})  # finds the default layer
        net.calls = 0
        answer = counted.post("/api/explain", data={"sample": "cat", "method": "gradcam"})
    assert answer.status_code == 200 and net.calls == 1


def test_pixel_work_cancelled_before_its_turn_never_runs():
    from convlens.layers.interrupt import Interrupted
    from convlens.serve.desk import CANCELLED, ModelDesk, Ticket

    desk = ModelDesk(load_model(small_convnet()))
    ticket, ran = Ticket(), []
    ticket.stop(CANCELLED)
    with pytest.raises(Interrupted):
        desk.submit_pixels(lambda: ran.append(1), ticket).result(10)
    assert desk.submit_pixels(lambda: "drawn").result(10) == "drawn" and ran == []
    desk.close()


class CountingNet(torch.nn.Module):
    """small_convnet that counts its forward passes, waits ``delay`` s in each, and sets
    ``reached`` once ``after`` passes have started."""

    def __init__(self, after: int, delay: float) -> None:
        super().__init__()
        self.net, self.after, self.delay = small_convnet(), after, delay
        self.calls, self.reached = 0, threading.Event()

    def forward(self, x):
        self.calls += 1
        if self.calls >= self.after:
            self.reached.set()
        time.sleep(self.delay)
        return self.net(x)


def test_cancel_needs_the_token_and_stops_a_slow_method_between_passes():
    net = CountingNet(after=3, delay=0.1)
    loaded = load_model(net, labels=["a", "b", "c"])
    settings = ServeSettings()
    with TestClient(create_app(loaded, settings), base_url=LOCAL) as slow:
        before = model_state(net)
        job = slow.post("/api/jobs").json()
        other = slow.post("/api/jobs").json()
        assert job["job"] != other["job"] and len(job["token"]) >= 32
        form = {"sample": "cat", "method": "occlusion", "job": job["job"]}
        cancel_url = f"/api/cancel/{job['job']}"
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(slow.post, "/api/explain", data=form)
            assert net.reached.wait(30)
            for token in ({}, {"token": other["token"]}, {"token": job["token"][:-1]}):
                refused = slow.post(cancel_url, data=token)
                assert refused.status_code == 403 and "token" in refused.json()["error"]
            assert not pending.done() and slow.app.state.desk.running_jobs() == [job["job"]]
            cancelled = slow.post(cancel_url, data={"token": job["token"]})
            assert cancelled.json() == {"job": job["job"], "cancelled": True}
            answer = pending.result(30)
        assert answer.status_code == 409 and "cancelled" in answer.json()["error"]
        # occlusion at 224 px (patch 32, stride 16) needs 2 + 169 / 8 = 24 passes
        assert net.calls < 10
        assert_same_state(before, model_state(net))
        assert slow.app.state.desk.running_jobs() == []
        again = slow.post(cancel_url, data={"token": job["token"]})  # it has ended
        assert again.json() == {"job": job["job"], "cancelled": False}
        net.reached.clear()
        done = slow.post("/api/explain", data={"sample": "cat", "method": "gradcam"})
        assert done.status_code == 200


def test_a_waiting_request_is_cancelled_without_running():
    from convlens.layers.interrupt import Interrupted
    from convlens.serve.desk import CANCELLED, ModelDesk, Ticket

    desk = ModelDesk(load_model(small_convnet()))
    started, release, ran = threading.Event(), threading.Event(), []

    def hold():
        started.set()
        release.wait(10)

    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(desk.run, hold)
        assert started.wait(10)
        ticket = Ticket()
        waiter = pool.submit(desk.run, lambda: ran.append(1), ticket)
        ticket.stop(CANCELLED)
        with pytest.raises(Interrupted, match="waiting"):
            waiter.result(10)
        release.set()
        holder.result(10)
    assert ran == []


def test_a_client_that_disconnects_stops_its_method():
    """Through a real uvicorn server: closing the connection mid-request stops the work."""
    import socket

    import uvicorn

    net = CountingNet(after=3, delay=0.02)
    loaded = load_model(net, labels=["a", "b", "c"])
    app = create_app(loaded)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        boundary = "xyz"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="sample"\r\n\r\ncat\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="method"\r\n\r\nocclusion\r\n'
            f"--{boundary}--\r\n"
        ).encode()
        head = (
            f"POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
        ).encode()
        before = model_state(net)
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(head + body)
            assert net.reached.wait(30)
        app.state.desk.run(lambda: None)  # waits until the cancelled request lets go
        assert net.calls < 10  # stopped: occlusion would need 24 passes
        assert_same_state(before, model_state(net))
    finally:
        server.should_exit = True
        thread.join(10)


def test_contrast_answer_names_both_classes_and_both_probabilities(client, shapes):
    ranked = client.post("/api/predict", data={"sample": "cat", "top": 2}).json()["predictions"]
    both = client.post(
        "/api/explain", data={"sample": "cat", "target": "top1", "contrast": "top2"}
    ).json()
    first, second = ranked
    assert both["title"] == f"{first['label']} rather than {second['label']}"
    assert both["score_kind"] == "logit difference"
    assert both["probability"] == pytest.approx(first["probability"], abs=1e-5)
    assert both["rather_than"]["class_id"] == second["class_id"]
    assert both["rather_than"]["class_name"] == second["label"]
    assert both["rather_than"]["probability"] == pytest.approx(second["probability"], abs=1e-5)
    plain = client.post("/api/explain", data={"sample": "cat"}).json()
    assert plain["title"] == first["label"] and plain["rather_than"] is None
    assert plain["score_kind"] == "logit"


def test_layer_list_marks_the_layers_a_user_picks(client):
    rows = {row["name"]: row for row in client.get("/api/layers").json()["layers"]}
    picked = {name for name, row in rows.items() if row["pickable"]}
    # every convolution is listed; normalization and activation modules are not
    assert {name for name in picked if rows[name]["type"] == "Conv2d"} == {
        name for name, row in rows.items() if row["type"] == "Conv2d"
    }
    assert not {rows[name]["type"] for name in picked} & {"ReLU", "BatchNorm2d", "Identity"}
    assert "features" in picked and client.get("/api/layers").json()["default"] in picked


def test_pickable_layers_of_a_timm_style_network():
    from torch import nn

    from convlens.layers import is_pickable_layer

    class NormAct(nn.BatchNorm2d):  # like timm's BatchNormAct2d: a norm with children
        def __init__(self, channels):
            super().__init__(channels)
            self.act = nn.ReLU6()

    block = nn.Sequential(nn.Conv2d(3, 4, 3), NormAct(4), nn.Dropout2d(), nn.Identity())
    kept = [is_pickable_layer(module) for module in (block, *block, nn.MaxPool2d(2), nn.SiLU())]
    assert kept == [True, True, False, False, False, True, False]


class Conv2dNormActivation(torch.nn.Sequential):
    """Named like torchvision's block (conv, norm, activation): not itself a convolution."""


class BlockAndUnusedConvNet(torch.nn.Module):
    """A seeded 3-class net whose first layer is a `Conv2dNormActivation` block and whose
    ``aux`` convolution never runs (like Inception-v3's AuxLogits in eval mode), so the
    layer table has no output shape for it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        nn = torch.nn
        self.stem = Conv2dNormActivation(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.body = nn.Conv2d(4, 6, 3, padding=1)
        self.aux = nn.Conv2d(6, 5, 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


def test_layer_list_counts_the_filters_of_each_convolution_only():
    from convlens import Preprocess

    net = load_model(
        BlockAndUnusedConvNet(), labels=["a", "b", "c"], preprocess=Preprocess(size=32)
    )
    with TestClient(create_app(net), base_url=LOCAL) as odd:
        rows = {row["name"]: row for row in odd.get("/api/layers").json()["layers"]}
        counted = {name: row["filters"] for name, row in rows.items() if row["filters"]}
        assert counted == {"stem.0": 4, "body": 6, "aux": 5}
        assert rows["stem"]["type"] == "Conv2dNormActivation" and rows["stem"]["filters"] is None
        assert rows["aux"]["output_shape"] is None
        assert odd.get("/api/filters", params={"layer": "aux"}).json()["count"] == 5


def test_a_cancel_that_crosses_its_finished_job_is_not_an_error(client):
    job = client.post("/api/jobs").json()
    done = client.post("/api/explain", data={"sample": "cat", "job": job["job"]})
    assert done.status_code == 200
    url = f"/api/cancel/{job['job']}"
    late = client.post(url, data={"token": job["token"]})
    assert late.status_code == 200 and late.json() == {"job": job["job"], "cancelled": False}
    assert client.post("/api/cancel/never-issued", data={"token": "x"}).status_code == 404


def test_a_finished_job_keeps_its_token_and_its_id_is_not_reused(client):
    job = client.post("/api/jobs").json()
    assert client.post("/api/explain", data={"sample": "cat", "job": job["job"]}).status_code == 200
    url = f"/api/cancel/{job['job']}"
    for wrong in ({"token": job["token"][:-1]}, {}):
        refused = client.post(url, data=wrong)
        assert refused.status_code == 403 and "token" in refused.json()["error"]
    again = client.post("/api/explain", data={"sample": "cat", "job": job["job"]})
    assert again.status_code == 409 and "already used" in again.json()["error"]
    unknown = client.post("/api/explain", data={"sample": "cat", "job": "never-issued"})
    assert unknown.status_code == 400 and "unknown" in unknown.json()["error"]
