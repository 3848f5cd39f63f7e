"""Every metric of `convlens.evaluate.metrics_zoo.METRICS` against Quantus 0.6, in one run.

Run: ``python benchmarks/metrics_speed.py`` (``--help`` for options; needs ``quantus``, in
the ``dev`` extra). 256 seeded random images at 224 x 224, maps that look like CAMs (seeded
7 x 7 noise upsampled bilinearly), targets the model's top class, and a seeded small conv
model at 224 px input (conv 7x7/4 -> ReLU -> conv 3x3/2 -> ReLU -> GAP -> linear, 10
classes: the forward pass costs little, so the table shows what each library adds around
it). The metrics that need an explainer get input x gradient, the same function on both
sides. Sample counts are scaled down, identically on both sides, where Quantus's defaults
would take hours (the ``SETTINGS`` table; printed with the results). Quantus 0.6's ROAD
and IROF run only on one-channel images, so they run on the first channel with a
one-channel copy of the model, ROAD on ``--road-images`` images, IROF (whose SLIC
segmentation, the same on both sides, takes about half a second per image) on
``--irof-images``. Each metric runs once per side (wall seconds, one thread); the ratio
is Quantus / convlens. Prints the load average: a machine shared with other jobs slows
both sides. ``--baseline FILE`` also times an earlier copy of ``metrics_zoo.py`` (for
example ``git show REV:src/convlens/evaluate/metrics_zoo.py > FILE``) on the same inputs,
just before the current one, and reports whether both give the same scores: a before/after
comparison within one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens.evaluate import metrics_zoo as zoo

# convlens option -> the Quantus keyword that means the same (per metric), scaled down
SETTINGS = {
    "sparseness": ({}, {}),
    "complexity": ({}, {}),
    "relevance_mass_accuracy": ({}, {}),
    "relevance_rank_accuracy": ({}, {}),
    "selectivity": ({"patch_size": 32}, {"patch_size": 32}),
    "faithfulness_correlation": ({"runs": 10}, {"nr_runs": 10}),
    "random_logit": ({"num_classes": 10}, {"num_classes": 10}),
    "max_sensitivity": ({"samples": 5}, {"nr_samples": 5}),
    "avg_sensitivity": ({"samples": 5}, {"nr_samples": 5}),
    "local_lipschitz_estimate": ({"samples": 5}, {"nr_samples": 5}),
    "road_morf": ({"percentages": (10, 50, 90)}, {"percentages": [10, 50, 90]}),
    "road_lerf": ({"percentages": (10, 50, 90)}, {"percentages": [10, 50, 90]}),
    "irof": ({}, {}),  # on --irof-images images
    "infidelity": ({"patch_sizes": (32,)}, {"perturb_patch_sizes": [32]}),
    "monotonicity_correlation": ({"samples": 10}, {"nr_samples": 10}),  # + 24 groups
    # the correlation with the fully randomised model (the Quantus parity tests' settings)
    "mprt": ({"seed": 5}, {"seed": 5, "return_last_correlation": True, "skip_layers": True}),
    "efficient_mprt": ({"seed": 5}, {"seed": 5}),
}
NOTES = {
    "selectivity": "patches of 32 (default 8)",
    "faithfulness_correlation": "10 runs (default 100)",
    "max_sensitivity": "5 samples (default 200)",
    "avg_sensitivity": "5 samples (default 200)",
    "local_lipschitz_estimate": "5 samples (default 200)",
    "road_morf": "3 percentages (default 50), one channel, --road-images images",
    "road_lerf": "as road_morf; Quantus has no LeRF: it ranks the negated map",
    "irof": "defaults, one channel, --irof-images images",
    "infidelity": "patches of 32 (default 4); Quantus repeats its 10 identical samples",
    "monotonicity_correlation": (
        "24 groups of H*W/8 values (default 1 value), 10 samples (default 100)"
    ),
    "mprt": "last layer's correlation (Quantus: return_last_correlation, skip_layers)",
}


def small_model(channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 16, 7, stride=4, padding=3),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


def input_times_gradient(model):
    def explain(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = images.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x).gather(1, targets[:, None]).sum(), x)
        return (grad * x).sum(1).detach()

    return explain


def quantus_metric(quantus, name: str, options: dict):
    quiet = {"disable_warnings": True}
    if name in ("road_morf", "road_lerf"):
        return quantus.ROAD(**options, **quiet)
    if name == "irof":
        return quantus.IROF(return_aggregate=False, **options, **quiet)
    cls = getattr(quantus, zoo.METRICS[name].quantus)
    if name in ("faithfulness_correlation",):
        return cls(return_aggregate=False, **options, **quiet)
    return cls(**options, **quiet)


def load_baseline(path: str):
    """The module in ``path`` (an earlier ``metrics_zoo.py``), imported as ``zoo_baseline``."""
    spec = importlib.util.spec_from_file_location("zoo_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["zoo_baseline"] = module  # dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--road-images", type=int, default=32)
    parser.add_argument("--irof-images", type=int, default=64)
    parser.add_argument("--metrics", default="all", help="comma separated names, or all")
    parser.add_argument("--baseline", help="an earlier metrics_zoo.py to time as well")
    args = parser.parse_args()
    baseline = load_baseline(args.baseline) if args.baseline else None
    import quantus

    np.trapz = getattr(np, "trapz", np.trapezoid)  # Quantus 0.6's IROF calls np.trapz
    torch.set_num_threads(1)
    print(f"load average before: {os.getloadavg()}")
    torch.manual_seed(0)
    # smooth images (8 px structure and faint noise): SLIC finds superpixels in them
    images = F.interpolate(
        torch.rand(args.images, 3, args.size // 8, args.size // 8), size=args.size, mode="bilinear"
    )
    images = images + 0.05 * torch.rand_like(images)
    coarse = torch.randn(args.images, 1, 7, 7)
    maps = F.interpolate(coarse, size=args.size, mode="bilinear", align_corners=False)[:, 0]
    masks = maps > maps.flatten(1).quantile(0.8, dim=1)[:, None, None]
    model = small_model()
    with torch.no_grad():
        targets = model(images).argmax(1)
    explain = input_times_gradient(model)
    own = explain(images, targets)

    def method(net, x, t):  # MPRT's explainer runs on the model it is handed
        return input_times_gradient(net)(x, t)

    def quantus_explain(model, inputs, targets, **kwargs):
        x = torch.from_numpy(np.asarray(inputs, dtype=np.float32))
        t = torch.from_numpy(np.asarray(targets)).long()
        return method(model, x, t).numpy()[:, None]

    rows = []
    names = zoo.metric_names(args.metrics)
    unset = [name for name in names if name not in SETTINGS]
    if unset:  # before any timing, not after the first hour of it
        raise SystemExit(f"no SETTINGS entry for {', '.join(unset)}: add one to time them")
    for name in names:
        ours_options, their_options = (dict(options) for options in SETTINGS[name])
        if name == "monotonicity_correlation":
            step = args.size * args.size // 8  # Quantus needs it to divide H * W
            ours_options["features_in_step"] = their_options["features_in_step"] = step
        spec = zoo.METRICS[name]
        net, x, a, y = model, images, maps, targets
        if "explain" in spec.needs or "method" in spec.needs:
            a = own
        if name in ("road_morf", "road_lerf", "irof"):  # Quantus: one channel only
            count = args.irof_images if name == "irof" else args.road_images
            net = small_model(1)
            with torch.no_grad():
                net[0].weight.copy_(model[0].weight.sum(1, keepdim=True))
            x = images[:count, :1].contiguous()
            a = maps[:count]
            with torch.no_grad():
                y = net(x).argmax(1)
        before, same = None, ""
        if baseline is not None:
            start = time.perf_counter()
            old = baseline.run_metric(
                name, net, x, a, y, masks=masks, explain=explain, method=method, **ours_options
            )
            before = time.perf_counter() - start
        start = time.perf_counter()
        scores = zoo.run_metric(
            name, net, x, a, y, masks=masks, explain=explain, method=method, **ours_options
        )
        ours = time.perf_counter() - start
        if baseline is not None:
            difference = (scores - old).abs().nan_to_num(0.0).max().item()
            same = f", largest |new - baseline| {difference:.3g}"
            same += "" if torch.equal(scores.isnan(), old.isnan()) else " (NaN differ)"
        metric = quantus_metric(quantus, name, their_options)
        quantus_a = -a if name == "road_lerf" else a
        kwargs = {
            "model": net,
            "x_batch": x.numpy(),
            "y_batch": y.numpy(),
            "a_batch": quantus_a.numpy()[:, None],
            "channel_first": True,
            "device": "cpu",
            "batch_size": 256,
        }
        if spec.needs == ("masks",):
            kwargs["s_batch"] = masks.numpy()[:, None].astype(np.float32)
        if "explain" in spec.needs or "method" in spec.needs:
            kwargs["explain_func"] = quantus_explain
        np.random.seed(0)
        start = time.perf_counter()
        metric(**kwargs)
        theirs = time.perf_counter() - start
        rows.append((name, len(x), before, ours, theirs))
        earlier = "" if before is None else f"baseline {before:.2f} s, "
        print(f"{name}: {earlier}convlens {ours:.2f} s, Quantus {theirs:.2f} s{same}", flush=True)
    print(f"load average after: {os.getloadavg()}\n")
    extra = " baseline s |" if baseline is not None else ""
    head = "| metric | maps | settings (both sides) |"
    print(f"{head}{extra} convlens s | Quantus s | Quantus / convlens |")
    print("|---|---|---|---|---|---|" + ("---|" if extra else ""))
    for name, count, before, ours, theirs in rows:
        note = NOTES.get(name, "defaults")
        earlier = f" {before:.2f} |" if before is not None else ""
        print(
            f"| `{name}` | {count} | {note} |{earlier} {ours:.2f} | {theirs:.2f} "
            f"| {theirs / ours:.1f}x |"
        )


if __name__ == "__main__":
    main()
