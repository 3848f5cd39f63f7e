"""What every leaderboard shares: the `Leaderboard` record, method options and checks, and
explaining a set of rows with one method (`explain_all`). Used by the box benchmarks
(`convlens.evaluate.benchmark`) and GridPG (`convlens.evaluate.gridpg`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from convlens.errors import MethodError
from convlens.evaluate.ground_truth import GroundTruth
from convlens.models.loading import LoadedModel


@dataclass
class Leaderboard:
    """Scores per method or floor (``scores[name]``: `benchmark.METRIC_KEYS`, or
    `gridpg.GRIDPG_KEYS`), the mean deletion and
    insertion curves per method (``curves[name] = {"deletion": Tensor[S+1], "insertion": ...}``;
    empty when the run skipped faithfulness),
    methods that failed (``errors[name] = message``) and the run's settings.

    ``sanity_constant[name]``: of the ``settings["sanity_images"]`` maps of the sanity check,
    how many were constant before or after randomisation (no Spearman correlation; left out
    of ``sanity_spearman``). ``cascades[name]``: the layer-by-layer `SanityResult` when
    asked for (``cascade_images``)."""

    model: str
    images: int
    accuracy: float
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)
    curves: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    sanity_constant: dict[str, int] = field(default_factory=dict)
    cascades: dict = field(default_factory=dict)

    @property
    def headline(self) -> str:
        """The score that ranks rows: ``maxboxacc_v2`` (box benchmarks) or ``gridpg``."""
        first = next(iter(self.scores.values()), {})
        return "gridpg" if "gridpg" in first else "maxboxacc_v2"

    def ranked(self) -> list[tuple[str, dict]]:
        """Methods and floors sorted by the `headline` score, best first."""
        return sorted(self.scores.items(), key=lambda item: -item[1][self.headline])

    def margins(self, key: str | None = None) -> dict[str, float | None]:
        """Each method's ``key`` (default: `headline`) minus the best floor's; None for the
        floors themselves (see `convlens.evaluate.map_scores.margins`)."""
        from convlens.evaluate.map_scores import margins

        return margins(self.scores, key or self.headline)

    def _repr_html_(self) -> str:
        """Jupyter shows a Leaderboard as its table, floors included
        (`convlens.render.leaderboard.leaderboard_html`)."""
        from convlens.render.leaderboard import leaderboard_html

        return leaderboard_html(self)


def _check_methods(names: list[str]) -> None:
    from convlens.attribution import get_method

    if not names:
        raise MethodError("no methods given; pass names from 'convlens methods' or 'all'")
    for name in names:
        get_method(name)


def _method_options(name: str, side: int, method_options: dict[str, dict] | None) -> dict:
    """Keyword arguments of method ``name`` on images of ``side`` pixels: the defaults
    (occlusion: patch = side / 8, stride = side / 16), updated by ``method_options[name]``."""
    defaults = (
        {"patch": max(2, side // 8), "stride": max(1, side // 16)} if name == "occlusion" else {}
    )
    return defaults | (method_options or {}).get(name, {})


def explain_all(
    model: LoadedModel, truth: GroundTruth, method: str, options: dict, batch_size: int
) -> tuple[torch.Tensor, float]:
    """Maps ``Tensor[N, H, W]`` of ``method`` for each image's ground-truth class, and the
    seconds the method itself took (summed over chunks of ``batch_size`` images)."""
    from convlens.attribution import explain

    maps, seconds = [], 0.0
    for start in range(0, len(truth), batch_size):
        rows = slice(start, start + batch_size)
        result = explain(model, truth.tensor[rows], method, target=truth.labels[rows], **options)
        maps.append(result.maps.float().cpu())
        seconds += result.seconds
    return torch.cat(maps), seconds
