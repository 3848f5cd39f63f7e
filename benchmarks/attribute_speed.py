"""Throughput and memory of `convlens attribute` (issue 23), through the command users run.

Run: ``python benchmarks/attribute_speed.py`` (``--help`` for options).

1. Throughput: images/s of ``convlens attribute LIST --method gradcam`` (in-process through
   `convlens.cli.main`, a fresh output folder each time: the model load, the data pass, the
   float16 shards and ``index.json`` all count) against `convlens.explain` with the same
   method on the same batches (``--batch-size`` paths at a time, loaded by `explain`
   itself; the model loaded once, outside the clock). The data are the photos of
   ``docs/photo_list.py`` repeated to ``--images`` items, the default model. The two
   alternate ``--repeats`` times after a warm-up; medians compared (target: attribute at
   least 0.9x explain).
2. Memory: peak RSS (VmHWM) of a fresh process running ``convlens attribute shapes:N
   --model synthetic-shapes --method gradcam`` for each of ``--memory`` (default 1,000 and
   10,000 images); target: within 5% of each other.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from peak_memory import child_peak_rss_mb, print_own_peak_rss

import convlens
from convlens.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent


def photo_list(count: int, folder: Path) -> Path:
    """A ``.txt`` list of ``count`` photo paths (the photo list repeated)."""
    listed = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "photo_list.py")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    paths = [listed[i % len(listed)] for i in range(count)]
    target = folder / "photos.txt"
    target.write_text("\n".join(paths) + "\n")
    return target


def attribute_seconds(listing: Path, batch_size: int, folder: Path, run: int) -> float:
    out = folder / f"attribute-{run}"
    start = time.perf_counter()
    code = cli_main(
        [
            "attribute",
            str(listing),
            "--method",
            "gradcam",
            "--batch-size",
            str(batch_size),
            "--out",
            str(out),
        ]
    )
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"convlens attribute exited {code}")
    return seconds


def explain_seconds(loaded, paths: list[str], batch_size: int) -> float:
    start = time.perf_counter()
    for first in range(0, len(paths), batch_size):
        convlens.explain(loaded, paths[first : first + batch_size], method="gradcam")
    return time.perf_counter() - start


def throughput(images: int, batch_size: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        listing = photo_list(images, folder)
        paths = listing.read_text().split()
        loaded = convlens.load_model()
        explain_seconds(loaded, paths[:batch_size], batch_size)  # warm-up
        attribute_seconds(listing, batch_size, folder, -1)
        timings = {"attribute": [], "explain": []}
        for run in range(repeats):
            timings["attribute"].append(attribute_seconds(listing, batch_size, folder, run))
            timings["explain"].append(explain_seconds(loaded, paths, batch_size))
    medians = {key: statistics.median(values) for key, values in timings.items()}
    return {
        "images": images,
        "batch_size": batch_size,
        "seconds": timings,
        "images_per_s": {key: images / value for key, value in medians.items()},
        "ratio": medians["explain"] / medians["attribute"],
    }


def rss_child(count: int, batch_size: int) -> None:
    """In a fresh process: ``convlens attribute shapes:count`` and print the peak RSS in
    MiB (VmHWM; ru_maxrss would keep the parent's across exec)."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        code = cli_main(
            [
                "attribute",
                f"shapes:{count}",
                "--model",
                "synthetic-shapes",
                "--method",
                "gradcam",
                "--batch-size",
                str(batch_size),
                "--out",
                out,
            ]
        )
    if code != 0:
        raise SystemExit(f"convlens attribute exited {code}")
    print_own_peak_rss()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child is not None:
        rss_child(args.rss_child, args.batch_size)
        return
    torch.set_num_threads(args.threads)
    results = {"throughput": throughput(args.images, args.batch_size, args.repeats)}
    speed = results["throughput"]
    print(
        f"attribute {speed['images_per_s']['attribute']:.2f} img/s, explain "
        f"{speed['images_per_s']['explain']:.2f} img/s: ratio {speed['ratio']:.2f} "
        f"(target >= 0.9: {'holds' if speed['ratio'] >= 0.9 else 'MISSED'})",
        flush=True,
    )
    if args.memory:
        rss = [child_peak_rss_mb(__file__, n, 32) for n in args.memory]
        change = max(rss) / min(rss) - 1
        results["memory"] = {"counts": args.memory, "rss_mb": rss, "change": change}
        print(
            "peak RSS: "
            + ", ".join(f"{r:.0f} MiB at {n} images" for n, r in zip(args.memory, rss, strict=True))
            + f"; change {100 * change:.1f}% (target < 5%: "
            f"{'holds' if change < 0.05 else 'MISSED'})",
            flush=True,
        )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
