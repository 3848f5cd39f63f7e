"""Load on the web view: Grad-CAM requests from concurrent clients against `convlens serve`.

Starts ``convlens serve`` on 127.0.0.1 (a free port; nothing leaves the machine), waits for
/api/health (the start-up time), then:

1. ``--single`` pairs of (the bare library call ``convlens.explain(model, image,
   "gradcam")`` on the same image file, in this process, with the server idle; then one
   request to the server): the web layer's overhead, each pair under the same neighbours;
2. ``--rounds`` alternations of two loads of ``--requests / --rounds`` calls each: the bare
   library call from ``--clients`` threads of this process on one shared model, serialised
   the way the server serialises (`convlens.serve.desk.ModelDesk`: one lock, one worker
   thread), then ``--clients`` concurrent clients sending Grad-CAM requests to the server.

It reports p50/p95 latency, requests/s, errors, the ratio of p50 to the bare call's median,
the ratio of the loaded p50 to the bare call's p50 under the same load (step 2: what the
web layer adds when both queue for one model),
and the server's resident memory (RSS) after a warm-up and after the load. Because wall
times on a shared machine say more about the neighbours than about the code, it also reports
CPU seconds: the server process's CPU time per request (from /proc) against the bare call's
CPU time (``time.process_time``), and the CPU time the server needed to start. ``--threads``
sets torch's threads in both processes (1 keeps CPU times honest on a busy machine, where
idle OpenMP threads spin). The server lends
its model to one request at a time, so under N clients a request's latency includes waiting
for the others: the load's p50 is compared with the bare call both directly and per served
request (wall time * clients / requests). Bounded: a fixed number of requests, a timeout on
each, and the server is stopped at the end.

    python benchmarks/serve_load.py            # 200 requests, 8 clients, the default model
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(model: str, port: int, threads: int) -> tuple[subprocess.Popen, float]:
    """``convlens serve`` in a child process; returns it and the seconds until healthy."""
    start = time.perf_counter()
    command = [sys.executable, "-m", "convlens", "serve", "--model", model, "--port", str(port)]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}/api/health"
    while time.perf_counter() - start < 120:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {server.stderr.read().decode()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return server, time.perf_counter() - start
        except httpx.TransportError:
            time.sleep(0.05)
    server.kill()
    raise RuntimeError("server did not answer /api/health within 120 s")


def post_explain(client: httpx.Client, url: str, image: bytes) -> tuple[float, int]:
    start = time.perf_counter()
    response = client.post(
        url, files={"image": ("image.png", image, "image/png")}, data={"method": "gradcam"}
    )
    return time.perf_counter() - start, response.status_code


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bare_call(loaded, image: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one ``convlens.explain(loaded, image, "gradcam")``."""
    from convlens import explain

    start, start_cpu = time.perf_counter(), time.process_time()
    explain(loaded, str(image), "gradcam")
    return time.perf_counter() - start, time.process_time() - start_cpu


def paired_single(loaded, image: Path, client, url: str, data: bytes, pid: int, pairs: int):
    """``pairs`` times: one bare call, then one request to the idle server (so both see
    the same neighbours on a shared machine). Returns the bare calls' wall and CPU seconds,
    the requests' ``(seconds, status)`` and the server's CPU seconds per request."""
    bare, bare_cpu, single = [], [], []
    server_cpu = 0.0
    for _ in range(pairs):
        wall, cpu = bare_call(loaded, image)
        bare.append(wall)
        bare_cpu.append(cpu)
        start = cpu_seconds(pid)
        single.append(post_explain(client, url, data))
        server_cpu += cpu_seconds(pid) - start
    return bare, bare_cpu, single, server_cpu / pairs


def server_under_load(url: str, data: bytes, requests: int, clients: int) -> tuple[list, float]:
    """``(seconds, status)`` of ``requests`` requests from ``clients`` concurrent clients,
    and the wall seconds of them all."""
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool, httpx.Client(timeout=120) as client:
        answers = list(pool.map(lambda _: post_explain(client, url, data), range(requests)))
    return answers, time.perf_counter() - start


def bare_library_under_load(loaded, image: Path, calls: int, clients: int) -> tuple[list, float]:
    """Latencies of ``calls`` calls of ``convlens.explain`` on ``image`` made from
    ``clients`` threads on one model lent one call at a time by a `ModelDesk` (the server's
    lock and single worker thread), and the wall seconds of them all."""
    from convlens import explain
    from convlens.serve.desk import ModelDesk

    desk = ModelDesk(loaded)

    def call(_) -> float:
        start = time.perf_counter()
        desk.submit(lambda: explain(loaded, str(image), "gradcam")).result()
        return time.perf_counter() - start

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = list(pool.map(call, range(calls)))
        return latencies, time.perf_counter() - start
    finally:
        desk.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--image", default="cat", help="a sample name or an image file")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--single", type=int, default=30, help="bare call / request pairs")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the two loads")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both processes")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from convlens import load_model
    from convlens.data.samples import SAMPLES, sample_path

    image = sample_path(args.image) if args.image in SAMPLES else Path(args.image)
    data = image.read_bytes()
    load_at_start = os.getloadavg()[0]
    port = free_port()
    server, startup = start_server(args.model, port, args.threads)
    startup_cpu = cpu_seconds(server.pid)
    url = f"http://127.0.0.1:{port}/api/explain"
    load, bare_load, wall, bare_wall, load_cpu = [], [], 0.0, 0.0, 0.0
    try:
        with httpx.Client(timeout=120) as client:
            post_explain(client, url, data)  # warm-up: first request, layer cache
            rss_before = rss_mb(server.pid)
            loaded = load_model(args.model)
            bare_call(loaded, image)  # warm-up: the default layer, first pass
            bare, bare_cpu, single, single_cpu = paired_single(
                loaded, image, client, url, data, server.pid, args.single
            )
        share = args.requests // args.rounds
        for _ in range(args.rounds):  # alternating, so both loads meet the same neighbours
            latencies, seconds = bare_library_under_load(loaded, image, share, args.clients)
            bare_load += latencies
            bare_wall += seconds
            cpu_start = cpu_seconds(server.pid)
            answers, seconds = server_under_load(url, data, share, args.clients)
            load_cpu += cpu_seconds(server.pid) - cpu_start
            load += answers
            wall += seconds
        load_cpu /= len(load)
        rss_after = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)

    bare_p50 = statistics.median(bare)
    single_times = [t for t, _ in single]
    load_times = [t for t, _ in load]
    errors = sum(status != 200 for _, status in single + load)
    figures = {
        "model": args.model,
        "image": str(image),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "load_average_1min_start": round(load_at_start, 1),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "startup_s": round(startup, 2),
        "startup_cpu_s": round(startup_cpu, 2),
        "bare_cpu_p50_s": round(statistics.median(bare_cpu), 4),
        "server_cpu_per_request_single_s": round(single_cpu, 4),
        "server_cpu_per_request_load_s": round(load_cpu, 4),
        "cpu_per_request_over_bare": round(load_cpu / statistics.median(bare_cpu), 2),
        "bare_p50_s": round(bare_p50, 4),
        "single_p50_s": round(statistics.median(single_times), 4),
        "single_p50_over_bare": round(statistics.median(single_times) / bare_p50, 2),
        "requests": len(load),
        "clients": args.clients,
        "load_p50_s": round(percentile(load_times, 0.5), 4),
        "load_p95_s": round(percentile(load_times, 0.95), 4),
        "requests_per_s": round(len(load) / wall, 2),
        "load_p50_over_bare": round(percentile(load_times, 0.5) / bare_p50, 2),
        "bare_load_p50_s": round(percentile(bare_load, 0.5), 4),
        "bare_load_p95_s": round(percentile(bare_load, 0.95), 4),
        "bare_load_calls_per_s": round(len(bare_load) / bare_wall, 2),
        "load_p50_over_bare_load_p50": round(
            percentile(load_times, 0.5) / percentile(bare_load, 0.5), 2
        ),
        "requests_per_s_over_bare_load": round(bare_wall / wall, 2),
        "served_s_per_request": round(wall / len(load), 4),
        "served_over_bare": round(wall / len(load) / bare_p50, 2),
        "errors": errors,
        "rss_before_mb": round(rss_before, 1),
        "rss_after_mb": round(rss_after, 1),
        "rss_change": round(rss_after / rss_before - 1, 3),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
