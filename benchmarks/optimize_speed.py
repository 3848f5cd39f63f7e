"""Activation-maximisation speed: convlens `render` vs torch-lucent's `render_vis`.

Same model (the default EfficientNet-Lite0, inputs normalised with mean 0.5 / std 0.5),
same objective (the 'goldfish' logit), 224x224, Fourier parametrisation with colour
decorrelation, Adam lr 0.05, jitter 8 / scale (0.95, 1, 1.05) / rotation +-5 degrees.
Run in an environment that has torch-lucent (it is not a convlens dependency):

    python benchmarks/optimize_speed.py --steps 20 [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from convlens import load_model
from convlens.features import optimize


class Normalised(nn.Module):
    """The model behind its own normalisation, for lucent (which feeds [0, 1] pixels)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module((x - 0.5) / 0.5)


def time_convlens(loaded, class_id: int, steps: int, device: str) -> float:
    optimize.render(loaded, optimize.class_logit(class_id), steps=2)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    optimize.render(loaded, optimize.class_logit(class_id), steps=steps, seed=0)
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def time_lucent(module: nn.Module, class_id: int, steps: int, device: str) -> float:
    from lucent.optvis import objectives, param, render, transform

    model = Normalised(module).to(device).eval()
    transforms = [
        transform.jitter(8),
        transform.random_scale([0.95, 1.0, 1.05]),
        transform.random_rotate(list(range(-5, 6))),
    ]

    def run(n: int) -> None:
        render.render_vis(
            model,
            objectives.channel("labels", class_id),
            param_f=lambda: param.image(224, fft=True, decorrelate=True),
            transforms=transforms,
            thresholds=(n,),
            preprocess=False,
            progress=False,
            show_image=False,
            verbose=False,
        )

    run(2)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(steps)
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best kept")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model()
    loaded.module.to(args.device)
    class_id = loaded.labels.index("goldfish")
    try:
        import lucent  # noqa: F401
    except ImportError:
        print("torch-lucent is not installed here; install it in a separate environment")
        return
    # Interleaved rounds, best of each: a shared machine's load hits both alike.
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(time_convlens(loaded, class_id, args.steps, args.device))
        theirs.append(time_lucent(loaded.module, class_id, args.steps, args.device))
    print("convlens render:   " + " ".join(f"{v:6.2f}" for v in ours) + " steps/s")
    print("lucent render_vis: " + " ".join(f"{v:6.2f}" for v in theirs) + " steps/s")
    print(
        f"best: convlens {max(ours):.2f}, lucent {max(theirs):.2f} steps/s, "
        f"ratio {max(ours) / max(theirs):.2f}x ({args.steps} steps, 224x224, "
        f"{args.device}, {torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
