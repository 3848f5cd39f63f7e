"""Which metric to trust: for every metric of the zoo (and MaxBoxAccV2), Kendall's tau
between the method ranking it gives on ``shapes-multi`` and the ranking by the
counterfactual ground truth (``cf_spearman``) on the same scenes, the tau between its
rankings on three data seeds, and the margin of the best method over the best floor. The
table of docs/evaluation.md ("Which metric to trust").

Run: ``python benchmarks/metric_trust.py [--scenes 6] [--seeds 1 2 3]`` (one CPU thread).
With every metric a seed takes tens of minutes, so seeds can run in separate processes and
be joined: ``--seeds 1 --save trust-1.json`` (one per seed), then ``--load trust-1.json
trust-2.json trust-3.json`` prints the table from the saved scores; ``--metrics a,b`` scores
only those metrics of the zoo.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from convlens.evaluate.benchmark import evaluate_on_source
from convlens.evaluate.metrics_zoo import METRICS
from convlens.files import write_json

METHODS = (
    "gradcam",
    "gradcam_pp",
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "guided_backprop",
)


def _tau(a: np.ndarray, b: np.ndarray) -> float:
    ok = ~np.isnan(a) & ~np.isnan(b)
    return float(kendalltau(a[ok], b[ok]).statistic) if ok.sum() > 2 else float("nan")


def _cell(values) -> str:
    if values is None:
        return "-"
    return f"{np.nanmean(values):+.2f} ({', '.join(f'{v:+.2f}' for v in values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--metrics", default=",".join(METRICS), help="metrics of the zoo")
    parser.add_argument("--save", type=Path, help="write the seeds' scores here (JSON)")
    parser.add_argument("--load", type=Path, nargs="+", help="tabulate saved scores")
    args = parser.parse_args()
    torch.set_num_threads(1)
    methods = args.methods.split(",")
    metrics = args.metrics.split(",")
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        parser.error(f"unknown metrics {unknown}; the zoo has {', '.join(METRICS)}")
    if args.load:
        runs = [tuple(run) for path in args.load for run in json.loads(path.read_text())]
    else:
        runs = [score_seed(seed, methods, metrics, args.scenes) for seed in args.seeds]
    if args.save:
        write_json(args.save, runs)
    tabulate(runs, methods, metrics)


def score_seed(seed: int, methods: list[str], metrics: list[str], scenes: int) -> tuple:
    """``(counterfactual scores, shapes-multi scores)`` of one data seed."""
    cf = evaluate_on_source(None, methods, scenes, benchmark="counterfactual", seed=seed).scores
    box = evaluate_on_source(
        None,
        methods,
        scenes,
        benchmark="shapes-multi",
        seed=seed,
        faithfulness=False,
        sanity_images=1,
        metrics=metrics,
    ).scores
    print(f"seed {seed}: cf_spearman", {m: round(cf[m]["cf_spearman"], 3) for m in methods})
    return cf, box


def tabulate(runs: list[tuple], methods: list[str], metrics: list[str]) -> None:
    """The table of the module docstring, one row per metric, from the seeds' scores."""
    truth = [np.array([cf[m]["cf_spearman"] for m in methods]) for cf, _ in runs]
    pairs = list(itertools.combinations(range(len(runs)), 2))
    print("| metric | better | tau with the CF ranking | tau between seeds | best margin |")
    print("|---|---|---|---|---|")
    between = [_tau(truth[i], truth[j]) for i, j in pairs]
    print(f"| `cf_spearman` (reference) | higher | - | {_cell(between)} | - |")
    keys = [(name, METRICS[name].higher_is_better) for name in metrics]
    for key, higher in keys + [("maxboxacc_v2", True)]:
        sign = 1.0 if higher else -1.0
        ranks = [
            np.array([np.nan if box[m][key] is None else sign * box[m][key] for m in methods])
            for _, box in runs
        ]
        with_cf = [_tau(r, t) for r, t in zip(ranks, truth, strict=True)]
        seeds = [_tau(ranks[i], ranks[j]) for i, j in pairs]
        if key in METRICS:
            margins = [
                max((v for m in methods if (v := box[m][f"{key}_margin"]) is not None), default=0)
                for _, box in runs
            ]
        else:
            floors = [n for n in runs[0][1] if n.startswith("floor:")]
            margins = [
                max(box[m][key] for m in methods) - max(box[f][key] for f in floors)
                for _, box in runs
            ]
        direction = "higher" if higher else "lower"
        print(f"| `{key}` | {direction} | {_cell(with_cf)} | {_cell(seeds)} | {_cell(margins)} |")


if __name__ == "__main__":
    main()
