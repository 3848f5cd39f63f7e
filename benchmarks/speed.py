"""Speed of every attribution method through `convlens.explain`, against a plain forward pass.

Run: ``python benchmarks/speed.py`` (``--help`` for options). Every timed call is the public
one, ``convlens.explain(model, images, method, ...)``: the target check, the method, and the
scores, classes and probabilities of the `Explanation`. On the default model
(EfficientNet-Lite0), a batch of 8 sample photos at 224 x 224, on CPU, each method and its
baseline run in turns (after one warm-up of each), alternating which goes first, and the
medians are compared. The baselines are plain torch, what a user would write without
convlens: one forward of the batch under ``no_grad``, and for gradient and rule methods one
forward plus the gradient of each image's top-1 logit w.r.t. the input only
(``torch.autograd.grad``). Layer methods get the layer explicitly (``bn2``, the default CAM
layer); one extra row times Grad-CAM with ``layer=None`` as users call it. ``--clock cpu``
times CPU seconds instead of wall time (steadier on a machine shared with other jobs, the
more so with ``--threads 1``).
Slow methods (occlusion, Integrated Gradients, SmoothGrad, Score-CAM) run once each; the
images they push through the model are counted with a hook, and they are compared with the
medians of the baselines taken in the same run. The script ends with one row per registered
method and names any method the chosen ``--parts``/``--only`` left out.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

import convlens
from convlens.attribution.common import chunk_size
from convlens.attribution.methods import list_methods
from convlens.layers import borrowed_model, capture

LAYER = "bn2"
CAM_LIMITS = {"cam": 1.05} | {
    name: 1.2 for name in ("gradcam", "gradcam_pp", "xgradcam", "layercam", "hirescam")
}
GRADIENT_LIMITS = {
    "saliency": 1.05,
    "input_x_gradient": 1.05,
    "deconvnet": 1.05,
    "guided_backprop": 1.05,
}
UNTARGETED = {"eigencam": "cam", "guided_gradcam": "gradient"}  # part each belongs to


@dataclass
class Row:
    method: str
    ms_per_image: float
    ratio: float
    baseline: str
    target: str
    holds: bool | None
    note: str = ""


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def timed(fn: Callable[[], object]) -> float:
    """Seconds spent in ``fn`` on the chosen clock: wall time (the default, what a user
    waits for; use it on an idle machine) or CPU time of this process over all threads
    (``--clock cpu``: steadier on a machine shared with other jobs, which wall time counts
    as waiting for a core)."""
    start = clock()
    fn()
    return clock() - start


def in_turns(method: Callable, baseline: Callable, repeats: int, warmup: bool = True):
    """Median seconds of ``method`` and of ``baseline``, measured alternately. Which of the
    two goes first alternates between turns: whatever runs right after the other pays for
    its freed memory (page faults), which otherwise biases the ratio by 5-10%."""
    if warmup:
        method()
        baseline()
    ours, theirs = [], []
    for turn in range(repeats):
        if turn % 2:
            theirs.append(timed(baseline))
            ours.append(timed(method))
        else:
            ours.append(timed(method))
            theirs.append(timed(baseline))
    return statistics.median(ours), statistics.median(theirs)


class RowCounter:
    """Counts the images pushed through ``module`` (a forward pre-hook, removed on exit)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.rows, self.calls = module, 0, 0

    def __enter__(self):
        def count(_module, args):
            self.rows += len(args[0])
            self.calls += 1

        self.handle = self.module.register_forward_pre_hook(count)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def live_channels(module: torch.nn.Module, images: torch.Tensor) -> int:
    """Number of (image, channel) pairs of ``LAYER`` whose activation is not flat (the
    channels Score-CAM scores: a flat channel has no mask)."""
    with borrowed_model(module), capture(module, LAYER) as cap, torch.no_grad():
        module(images)
    flat = cap.activation(LAYER).flatten(2)
    return int((flat.amax(2) > flat.amin(2)).sum())


def plain_baselines(module: torch.nn.Module, images: torch.Tensor):
    """The two baselines in plain torch: ``forward()`` (no autograd) and
    ``forward_and_input_gradient()`` (the top-1 logit's gradient w.r.t. the input only)."""

    def forward():
        with torch.no_grad():
            module(images)

    def forward_and_input_gradient():
        inputs = images.clone().requires_grad_(True)
        output = module(inputs)
        top = output.gather(1, output.detach().argmax(1, keepdim=True))
        torch.autograd.grad(top.sum(), inputs)

    return forward, forward_and_input_gradient


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="turns per fast method")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ig-steps", type=int, default=16)
    parser.add_argument("--sg-samples", type=int, default=8, help="SmoothGrad noisy samples")
    parser.add_argument(
        "--scorecam-images", type=int, default=1, help="images for Score-CAM (it is slow)"
    )
    parser.add_argument(
        "--parts",
        default="cam,gradient,slow",
        help="comma list of: cam (CAM family, Eigen-CAM), gradient (gradient and rule "
        "methods, guided Grad-CAM), slow (occlusion, Integrated Gradients, SmoothGrad, "
        "Score-CAM)",
    )
    parser.add_argument("--only", default="", help="comma list of method names to run")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="intra-op threads (default: torch's own); 1 with --clock cpu is the steadiest "
        "on a loaded machine (no thread waits for a descheduled sibling)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    loaded = convlens.load_model()
    module = loaded.module.eval()
    names = (convlens.sample_names() * args.batch)[: args.batch]
    images = convlens.load_images(names, preprocess=loaded.preprocess).tensor
    batch = len(images)
    forward, forward_and_input_gradient = plain_baselines(module, images)
    parts = set(args.parts.split(","))
    only = set(filter(None, args.only.split(",")))

    def wanted(name: str, part: str) -> bool:
        return part in parts and (not only or name in only)

    def explained(name: str, inputs=images, **options) -> Callable[[], object]:
        return lambda: convlens.explain(loaded, inputs, name, **options)

    rows: list[Row] = []

    def add(name, seconds, base_seconds, base_name, limit, note="", per=batch):
        ratio = seconds / base_seconds
        target = "-" if limit is None else f"<= {limit:g} x {base_name}"
        holds = None if limit is None else ratio <= limit
        rows.append(Row(name, 1000 * seconds / per, ratio, base_name, target, holds, note))
        print(f"{name}: {1000 * seconds / per:.1f} ms/image, ratio {ratio:.2f}", flush=True)

    for name, limit in CAM_LIMITS.items():
        if wanted(name, "cam"):
            ours, base = in_turns(explained(name, layer=LAYER), forward, args.repeats)
            add(name, ours, base, "forward", limit)
    if wanted("gradcam", "cam"):
        # As users call it: the default layer is found by one forward of one image on the
        # first call and remembered (the warm-up turn pays it).
        ours, base = in_turns(explained("gradcam"), forward, args.repeats)
        add("gradcam (layer=None)", ours, base, "forward", 1.2)
    for name, limit in GRADIENT_LIMITS.items():
        if wanted(name, "gradient"):
            ours, base = in_turns(explained(name), forward_and_input_gradient, args.repeats)
            add(name, ours, base, "fwd+input grad", limit)
    for name, part in UNTARGETED.items():
        if wanted(name, part):
            ours, base = in_turns(explained(name, layer=LAYER), forward, args.repeats)
            add(name, ours, base, "forward", None)

    forward_seconds = statistics.median(timed(forward) for _ in range(args.repeats))
    grad_seconds = statistics.median(timed(forward_and_input_gradient) for _ in range(3))
    if "slow" in parts:
        slow_rows(args, loaded, images, forward_seconds, grad_seconds, wanted, explained, add)

    print_table(args, rows, batch, forward_seconds, grad_seconds)


def slow_rows(args, loaded, images, forward_seconds, grad_seconds, wanted, explained, add):
    """Occlusion, Integrated Gradients, SmoothGrad and Score-CAM: one run each."""
    module, batch = loaded.module, len(images)
    if wanted("occlusion", "slow"):
        with RowCounter(module) as counter:
            ours = timed(explained("occlusion", progress=True))
        positions = counter.rows / batch - 1  # one clean forward per image
        add("occlusion", ours, positions * forward_seconds, f"{positions:g} forwards", 1.05)
    if wanted("integrated_gradients", "slow"):
        steps = args.ig_steps
        ours = timed(explained("integrated_gradients", n_steps=steps))
        add("integrated_gradients", ours, steps * grad_seconds, f"{steps} x fwd+input grad", 1.0)
    if wanted("smoothgrad", "slow"):
        samples = args.sg_samples
        ours = timed(explained("smoothgrad", n_samples=samples))
        add("smoothgrad", ours, samples * grad_seconds, f"{samples} x fwd+input grad", None)
    if wanted("scorecam", "slow"):
        few = images[: args.scorecam_images]
        live = live_channels(module, few)
        with RowCounter(module) as counter:
            ours = timed(explained("scorecam", inputs=few, layer=LAYER, progress=True))
        masked = counter.rows - len(few)  # one activation forward also pins the class
        add(
            "scorecam",
            ours,
            forward_seconds * len(few) / batch,
            "forward",
            None,
            f"{len(few)} image(s); masked forwards {masked} == non-flat channels {live}: "
            f"{'yes' if masked == live else '**no**'}; {counter.calls - 1} batches of <= "
            f"{chunk_size(None, len(few))}",
            per=len(few),
        )


def print_table(args, rows: list[Row], batch: int, forward_seconds, grad_seconds) -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {batch} x 224^2")
    print(f"times are {args.clock} milliseconds, through convlens.explain")
    print(f"forward: {1000 * forward_seconds / batch:.1f} ms/image; ", end="")
    print(f"forward + input gradient: {1000 * grad_seconds / batch:.1f} ms/image")
    print()
    print("| method | ms / image | ratio | to | target | holds |")
    print("|---|---:|---:|---|---|---|")
    for row in rows:
        holds = "-" if row.holds is None else ("yes" if row.holds else "**no**")
        note = f" ({row.note})" if row.note else ""
        print(
            f"| {row.method} | {row.ms_per_image:.1f} | {row.ratio:.2f} | {row.baseline} | "
            f"{row.target}{note} | {holds} |"
        )
    measured = {row.method.split(" ")[0] for row in rows}
    missing = [m.name for m in list_methods() if m.name not in measured]
    if missing:
        print(f"\nnot measured in this run (see --parts/--only): {', '.join(missing)}")


if __name__ == "__main__":
    main()
