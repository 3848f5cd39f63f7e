"""Speed of every attribution method against one plain forward pass (CPU).

Run: ``python benchmarks/speed.py`` (``--help`` for options). For each method, on the
default model (EfficientNet-Lite0), a batch of 8 sample photos at 224 x 224: the method
and its baseline run in turns (method, baseline, method, baseline, ...) after one warm-up
of each, and the medians are compared. Baselines: one forward of the batch (``no_grad``,
eval mode), and for gradient methods one forward plus the gradient w.r.t. the input only.
Layer methods get the layer explicitly (``bn2``, the default CAM layer); one extra row
times Grad-CAM with ``layer=None`` as users call it. Method and baseline alternate which
goes first in each turn. ``--clock cpu`` times CPU seconds instead of wall time (steadier
on a machine shared with other jobs). Slow methods (occlusion, Score-CAM, Integrated Gradients) run
once; for them the number of images pushed through the model is counted with a hook and
compared with their targets.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

import convlens
from convlens.attribution import cam, gradients, perturbation, rules
from convlens.attribution.common import chunk_size, input_gradient, prepare
from convlens.layers import borrowed_model, capture

LAYER = "bn2"
FAST_CAMS = ("gradcam", "gradcam_pp", "xgradcam", "layercam", "hirescam")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="turns per fast method")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ig-steps", type=int, default=16)
    parser.add_argument(
        "--scorecam-images", type=int, default=1, help="images for Score-CAM (it is slow)"
    )
    parser.add_argument(
        "--parts",
        default="cam,gradient,slow",
        help="comma list of: cam (CAM family), gradient (gradient and rule methods, "
        "guided Grad-CAM), slow (occlusion, Integrated Gradients, Score-CAM)",
    )
    parser.add_argument("--only", default="", help="comma list of method names to run")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]

    torch.manual_seed(0)
    loaded = convlens.load_model()
    module = loaded.module
    names = (convlens.sample_names() * args.batch)[: args.batch]
    images = convlens.load_images(names, preprocess=loaded.preprocess).tensor
    batch = len(images)

    def forward():
        with borrowed_model(module), torch.no_grad():
            module(images)

    def forward_and_input_gradient():
        prepared = prepare(loaded, images)
        with borrowed_model(module):
            input_gradient(module, prepared.images, prepared.targets)

    rows: list[Row] = []

    def add(name, seconds, base_seconds, base_name, limit, note=""):
        ratio = seconds / base_seconds
        target = f"<= {limit:g} x {base_name}"
        rows.append(
            Row(name, 1000 * seconds / batch, ratio, base_name, target, ratio <= limit, note)
        )
        print(f"{name}: {1000 * seconds / batch:.1f} ms/image, ratio {ratio:.2f}", flush=True)

    parts = set(args.parts.split(","))
    layered = {"cam": 1.05} | {name: 1.2 for name in FAST_CAMS}
    if args.only:
        layered = {k: v for k, v in layered.items() if k in args.only.split(",")}
    for name, limit in layered.items() if "cam" in parts else ():
        fn = getattr(cam, name)
        ours, base = in_turns(lambda fn=fn: fn(loaded, images, layer=LAYER), forward, args.repeats)
        add(name, ours, base, "forward", limit)
    if "cam" in parts and (not args.only or "gradcam" in args.only.split(",")):
        # As users call it: the default layer is found by one forward of one image on the
        # first call and remembered (the warm-up turn pays it).
        ours, base = in_turns(lambda: cam.gradcam(loaded, images), forward, args.repeats)
        add("gradcam (layer=None)", ours, base, "forward", 1.2)
    others = {
        "eigencam": (lambda: cam.eigencam(loaded, images, layer=LAYER), "cam"),
        "guided_gradcam": (lambda: cam.guided_gradcam(loaded, images, layer=LAYER), "gradient"),
    }
    for name, (fn, part) in others.items():
        if part not in parts or (args.only and name not in args.only.split(",")):
            continue
        ours, base = in_turns(fn, forward, args.repeats)
        rows.append(Row(name, 1000 * ours / batch, ours / base, "forward", "-", None))
    gradient_methods = (
        ("saliency", gradients.saliency),
        ("input_x_gradient", gradients.input_x_gradient),
        ("deconvnet", rules.deconvnet),
        ("guided_backprop", rules.guided_backprop),
    )
    for name, fn in gradient_methods if "gradient" in parts else ():
        ours, base = in_turns(
            lambda fn=fn: fn(loaded, images), forward_and_input_gradient, args.repeats
        )
        add(name, ours, base, "fwd+input grad", 1.0 if name != "input_x_gradient" else 1.05)
    forward_seconds = statistics.median(timed(forward) for _ in range(args.repeats))
    grad_seconds = float("nan")
    if parts & {"gradient", "slow"}:
        grad_seconds = statistics.median(timed(forward_and_input_gradient) for _ in range(3))

    if "slow" in parts:
        with RowCounter(module) as counter:
            ours = timed(lambda: perturbation.occlusion(loaded, images, progress=True))
        positions = counter.rows / batch - 1  # one reference forward per image
        base_name = f"{positions:g} forwards"
        add("occlusion", ours, positions * forward_seconds, base_name, 1.05)

        steps = args.ig_steps
        ours = timed(lambda: gradients.integrated_gradients(loaded, images, n_steps=steps))
        add("integrated_gradients", ours, steps * grad_seconds, f"{steps} x fwd+input grad", 1.0)

        few = images[: args.scorecam_images]
        live = live_channels(module, few)
        with RowCounter(module) as counter:
            ours = timed(lambda: cam.scorecam(loaded, few, layer=LAYER, progress=True))
        masked = counter.rows - len(few)  # one activation forward also pins the class
        rows.append(
            Row(
                "scorecam",
                1000 * ours / len(few),
                ours / (forward_seconds * len(few) / batch),
                "forward",
                f"masked forwards {masked} == non-flat channels {live}",
                masked == live,
                f"{len(few)} image(s), {counter.calls - 1} batches of <= "
                f"{chunk_size(None, len(few))}",
            )
        )

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {batch} x 224^2")
    print(f"times are {args.clock} milliseconds")
    print(f"forward: {1000 * forward_seconds / batch:.1f} ms/image; ", end="")
    gradient_text = (
        "not measured"
        if grad_seconds != grad_seconds
        else (f"{1000 * grad_seconds / batch:.1f} ms/image")
    )
    print(f"forward + input gradient: {gradient_text}")
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


if __name__ == "__main__":
    main()
