"""The web view's protections: foreign hosts and cross-site posts refused, capped echo, the
queue cap and time limit, cancel tokens, shutdown that stops the work, "ready" only once
the port accepts connections, validated limits."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from tests.conftest import assert_same_state, model_state
from tests.helpers.networks import small_convnet
from tests.serve.test_app import LOCAL, CountingNet

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from convlens import load_model  # noqa: E402
from convlens.errors import ConvlensError  # noqa: E402
from convlens.serve import ServeSettings, create_app  # noqa: E402
from convlens.serve.guard import AllowedHosts  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(load_model("synthetic-shapes")), base_url=LOCAL) as test_client:
        yield test_client


class GatedNet(torch.nn.Module):
    """small_convnet whose forward passes wait until ``release`` is set; ``entered`` is
    set when the first one starts."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.entered, self.release = small_convnet(), threading.Event(), threading.Event()

    def forward(self, x):
        self.entered.set()
        assert self.release.wait(30)
        return self.net(x)


@pytest.mark.parametrize(
    ("bound", "port", "host", "allowed"),
    [
        ("127.0.0.1", 8000, "127.0.0.1:8000", True),
        ("127.0.0.1", 8000, "127.0.0.1", True),
        ("127.0.0.1", 8000, "LOCALHOST:8000", True),
        ("127.0.0.1", 8000, "[::1]:8000", True),
        ("::1", 8000, "[::1]", True),
        ("::1", 8000, "127.0.0.1:8000", True),
        ("127.0.0.1", 8000, "127.0.0.1:8001", False),  # another port: another site
        ("127.0.0.1", 8000, "evil.example", False),
        ("127.0.0.1", 8000, "evil.example:8000", False),
        ("127.0.0.1", 8000, "127.0.0.1.evil.example", False),
        ("127.0.0.1", 8000, "", False),
        ("127.0.0.1", 8000, "127.0.0.1:8000@evil", False),
        ("192.168.1.20", 8000, "192.168.1.20:8000", True),
        ("192.168.1.20", 8000, "127.0.0.1:8000", False),  # not bound to loopback
        ("192.168.1.20", 8000, "localhost:8000", True),
        ("0.0.0.0", 8000, "10.0.0.7:8000", True),  # a wildcard: any address, no name
        ("0.0.0.0", 8000, "rebound.example:8000", False),
    ],
)
def test_allowed_hosts(bound, port, host, allowed):
    assert AllowedHosts(bound, port)(host) is allowed


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "attacker.test:8000"])
def test_a_foreign_host_is_refused(client, host):
    for response in (
        client.get("/api/health", headers={"Host": host}),
        client.get("/", headers={"Host": host}),
        client.post("/api/explain", data={"sample": "cat"}, headers={"Host": host}),
    ):
        assert response.status_code == 403
        assert "does not answer for host" in response.json()["error"]
    assert client.get("/api/health", headers={"Host": "localhost:8000"}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:9999"},  # another local page
        {"Origin": "https://127.0.0.1"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://127.0.0.1", "Sec-Fetch-Site": "cross-site"},
    ],
)
def test_a_cross_site_post_is_refused(client, headers):
    for route in ("/api/explain", "/api/predict", "/api/jobs"):
        response = client.post(route, data={"sample": "cat"}, headers=headers)
        assert response.status_code == 403, route
        assert "cross-site request refused" in response.json()["error"]
    assert client.get("/api/health", headers=headers).status_code == 200  # reads change nothing


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, httpx: not a browser acting for a page
        {"Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"},
        {"Origin": "http://127.0.0.1:80"},
    ],
)
def test_same_origin_and_plain_clients_may_post(client, headers):
    response = client.post("/api/predict", data={"sample": "cat"}, headers=headers)
    assert response.status_code == 200, response.text


LONG = "x" * 900_000


@pytest.mark.parametrize(
    ("method", "url", "fields"),
    [
        ("post", "/api/explain", {"sample": "cat", "target": LONG}),
        ("post", "/api/explain", {"sample": "cat", "contrast": LONG}),
        ("post", "/api/explain", {"sample": "cat", "layer": LONG}),
        ("post", "/api/explain", {"sample": "cat", "method": LONG}),
        ("post", "/api/explain", {"sample": LONG}),
        ("post", "/api/explain", {"sample": "cat", "job": LONG}),
        ("post", "/api/features", {"sample": "cat", "layer": LONG}),
        ("post", "/api/cancel/x", {"token": LONG}),
        ("get", "/api/filters?layer=" + "x" * 10_000, None),
        ("post", "/api/cancel/" + "x" * 10_000, None),
        ("get", "/atlas/" + "x" * 10_000, None),
    ],
)
def test_errors_quote_at_most_200_characters_of_the_input(client, method, url, fields):
    response = client.request(method, url, data=fields)
    assert 400 <= response.status_code < 500
    assert "x" * 201 not in response.text and len(response.text) < 2_000
    assert response.json()["error"]


def test_a_full_queue_answers_429_with_retry_after():
    net = GatedNet()
    app = create_app(load_model(net, labels=["a", "b", "c"]), ServeSettings(max_queue=1))
    with TestClient(app, base_url=LOCAL) as gated, ThreadPoolExecutor(1) as pool:
        first = pool.submit(gated.post, "/api/predict", data={"sample": "cat"})
        assert net.entered.wait(30)
        for route in ("/api/predict", "/api/explain", "/api/features"):
            busy = gated.post(route, data={"sample": "cat"})
            assert busy.status_code == 429 and "busy" in busy.json()["error"]
            assert int(busy.headers["Retry-After"]) >= 1
        net.release.set()
        assert first.result(30).status_code == 200
        assert gated.post("/api/predict", data={"sample": "cat"}).status_code == 200
        assert app.state.desk.admitted() == 0


def test_the_time_limit_stops_a_slow_method_and_answers_503():
    net = CountingNet(after=10**6, delay=0.05)
    loaded = load_model(net, labels=["a", "b", "c"])
    app = create_app(loaded, ServeSettings(time_limit_s=0.3))
    with TestClient(app, base_url=LOCAL) as limited:
        before = model_state(net)
        net.calls = 0
        answer = limited.post("/api/explain", data={"sample": "cat", "method": "occlusion"})
        assert answer.status_code == 503, answer.text
        assert "time limit of 0.3 s" in answer.json()["error"]
        assert "--time-limit" in answer.json()["error"]
        assert net.calls < 24  # occlusion at 224 px needs 24 passes
        assert_same_state(before, model_state(net))
        assert limited.post("/api/predict", data={"sample": "cat"}).status_code == 200


def test_a_job_cancelled_before_its_request_never_runs():
    net = CountingNet(after=10**6, delay=0.0)
    with TestClient(create_app(load_model(net, labels=["a", "b"])), base_url=LOCAL) as counted:
        job = counted.post("/api/jobs").json()
        cancel = counted.post(f"/api/cancel/{job['job']}", data={"token": job["token"]})
        assert cancel.json()["cancelled"] is True
        net.calls = 0
        answer = counted.post("/api/explain", data={"sample": "cat", "job": job["job"]})
        assert answer.status_code == 409 and net.calls == 0
        again = counted.post("/api/explain", data={"sample": "cat", "job": job["job"]})
        assert again.status_code == 409  # a finished job's id is not reused


@pytest.mark.parametrize(
    "limits",
    [
        {"max_upload_bytes": -1_000_000},
        {"max_upload_bytes": 0},
        {"max_upload_bytes": 10**15},
        {"max_pixels": 0},
        {"time_limit_s": 0.0},
        {"time_limit_s": float("nan")},
        {"max_queue": 0},
    ],
)
def test_settings_out_of_range_are_refused(limits):
    with pytest.raises(ConvlensError, match="out of range; give"):
        ServeSettings(**limits)


@pytest.mark.parametrize(
    "args",
    [
        ["--max-upload-mb", "-1"],
        ["--max-upload-mb", "0"],
        ["--max-upload-mb", "1e12"],
        ["--max-megapixels", "nan"],
        ["--time-limit", "0"],
        ["--queue", "0"],
        ["--queue", "100000"],
    ],
)
def test_serve_refuses_bad_limits_in_one_line(args, capsys, monkeypatch):
    import convlens.serve
    from convlens.cli.app import main

    def never(*_args, **_kwargs):
        raise AssertionError("the server must not start")

    monkeypatch.setattr(convlens.serve, "run_server", never)
    assert main(["serve", "--model", "synthetic-shapes", *args]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and args[0] in error and "out of range" in error


def test_a_port_in_use_is_one_clear_error():
    from convlens.serve.server import bind_socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConvlensError, match="choose another --port"):
            bind_socket("127.0.0.1", port)
