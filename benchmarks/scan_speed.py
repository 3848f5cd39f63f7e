"""Speed and memory of dataset scans, through the public call `convlens.scan.top_activating`.

Run: ``python benchmarks/scan_speed.py`` (``--help`` for options).

1. Speed: images/s of ``top_activating`` (top-9 of every channel of every block of the
   default model, EfficientNet-Lite0, patches cut at the end, projections off) against
   plain inference of the same model over the same ``DataLoader`` (same dataset, batch
   size and workers) in the same run: ``for batch in loader: model(batch.images)`` under
   ``no_grad``, with ``--threads`` intra-op threads (default 1: on a shared machine more
   threads than free cores make OpenMP spin). The data are the sample photos
   (scikit-image) repeated to ``--images`` items. The two alternate, ``--repeats`` times
   each after a warm-up; medians compared
   (target: scan >= 0.9x plain). The second pass (patches, deconvnet and guided
   projections: one backward per kept unit, on demand through
   ``TopActivations.channel_views``) does not grow with the dataset; it is timed once for
   the layer ``--second-pass-layer``.
2. Projection cost (``--projection-layer blocks.5``): seconds per channel of the second
   pass (patches, ``--rule`` projections of the top 9; `TopActivations.channel_views`) for
   the first ``--channels`` channels of the layer, over the photos of ``--data`` (a
   ``.txt`` list such as ``python docs/photo_list.py | head -30``), with the seconds of a
   plain forward pass of the whole folder in the same run (``--clock`` as above) and the
   ratio of the two. Uses only public calls, so it also runs against older code.
3. Memory: peak RSS of a fresh process scanning 1,000 and 10,000 synthetic pictures
   (seeded 64 x 64 noise, cheap to make) through the shapes model (every stage,
   projections off); target: the two differ by less than 10%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from peak_memory import child_peak_rss_mb, print_own_peak_rss

from convlens.data.datasets import FileDataset, batch_loader
from convlens.data.samples import SAMPLES, sample_path
from convlens.layers import borrowed_model
from convlens.models import load_model
from convlens.scan.topk import top_activating


def block_layers(module: torch.nn.Module) -> list[str]:
    """Every block of the default model: ``blocks.0`` ... ``blocks.6``."""
    return [f"blocks.{name}" for name, _ in module.blocks.named_children()]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def plain_inference(module, dataset, batch_size: int, workers: int) -> float:
    """Seconds for the same loader and model without convlens."""
    start = clock()
    with borrowed_model(module), torch.no_grad():
        for batch in batch_loader(dataset, range(len(dataset)), batch_size, workers):
            module(batch.images)
    return clock() - start


def scan_seconds(loaded, dataset, layers, batch_size: int, workers: int, rules=()):
    """Seconds of one `top_activating` call, and its result."""
    start = clock()
    result = top_activating(
        loaded, dataset, layers, k=9, projections=rules, batch_size=batch_size, workers=workers
    )
    return clock() - start, result


def speed(images: int, batch_size: int, workers: int, repeats: int, second_pass_layer) -> dict:
    loaded = load_model()
    photos = [str(sample_path(name)) for name in sorted(SAMPLES)]
    dataset = FileDataset([photos[i % len(photos)] for i in range(images)], loaded.preprocess)
    layers = block_layers(loaded.module)
    plain_inference(loaded.module, dataset, batch_size, workers)  # warm-up
    scan_seconds(loaded, dataset, layers, batch_size, workers)
    plain, scan = [], []
    for turn in range(repeats):
        runs = [("plain", plain), ("scan", scan)]
        for name, times in runs if turn % 2 == 0 else runs[::-1]:
            if name == "plain":
                times.append(plain_inference(loaded.module, dataset, batch_size, workers))
            else:
                times.append(scan_seconds(loaded, dataset, layers, batch_size, workers)[0])
    second = [second_pass_layer]
    _, result = scan_seconds(loaded, dataset, second, batch_size, workers, ("deconvnet", "guided"))
    start = clock()
    units = sum(len(view.units) for view in result.channel_views(second_pass_layer))
    seconds = clock() - start
    return {
        "images": images,
        "layers": layers,
        "plain_img_s": images / statistics.median(plain),
        "scan_img_s": images / statistics.median(scan),
        "ratio": statistics.median(plain) / statistics.median(scan),
        "second_pass_layer": second_pass_layer,
        "second_pass_s": seconds,
        "kept_units": units,
    }


def projection_cost(data: str, layer: str, channels: int, rule: str, batch_size: int) -> dict:
    """Seconds per channel of the second pass at ``layer`` over ``data`` (`speed`'s clock),
    and a plain forward pass of the whole folder for scale."""
    loaded = load_model()
    dataset = FileDataset(Path(data).read_text().split(), loaded.preprocess)
    plain_inference(loaded.module, dataset, batch_size, 0)  # warm-up
    plain = plain_inference(loaded.module, dataset, batch_size, 0)
    _, result = scan_seconds(loaded, dataset, [layer], batch_size, 0, (rule,))
    start = clock()
    units = sum(len(view.units) for view in result.channel_views(layer, range(channels)))
    seconds = clock() - start
    return {
        "images": len(dataset),
        "layer": layer,
        "rule": rule,
        "channels": channels,
        "units": units,
        "seconds_per_channel": seconds / channels,
        "plain_forward_s": plain,
        "channel_over_forward": seconds / channels / plain,
    }


class NoisePictures(torch.utils.data.Dataset):
    """``count`` seeded 64 x 64 noise pictures (item i from seed i): cheap to make, so the
    memory run measures the scan, not the data generator."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        rng = np.random.default_rng(index)
        return rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), index % 6


def rss_child(count: int, batch_size: int) -> None:
    """In a fresh process: scan ``count`` noise pictures with the shapes model (every
    stage, projections off) and print this process's peak RSS in MiB (VmHWM; ru_maxrss
    would keep the parent's across exec)."""
    torch.set_num_threads(1)
    top_activating(
        "synthetic-shapes",
        NoisePictures(count),
        None,
        k=9,
        projections=(),
        batch_size=batch_size,
    )
    print_own_peak_rss()


def _verdict(holds: bool) -> str:
    return "holds" if holds else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="items in the speed run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", nargs=2, type=int, default=[1000, 10000], metavar="N")
    parser.add_argument("--second-pass-layer", default="blocks.2")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or CPU seconds of this process (steadier on a shared machine; "
        "counts the data loading only with --workers 0)",
    )
    parser.add_argument("--projection-layer", help="measure the projection cost there only")
    parser.add_argument("--data", help="a .txt list of photos (projection cost)")
    parser.add_argument("--channels", type=int, default=12, help="channels (projection cost)")
    parser.add_argument("--rule", default="guided", help="projection rule (projection cost)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global clock
    clock = CLOCKS[args.clock]
    if args.rss_child is not None:
        rss_child(args.rss_child, args.batch_size)
        return
    results = {}
    if args.projection_layer:
        found = projection_cost(
            args.data, args.projection_layer, args.channels, args.rule, args.batch_size
        )
        print(
            f"{found['layer']}: {found['seconds_per_channel']:.3f} {args.clock} s per channel "
            f"({found['units']} {found['rule']} projections of {found['channels']} channels), "
            f"{found['channel_over_forward']:.2f}x a plain forward pass of the "
            f"{found['images']} images ({found['plain_forward_s']:.2f} s)"
        )
        print(json.dumps({"projection_cost": found}))
        return
    if not args.skip_speed:
        results["speed"] = found = speed(
            args.images, args.batch_size, args.workers, args.repeats, args.second_pass_layer
        )
        print(
            f"plain inference {found['plain_img_s']:.1f} img/s, top_activating over "
            f"{len(found['layers'])} blocks {found['scan_img_s']:.1f} img/s: "
            f"{found['ratio']:.2f}x (target >= 0.9x: {_verdict(found['ratio'] >= 0.9)}); "
            f"second pass of {found['second_pass_layer']} (patches, deconvnet and guided "
            f"projections of {found['kept_units']} units): {found['second_pass_s']:.1f} s"
        )
    if not args.skip_memory:
        small, large = (child_peak_rss_mb(__file__, n, args.batch_size) for n in args.memory)
        change = (large - small) / small
        results["memory"] = {"counts": args.memory, "rss_mb": [small, large], "change": change}
        print(
            f"peak RSS: {small:.0f} MiB at {args.memory[0]} images, {large:.0f} MiB at "
            f"{args.memory[1]}: {100 * change:+.1f}% (target < 10%: "
            f"{_verdict(abs(change) < 0.1)})"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
