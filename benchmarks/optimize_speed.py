"""Activation-maximisation speed: convlens `visualize` vs torch-lucent's `render_vis`.

Same model (the default EfficientNet-Lite0, inputs normalised with mean 0.5 / std 0.5),
same objective (the 'goldfish' logit), 224x224, Fourier parametrisation with colour
decorrelation, Adam lr 0.05, and the *same transform function* for both: convlens's
`random_transform` with its defaults (shift within +-8 px with reflect padding, scale
0.95 / 1 / 1.05 and rotation within +-5 degrees as one affine resampling, output 224x224),
passed to lucent as its transform list. lucent's own `jitter`/`random_scale`/
`random_rotate` would not be the same geometry (kornia shifts of 0..7 px with zero fill,
and a resize that feeds the network 213+pad, 224 or 236 px images), so they are not used.

Each round times both tools, alternating which goes first. lucent's `render_vis` hooks
every submodule of the model it is given and never removes the hooks (and fills parameter
``.grad``), so lucent gets a fresh `copy.deepcopy` of the model for every run; convlens
borrows the shared model and leaves it as it was (checked after the rounds).
Run in an environment that has torch-lucent (it is not a convlens dependency):

    python benchmarks/optimize_speed.py --steps 12 --threads 2 --rounds 5 [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from convlens import load_model
from convlens.features import optimize
from convlens.features.objectives import class_logit

SIZE = 224
LR = 0.05


class Normalised(nn.Module):
    """The model behind its own normalisation, for lucent (which feeds [0, 1] pixels)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module((x - 0.5) / 0.5)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_convlens(loaded, class_id: int, steps: int, device: str) -> float:
    """Seconds for one `visualize` of ``steps`` steps (its final scoring pass included)."""
    _synchronize(device)
    start = time.perf_counter()
    optimize.visualize(loaded, class_logit(class_id), steps=steps, size=SIZE, lr=LR, seed=0)
    _synchronize(device)
    return time.perf_counter() - start


def run_lucent(
    module: nn.Module, class_id: int, steps: int, device: str, frozen: bool = False
) -> float:
    """Seconds for one `render_vis` of ``steps`` steps on a fresh copy of ``module``
    (``frozen``: its parameters set to ``requires_grad=False`` first)."""
    model = Normalised(copy.deepcopy(module)).to(device).eval()
    model.requires_grad_(not frozen)
    gen = torch.Generator().manual_seed(0)
    shared = optimize.Transforms()  # the defaults convlens's visualize uses

    def same_transform(x: torch.Tensor) -> torch.Tensor:
        return optimize.random_transform(x, shared, gen)

    return timed_render_vis(model, class_id, steps, device, SIZE, same_transform)


def timed_render_vis(
    model: nn.Module, class_id: int, steps: int, device: str, side: int, transform
) -> float:
    """Seconds for lucent's `render_vis` of ``steps`` Adam steps (``LR``) on ``model``'s
    ``class_id`` logit: a decorrelated Fourier image of ``side`` pixels, ``transform`` applied
    at each step (lucent's own transforms off)."""
    from lucent.optvis import objectives, param, render

    _synchronize(device)
    start = time.perf_counter()
    render.render_vis(
        model,
        objectives.channel("labels", class_id),
        param_f=lambda: param.image(side, fft=True, decorrelate=True),
        optimizer=lambda params: torch.optim.Adam(params, lr=LR),
        transforms=[transform],
        thresholds=(steps,),
        preprocess=False,
        progress=False,
        show_image=False,
        verbose=False,
    )
    _synchronize(device)
    return time.perf_counter() - start


def _hook_count(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _summary(name: str, rates: list[float]) -> str:
    rounds = " ".join(f"{v:6.2f}" for v in rates)
    return (
        f"{name:<18} {rounds}  median {statistics.median(rates):6.2f}  best {max(rates):6.2f}"
        " steps/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    # lucent puts its image parameters on "cuda:0" whenever CUDA exists: follow it.
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument(
        "--lucent-frozen",
        action="store_true",
        help="give lucent a copy with requires_grad=False parameters (its loss.backward() "
        "otherwise computes every weight gradient too)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import lucent  # noqa: F401
    except ImportError:
        print("torch-lucent is not installed here; install it in a separate environment")
        return
    loaded = load_model()
    loaded.module.to(args.device)
    class_id = loaded.labels.index("goldfish")
    hooks_before = _hook_count(loaded.module)
    run_convlens(loaded, class_id, 2, args.device)  # warm-up, not timed
    run_lucent(loaded.module, class_id, 2, args.device, args.lucent_frozen)
    runs = [
        ("convlens", lambda: run_convlens(loaded, class_id, args.steps, args.device)),
        (
            "lucent",
            lambda: run_lucent(
                loaded.module, class_id, args.steps, args.device, args.lucent_frozen
            ),
        ),
    ]
    rates: dict[str, list[float]] = {"convlens": [], "lucent": []}
    for round_ in range(args.rounds):  # interleaved, alternating which tool goes first
        for name, run in runs if round_ % 2 == 0 else runs[::-1]:
            rates[name].append(args.steps / run())
    ours, theirs = rates["convlens"], rates["lucent"]
    assert _hook_count(loaded.module) == hooks_before, "a hook was left on the shared model"
    print(_summary("convlens render", ours))
    print(_summary("lucent render_vis" + (" (frozen)" if args.lucent_frozen else ""), theirs))
    median_ratio = statistics.median(ours) / statistics.median(theirs)
    print(
        f"ratio convlens / lucent: median {median_ratio:.2f}x, best {max(ours) / max(theirs):.2f}x"
        f" ({args.steps} steps, {args.rounds} rounds, "
        f"{SIZE}x{SIZE}, {args.device}, {torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
