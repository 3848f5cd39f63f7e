"""Load on the web view: Grad-CAM requests from concurrent clients against `convlens serve`.

Starts ``convlens serve`` on 127.0.0.1 (a free port; nothing leaves the machine), waits for
/api/health (the start-up time), then:

1. the bare library call, ``convlens.explain(model, image, "gradcam")`` on the same image
   file, timed ``--bare`` times in this process (the server is idle meanwhile);
2. the bare library call under load: ``--clients`` threads of this process making
   ``--requests`` calls in all on one shared model, serialised the way the server
   serialises (`convlens.serve.desk.ModelDesk`: one lock, one worker thread);
3. one client sending ``--single`` requests one after another (the web layer's overhead:
   upload, decode, PNG encoding, JSON);
4. ``--clients`` concurrent clients sending ``--requests`` requests in all (the load).

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


def bare_library_seconds(loaded, image: Path, runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``runs`` calls of ``convlens.explain`` on ``image``."""
    from convlens import explain

    explain(loaded, str(image), "gradcam")  # warm-up
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        explain(loaded, str(image), "gradcam")
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


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
    parser.add_argument("--single", type=int, default=20)
    parser.add_argument("--bare", type=int, default=20)
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
    try:
        with httpx.Client(timeout=120) as client:
            post_explain(client, url, data)  # warm-up: first request, layer cache
            rss_before = rss_mb(server.pid)
            loaded = load_model(args.model)
            bare, bare_cpu = bare_library_seconds(loaded, image, args.bare)
            bare_load, bare_wall = bare_library_under_load(
                loaded, image, args.requests, args.clients
            )
            cpu_start = cpu_seconds(server.pid)
            single = [post_explain(client, url, data) for _ in range(args.single)]
            single_cpu = (cpu_seconds(server.pid) - cpu_start) / args.single
        wall_start, cpu_start = time.perf_counter(), cpu_seconds(server.pid)
        with ThreadPoolExecutor(args.clients) as pool, httpx.Client(timeout=120) as client:
            load = list(pool.map(lambda _: post_explain(client, url, data), range(args.requests)))
        wall = time.perf_counter() - wall_start
        load_cpu = (cpu_seconds(server.pid) - cpu_start) / args.requests
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
        "requests": args.requests,
        "clients": args.clients,
        "load_p50_s": round(percentile(load_times, 0.5), 4),
        "load_p95_s": round(percentile(load_times, 0.95), 4),
        "requests_per_s": round(args.requests / wall, 2),
        "load_p50_over_bare": round(percentile(load_times, 0.5) / bare_p50, 2),
        "bare_load_p50_s": round(percentile(bare_load, 0.5), 4),
        "bare_load_p95_s": round(percentile(bare_load, 0.95), 4),
        "bare_load_calls_per_s": round(args.requests / bare_wall, 2),
        "load_p50_over_bare_load_p50": round(
            percentile(load_times, 0.5) / percentile(bare_load, 0.5), 2
        ),
        "requests_per_s_over_bare_load": round(bare_wall / wall, 2),
        "served_s_per_request": round(wall / args.requests, 4),
        "served_over_bare": round(wall / args.requests / bare_p50, 2),
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
