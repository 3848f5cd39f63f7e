"""Feature-visualisation speed in one run: convlens's two `convlens visualize` methods (the
default Fourier gradient ascent, `convlens.features.optimize.visualize`, and MACO,
`convlens.features.maco.maco`) against torch-lucent's `render_vis`.

The same problem for all three: the default model (EfficientNet-Lite0), the 'goldfish'
logit, a 224x224 image, the same number of steps. The Fourier run and lucent share the
set-up of `benchmarks/optimize_speed.py` (whose helpers this script reuses): Fourier
parametrisation with colour decorrelation, Adam lr 0.05 and convlens's `random_transform`
handed to lucent as its transform list, so both loops do the same work per step. MACO
runs at the defaults of ``convlens visualize --method maco`` (NAdam on the phase,
`convlens.features.maco.CROPS` random crops scored per step: 1 since 2026-12-07, 4 and
2 before, so each of its steps is a forward and backward pass of a batch of that many at
the model's input size); its rate is steps per second as well, printed beside the
others with its ratio to lucent.

Rounds are interleaved with the order rotated each round; each tool is warmed up once
(2 steps). lucent gets a fresh copy of the model for every run (it leaves hooks and
``.grad`` behind); convlens borrows the shared model, checked hook-free at the end.

    python benchmarks/visualize_speed.py --steps 12 --rounds 5 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from optimize_speed import (
    SIZE,
    Normalised,
    _hook_count,
    _summary,
    _synchronize,
    run_convlens,
    run_lucent,
    timed_render_vis,
)

from convlens import load_model
from convlens.features.maco import CANVAS, CROP_FRACTION, CROPS, NOISE, maco, random_crops
from convlens.features.objectives import class_logit


def run_maco(loaded, class_id: int, steps: int, device: str, crops: int = CROPS) -> float:
    """Seconds for one `maco` of ``steps`` steps at the CLI's defaults (final pass
    included), ``crops`` crops a step."""
    _synchronize(device)
    start = time.perf_counter()
    maco(loaded, class_logit(class_id), steps=steps, size=SIZE, crops=crops, seed=0)
    _synchronize(device)
    return time.perf_counter() - start


def run_lucent_crops(module, class_id: int, steps: int, device: str) -> float:
    """Seconds for one lucent `render_vis` of ``steps`` steps doing MACO's work per step:
    a Fourier image of MACO's canvas size, its transform `random_crops` with MACO's
    defaults (`CROPS` crops at 224 px), so each step is a forward and backward pass of a
    batch of CROPS, the objective their mean logit. Equal network work per step; not the
    issue's target, which compares with lucent's plain one-image step."""
    model = Normalised(copy.deepcopy(module)).to(device).eval()
    gen = torch.Generator().manual_seed(0)

    def crops(x: torch.Tensor) -> torch.Tensor:
        return random_crops(x, CROPS, (SIZE, SIZE), CROP_FRACTION, NOISE, gen)

    return timed_render_vis(model, class_id, steps, device, round(CANVAS * SIZE), crops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    # lucent puts its image parameters on "cuda:0" whenever CUDA exists: follow it.
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument(
        "--maco-crops", type=int, default=CROPS, help="maco's crops a step (default: maco's)"
    )
    parser.add_argument(
        "--equal-work",
        action="store_true",
        help="also time lucent given MACO's batch of random crops per step (equal work)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import lucent  # noqa: F401
    except ImportError:
        print("torch-lucent is not installed here: pip install torch-lucent")
        return
    loaded = load_model("efficientnet_lite0")
    loaded.module.to(args.device)
    class_id = loaded.labels.index("goldfish")
    hooks_before = _hook_count(loaded.module)
    runs = {
        "convlens fourier": lambda steps: run_convlens(loaded, class_id, steps, args.device),
        "convlens maco": lambda steps: run_maco(
            loaded, class_id, steps, args.device, args.maco_crops
        ),
        "lucent render_vis": lambda steps: run_lucent(loaded.module, class_id, steps, args.device),
    }
    if args.equal_work:
        runs["lucent, MACO's crops"] = lambda steps: run_lucent_crops(
            loaded.module, class_id, steps, args.device
        )
    for run in runs.values():
        run(2)  # warm-up, not timed
    rates: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_ in range(args.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            rates[name].append(args.steps / runs[name](args.steps))
    assert _hook_count(loaded.module) == hooks_before, "a hook was left on the shared model"
    for name in names:
        print(_summary(name, rates[name]))
    lucent = statistics.median(rates["lucent render_vis"])
    for name in names[:2]:
        print(
            f"ratio {name} / lucent: median {statistics.median(rates[name]) / lucent:.2f}x "
            f"({args.steps} steps, {args.rounds} rounds, {SIZE}x{SIZE}, {args.device}, "
            f"{torch.get_num_threads()} threads)"
        )
    if args.equal_work:
        equal = statistics.median(rates["lucent, MACO's crops"])
        print(
            f"equal work (not the issue's target): convlens maco / lucent with {CROPS} crops "
            f"a step: median {statistics.median(rates['convlens maco']) / equal:.2f}x"
        )


if __name__ == "__main__":
    main()
