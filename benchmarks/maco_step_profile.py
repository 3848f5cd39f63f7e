"""Where the time of one MACO step goes: the phase -> image transform (`maco_image`), the
random crops (`random_crops`, resize and noise), the network's forward pass on the crops,
its backward pass to the crops, and the backward pass from the crops through the crop
resampling and the image transform to the phase. EfficientNet-Lite0, the default MACO step
(`convlens.features.maco.CROPS` crops of a canvas `CANVAS` times the 224 px input, the
'goldfish' logit), parameters frozen as `maco` borrows them; mean over ``--steps`` steps
after one warm-up step.

    python benchmarks/maco_step_profile.py --steps 8 --threads 1
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from convlens import load_model
from convlens.features.maco import (
    CANVAS,
    CROP_FRACTION,
    CROPS,
    NOISE,
    maco_image,
    natural_spectrum,
    random_crops,
)
from convlens.features.optimize import optimisation_input

PHASES = ("phase -> image", "crops", "network forward", "network backward", "crops+image backward")


def profile(steps: int) -> dict[str, float]:
    """Mean seconds per step of each phase of `PHASES`."""
    loaded = load_model("efficientnet_lite0")
    module = loaded.module.eval()
    class_id = loaded.labels.index("goldfish")
    gen = torch.Generator().manual_seed(0)
    side = round(CANVAS * 224)
    magnitude = natural_spectrum(side, side + side % 2).magnitude
    phase = 2 * math.pi * torch.rand(1, *magnitude.shape, generator=gen) - math.pi
    phase.requires_grad_(True)
    totals = dict.fromkeys(PHASES, 0.0)
    params = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        for step in range(steps + 1):
            marks = [time.perf_counter()]
            images = maco_image(magnitude, phase)
            marks.append(time.perf_counter())
            seen = random_crops(images, CROPS, (224, 224), CROP_FRACTION, NOISE, gen)
            leaf = seen.detach().requires_grad_(True)
            marks.append(time.perf_counter())
            score = module(optimisation_input(module, (leaf - 0.5) / 0.5))[:, class_id].mean()
            marks.append(time.perf_counter())
            (grad,) = torch.autograd.grad(score, leaf)
            marks.append(time.perf_counter())
            torch.autograd.grad(seen, [phase, images], grad)
            marks.append(time.perf_counter())
            if step:  # the first step warms up
                for name, start, end in zip(PHASES, marks[:-1], marks[1:], strict=True):
                    totals[name] += (end - start) / steps
    finally:
        for param, wanted in zip(module.parameters(), params, strict=True):
            param.requires_grad_(wanted)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    totals = profile(args.steps)
    step = sum(totals.values())
    for name, seconds in totals.items():
        print(f"{name:<22} {1000 * seconds:8.1f} ms  {100 * seconds / step:5.1f}%")
    print(f"{'one step':<22} {1000 * step:8.1f} ms  ({CROPS} crops, canvas x{CANVAS:g})")


if __name__ == "__main__":
    main()
