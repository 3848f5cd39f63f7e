"""RISE through `convlens.explain` against TorchRay's `rise` with the same masks.

Run: ``python benchmarks/rise_speed.py`` (``--help`` for options; needs ``torchray``, in the
``dev`` extra). The default model (EfficientNet-Lite0), a batch of 8 sample photos at
224 x 224, on CPU. Both get the masks of `convlens.attribution.black_box.rise_masks`
(TorchRay through its ``filter_masks`` argument), so both push the same ``N x 8`` masked
images through the model; convlens in chunks of ``--batch-size`` copies (default: its own
choice, see `convlens.attribution.common.chunk_size`), TorchRay one image at a time in
chunks of ``--torchray-batch`` masks (its default, 32). After one warm-up of each, rounds
alternate which tool goes first; the script prints each round, the medians, their ratio
and the load average before and after (the ratio is only meaningful from one run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import convlens
from convlens.attribution.black_box import rise_masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=16, help="RISE masks (paper: 4000-8000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="images explained at once")
    parser.add_argument("--batch-size", type=int, default=None, help="convlens chunk size")
    parser.add_argument("--torchray-batch", type=int, default=32, help="TorchRay batch_size")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from torchray.attribution.rise import rise as torchray_rise

    loaded = convlens.load_model()
    module = loaded.module.eval()
    names = (convlens.sample_names() * args.batch)[: args.batch]
    images = convlens.load_images(names, preprocess=loaded.preprocess).tensor
    masks = rise_masks(args.masks, tuple(images.shape[2:]), cells=7, keep=0.5, seed=0)

    def ours() -> None:
        convlens.explain(loaded, images, "rise", n_masks=args.masks, batch_size=args.batch_size)

    def theirs() -> None:
        torchray_rise(
            module,
            images,
            num_masks=args.masks,
            filter_masks=masks[:, None],
            batch_size=args.torchray_batch,
        )

    print(f"load average before: {os.getloadavg()}; torch threads {torch.get_num_threads()}")
    tools = {"convlens": ours, "torchray": theirs}
    for fn in tools.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in tools}
    for round_ in range(args.rounds):
        order = list(tools) if round_ % 2 == 0 else list(reversed(tools))
        for name in order:
            start = time.perf_counter()
            tools[name]()
            times[name].append(time.perf_counter() - start)
        print(f"round {round_}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in tools))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(", ".join(f"median {n} {m:.2f} s" for n, m in medians.items()))
    print(f"torchray / convlens: {medians['torchray'] / medians['convlens']:.2f}x")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
