"""The metric zoo (`convlens.evaluate.metrics_zoo`) as columns of the box leaderboards.

``convlens evaluate --metrics a,b|all`` (``metrics=`` of `evaluate_methods`) scores every
method's maps and every floor's maps with each chosen metric, on the rows of the run (the
first ``--limit`` images; on ``shapes-multi`` one row per present class). Each metric adds
two keys to the row's scores:

- ``<metric>``: the mean over the rows where the metric is defined (NaN rows left out;
  None when it is defined nowhere);
- ``<metric>_margin``: for a method, how far it beats the best floor on that metric, signed
  so that positive is better whichever way the metric points: ``score - max(floors)`` when
  higher is better, ``min(floors) - score`` when lower is better; None for the floors and
  when no floor has a value.

The ground-truth masks feed the mask metrics (``masks``). Metrics that re-run the method
(``explain``, ``method``: sensitivity, random logit, MPRT) call the method again with the
leaderboard's options; for a floor they call its map function on the inputs' display
pixels (`Preprocess.denormalize`), which never looks at the model or the class.
`LEADERBOARD_METRIC_OPTIONS` trims the metrics whose Quantus defaults re-run the method
hundreds of times per image (docs/metrics.md gives the cost of each).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from convlens.errors import MetricError
from convlens.evaluate.ground_truth import GroundTruth

# Quantus draws 200 noisy copies per image for the sensitivity metrics: 200 re-runs of the
# method per row. The leaderboard draws 10 (docs/metrics.md states it).
# Monotonicity correlation's defaults (100 draws for each single pixel) cost 409,600 forward
# passes per row at 64 px, 5 million at 224 px; the leaderboard sets groups of 256 pixels
# and 10 draws: 160 passes per row at 64 px, 1,960 at 224 px.
LEADERBOARD_METRIC_OPTIONS: dict[str, dict] = {
    "max_sensitivity": {"samples": 10},
    "avg_sensitivity": {"samples": 10},
    "local_lipschitz_estimate": {"samples": 10},
    "monotonicity_correlation": {"samples": 10, "features_in_step": 256},
}


def check_metrics(names: Sequence[str], truth: GroundTruth | None = None) -> list[str]:
    """``names`` checked against the registry (`MetricError` for an unknown one) and, with
    ``truth``, against what the data can supply: a mask metric needs ground-truth masks."""
    from convlens.evaluate.metrics_zoo import get_metric

    specs = [get_metric(name) for name in names]
    if truth is not None and truth.masks is None:
        needy = [spec.name for spec in specs if "masks" in spec.needs]
        if needy:
            raise MetricError(
                f"{', '.join(needy)} need ground-truth masks and this data has none; give "
                "masks in the annotations or leave these metrics out of --metrics"
            )
    return [spec.name for spec in specs]


def method_function(name: str, options: dict):
    """``f(model, images, targets) -> Tensor[B, H, W]``: method ``name`` with ``options``."""
    from convlens.attribution import explain

    def compute(model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return explain(model, images, name, target=targets, **options).maps.float()

    return compute


def floor_function(name: str, preprocess):
    """``f(model, images, targets) -> Tensor[B, H, W]``: floor ``name`` of the inputs'
    display pixels (``preprocess.denormalize``); the model and targets are not used."""
    from convlens.evaluate.floors import floor_maps

    def compute(model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return floor_maps(name, preprocess.denormalize(images).float().cpu())

    return compute


def metric_scores(
    model,
    truth: GroundTruth,
    maps: torch.Tensor,
    method,
    names: Sequence[str],
    options: dict[str, dict] | None = None,
    seconds: dict[str, float] | None = None,
) -> dict[str, float | None]:
    """``{metric: mean score}`` of ``maps`` (``Tensor[N, H, W]``, one per row of ``truth``)
    for each metric of ``names``, with ``method(model, images, targets)`` re-making the maps
    where a metric needs it. ``options[metric]`` go to the metric (on top of
    `LEADERBOARD_METRIC_OPTIONS`); ``seconds[metric]`` accumulates each metric's time."""
    from convlens.evaluate.metrics_zoo import run_metric

    out: dict[str, float | None] = {}
    for name in names:
        kwargs = LEADERBOARD_METRIC_OPTIONS.get(name, {}) | (options or {}).get(name, {})
        start = time.perf_counter()
        values = run_metric(
            name,
            model,
            truth.tensor,
            maps.to(torch.float32),
            truth.labels,
            masks=truth.masks,
            method=method,
            **kwargs,
        )
        if seconds is not None:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        defined = values[~torch.isnan(values)]
        out[name] = float(defined.mean()) if len(defined) else None
    return out


def add_metric_margins(scores: dict[str, dict], names: Sequence[str]) -> None:
    """Add ``<metric>_margin`` to every row of ``scores`` (see the module docstring)."""
    from convlens.evaluate.floors import is_floor
    from convlens.evaluate.metrics_zoo import get_metric

    for name in names:
        higher = get_metric(name).higher_is_better
        floor_values = [
            row[name] for key, row in scores.items() if is_floor(key) and row.get(name) is not None
        ]
        best = (max if higher else min)(floor_values) if floor_values else None
        for key, row in scores.items():
            value = row.get(name)
            if best is None or is_floor(key) or value is None or math.isnan(value):
                row[f"{name}_margin"] = None
            else:
                row[f"{name}_margin"] = value - best if higher else best - value


@dataclass
class MetricColumns:
    """The metric columns of one leaderboard run: `score` each method's or floor's maps as
    they come (``method``: `method_function` or `floor_function`), `finish` the board with
    the margins and settings once every row is in."""

    model: object
    truth: GroundTruth
    names: list[str]
    options: dict[str, dict] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def score(self, maps: torch.Tensor, method) -> dict[str, float | None]:
        return metric_scores(
            self.model, self.truth, maps, method, self.names, self.options, self.seconds
        )

    def finish(self, board) -> None:
        add_metric_margins(board.scores, self.names)
        board.settings["metrics"] = metric_settings(self.names, self.options)
        board.settings["metric_seconds"] = dict(self.seconds)


def metric_settings(names: Sequence[str], options: dict[str, dict] | None) -> dict:
    """What a board records about its metric columns (``settings["metrics"]``): per metric
    its direction, Quantus name and the options it ran with."""
    from convlens.evaluate.metrics_zoo import get_metric

    return {
        name: {
            "higher_is_better": get_metric(name).higher_is_better,
            "quantus": get_metric(name).quantus,
            "options": LEADERBOARD_METRIC_OPTIONS.get(name, {}) | (options or {}).get(name, {}),
        }
        for name in names
    }


__all__ = [
    "LEADERBOARD_METRIC_OPTIONS",
    "MetricColumns",
    "add_metric_margins",
    "check_metrics",
    "floor_function",
    "method_function",
    "metric_scores",
    "metric_settings",
]
