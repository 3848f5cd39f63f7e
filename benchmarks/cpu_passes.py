"""CPU seconds of the calls that now run in passes of at most eight 224 px images on the
CPU (`convlens.models.devices.cpu_passes`), through the public calls, with a plain forward
pass of the same images in the same run for scale.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/cpu_passes.py`` (one thread; add
``--repeats``). To compare with older code, run it again with ``PYTHONPATH`` set to that
code's ``src`` (``git archive REV src | tar -x -C DIR``) in the same sitting: the machine's
speed drifts, so only figures of one sitting compare.

Cases (seeded random images of 224 x 224, the default model, EfficientNet-Lite0):
``convlens.explain`` of 32 images with saliency, Grad-CAM, guided backprop, LRP and
SmoothGrad (4 samples); `convlens.evaluate.deletion_curve` of 4 images, 32 steps; and
`convlens.scan.top_activating` (top 9 of the 7 blocks, no projections) over 128 copies of
the sample photos, batch 32. Each case runs once to warm up, then ``--repeats`` times;
the median CPU seconds and the ratio to the plain forward pass of its images are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import convlens
from convlens.data.datasets import FileDataset
from convlens.data.samples import SAMPLES, sample_path
from convlens.evaluate import deletion_curve
from convlens.models import load_model
from convlens.scan.topk import top_activating


def cpu_seconds(fn, repeats: int) -> float:
    """Median CPU seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def plain_forward(module: torch.nn.Module, images: torch.Tensor):
    """A function running ``module`` once over ``images`` in one batch, without autograd."""

    def run() -> None:
        with torch.no_grad():
            module.eval()(images)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = load_model()
    images = torch.randn(32, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    few = images[:4]
    maps = torch.rand(4, 224, 224, generator=torch.Generator().manual_seed(1))
    photos = [str(sample_path(name)) for name in sorted(SAMPLES)]
    dataset = FileDataset([photos[i % len(photos)] for i in range(128)], loaded.preprocess)
    blocks = [f"blocks.{i}" for i in range(7)]
    cases = {
        f"explain {method}, 32 images": (
            lambda method=method, options=options: convlens.explain(
                loaded, images, method=method, **options
            ),
            images,
        )
        for method, options in [
            ("saliency", {}),
            ("gradcam", {}),
            ("guided_backprop", {}),
            ("lrp", {}),
            ("smoothgrad", {"n_samples": 4}),
        ]
    }
    cases["deletion_curve, 4 images, 32 steps"] = (
        lambda: deletion_curve(loaded, few, maps, steps=32),
        few,
    )
    cases["top_activating, 128 photos, 7 blocks"] = (
        lambda: top_activating(loaded, dataset, blocks, k=9, projections=(), batch_size=32),
        torch.stack([dataset[i][1] for i in range(len(dataset))]),
    )
    print(f"{'case':40s} {'CPU s':>8s} {'plain forward s':>16s} {'ratio':>7s}")
    for name, (fn, inputs) in cases.items():
        seconds = cpu_seconds(fn, args.repeats)
        plain = cpu_seconds(plain_forward(loaded.module, inputs), args.repeats)
        print(f"{name:40s} {seconds:8.2f} {plain:16.2f} {seconds / plain:7.2f}")


if __name__ == "__main__":
    main()
