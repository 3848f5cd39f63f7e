"""Time of LRP through `convlens.explain` against a forward pass + input gradient (saliency
through the same `explain`, and the same with plain autograd and nothing of convlens
around it) and against zennit's same composite, in one run.

Run: ``python benchmarks/lrp_speed.py [--arch resnet50] [--composite epsilon_plus_flat]
[--batch 8] [--size 224] [--runs 3]``. The torchvision network has seeded random weights
(no download); ``--arch default`` takes convlens's embedded EfficientNet-Lite0 instead (no
zennit case: zennit has no canonizer for it). Each case is run once to warm up at the full
size, then the cases are timed in turn for ``--runs`` rounds; the median and each round's
ratio to saliency are reported, then each case's median per-round ratio to the plain
forward + input gradient, with the 1-minute load average before and after (the machine
may be shared).
Targets (issue 21): LRP <= 1.3x forward + input gradient, and no slower than zennit.
zennit's canonizer for the architecture (VGG or ResNet) is applied on its side, as
convlens applies its own canonizers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torchvision

import convlens
from convlens.attribution.lrp import input_bounds


def interleaved_seconds(cases: dict, runs: int) -> dict[str, list[float]]:
    """Wall seconds of each case's ``runs`` calls, after one warm-up call each, the cases
    taken in turn within each round (so a slow spell of a shared machine hits every case
    of that round alike, and per-round ratios cancel it)."""
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def zennit_call(model, images, classes, composite_name: str, arch: str):
    """A function running zennit's composite (with its canonizer) for ``classes``."""
    from zennit import composites
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    canonizer = VGGCanonizer() if arch.startswith("vgg") else ResNetCanonizer()
    low, high = (b.expand(1, 3, *images.shape[2:]) for b in input_bounds(model))
    make = {
        "epsilon_plus_flat": lambda: composites.EpsilonPlusFlat(canonizers=[canonizer]),
        "epsilon_alpha2_beta1_flat": lambda: composites.EpsilonAlpha2Beta1Flat(
            canonizers=[canonizer]
        ),
        "epsilon_gamma_box": lambda: composites.EpsilonGammaBox(
            low=low, high=high, canonizers=[canonizer]
        ),
    }[composite_name]

    def run() -> torch.Tensor:
        inputs = images.clone().requires_grad_(True)
        with make().context(model) as modified:
            output = modified(inputs)
            seed = torch.zeros_like(output)
            seed[torch.arange(len(images)), classes] = 1
            (relevance,) = torch.autograd.grad(output, inputs, seed * output)
        return relevance.sum(dim=1)

    return run


def plain_gradient_call(model, images, classes):
    """A function running the model forward and taking the input gradient of the target
    logits with plain autograd: the issue's "forward + input gradient", with nothing of
    convlens around it."""
    rows = torch.arange(len(images))

    def run() -> torch.Tensor:
        inputs = images.clone().requires_grad_(True)
        with torch.enable_grad():
            (gradient,) = torch.autograd.grad(model(inputs)[rows, classes].sum(), inputs)
        return gradient

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--composite", default="epsilon_plus_flat")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.arch == "default":  # the embedded EfficientNet-Lite0: zennit has no canonizer
        model = convlens.load_model().module.eval()
    else:
        model = getattr(torchvision.models, args.arch)(weights=None).eval()
    images = torch.randn(args.batch, 3, args.size, args.size)
    classes = list(range(args.batch))
    load_before = os.getloadavg()[0]
    base_name, plain_name = "forward + input gradient (saliency)", "plain forward + input gradient"
    cases = {
        base_name: lambda: convlens.explain(model, images, method="saliency", target=classes),
        plain_name: plain_gradient_call(model, images, classes),
        f"convlens lrp {args.composite}": lambda: convlens.explain(
            model, images, method="lrp", target=classes, composite=args.composite
        ),
    }
    if args.arch != "default":
        cases[f"zennit {args.composite}"] = zennit_call(
            model, images, classes, args.composite, args.arch
        )
    times = interleaved_seconds(cases, args.runs)
    load_after = os.getloadavg()[0]
    base = times[base_name]
    print(
        f"{args.arch}, batch {args.batch}, {args.size} px, {torch.get_num_threads()} threads, "
        f"{args.runs} interleaved rounds; load average {load_before:.1f} -> {load_after:.1f}"
    )
    print(f"  {'case':40s} {'median':>8s}  {'x saliency':>10s}  per-round ratios (median)")
    for name, seconds in times.items():
        ratios = [t / b for t, b in zip(seconds, base, strict=True)]
        print(
            f"  {name:40s} {statistics.median(seconds):7.2f}s  "
            f"{statistics.median(seconds) / statistics.median(base):9.2f}x  "
            f"{' '.join(f'{r:.2f}' for r in ratios)} ({statistics.median(ratios):.2f})"
        )
    plain = times[plain_name]
    print("  median per-round ratio to the plain forward + input gradient:")
    for name, seconds in times.items():
        ratios = [t / b for t, b in zip(seconds, plain, strict=True)]
        print(f"  {name:40s} {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
