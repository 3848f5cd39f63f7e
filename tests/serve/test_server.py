"""Which hosts are loopback, and the warning for the others; the real server (uvicorn on a
free port): "ready" once it accepts connections, and a shutdown that stops the work."""

from __future__ import annotations

import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from tests.helpers.networks import small_convnet
from tests.serve.test_app import CountingNet

from convlens import load_model
from convlens.serve.server import exposure_warning, is_loopback, prepare_server

httpx = pytest.importorskip("httpx")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts_need_no_warning(host):
    assert is_loopback(host) and exposure_warning(host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org"])
def test_other_hosts_are_warned_about(host):
    assert not is_loopback(host)
    assert "reachable from other machines" in exposure_warning(host)
    assert "--host 127.0.0.1" in exposure_warning(host)


def _serve_in_thread(server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def test_ready_is_printed_only_once_the_port_accepts_connections():
    """The echo tries the port the moment "ready" is printed; before serving, the port is
    bound (nobody else can take it) but refuses connections, and nothing said ready."""
    lines, connected, ready = [], [], threading.Event()

    def echo(line: str) -> None:
        lines.append(line)
        if " ready in " in line:
            port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                connected.append(port)
            ready.set()

    server = prepare_server(load_model(small_convnet()), port=0, echo=echo)
    port = server.sock.getsockname()[1]
    assert port != 0 and lines == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    thread = _serve_in_thread(server)
    try:
        assert ready.wait(30)
        assert connected == [port]
        assert httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive()


def test_shutdown_stops_running_and_queued_requests_within_5_seconds():
    net = CountingNet(after=3, delay=0.25)  # occlusion: 24 passes, 6 s per request
    ready = threading.Event()
    server = prepare_server(
        load_model(net, labels=["a", "b", "c"]), port=0, echo=lambda _line: ready.set()
    )
    url = f"http://127.0.0.1:{server.sock.getsockname()[1]}/api/explain"
    desk = server.app.state.desk
    thread = _serve_in_thread(server)
    assert ready.wait(30)
    form = {"sample": "cat", "method": "occlusion"}
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(httpx.post, url, data=form, timeout=30)
        assert net.reached.wait(30)
        queued = pool.submit(httpx.post, url, data=form, timeout=30)
        deadline = time.monotonic() + 10
        while desk.admitted() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert desk.admitted() == 2
        start = time.monotonic()
        server.should_exit = True
        thread.join(10)
        assert time.monotonic() - start < 5 and not thread.is_alive()
        answers = [running.result(10), queued.result(10)]
    assert [a.status_code for a in answers] == [503, 503]
    assert all("shutting down" in a.json()["error"] for a in answers)
    assert net.calls < 10  # the running one stopped between passes; the queued one never ran
