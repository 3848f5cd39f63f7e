"""What every leaderboard shares: the `Leaderboard` record, method options and checks, and
explaining a set of rows with one method (`explain_all`). Used by the box benchmarks
(`convlens.evaluate.benchmark`), GridPG (`convlens.evaluate.gridpg`), the counterfactual
and shortcut benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from convlens.errors import MethodError
from convlens.evaluate.ground_truth import GroundTruth
from convlens.models.loading import LoadedModel


@dataclass
class Leaderboard:
    """Scores per method or floor (``scores[name]``: `benchmark.METRIC_KEYS`,
    `gridpg.GRIDPG_KEYS` or `counterfactual.CF_KEYS`), the mean deletion and
    insertion curves per method (``curves[name] = {"deletion": Tensor[S+1], "insertion": ...}``;
    empty when the run skipped faithfulness),
    methods that failed (``errors[name] = message``), inputs that could not be read
    (``skipped``: ``(where, reason)``, the others scored) and the run's settings.

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
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable inputs

    @property
    def headline(self) -> str:
        """The score that ranks rows: ``maxboxacc_v2`` (box benchmarks), ``gridpg`` or
        ``cf_spearman`` (counterfactual) or ``shortcut_corr`` (the planted-shortcut benchmark)."""
        first = next(iter(self.scores.values()), {})
        for key in ("cf_spearman", "gridpg", "shortcut_corr"):
            if key in first:
                return key
        return "maxboxacc_v2"

    def ranked(self) -> list[tuple[str, dict]]:
        """Methods and floors sorted by the `headline` score, best first (None last)."""
        headline = self.headline
        return sorted(
            self.scores.items(),
            key=lambda item: (item[1][headline] is None, -(item[1][headline] or 0.0)),
        )

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


# What the leaderboards pass the slow methods, so that a run with every registered method
# fits the benchmark's time target (docs/evaluation.md states these). The box benchmarks'
# images are 64 pixels on a small network; GridPG's are 448- and 672-pixel grids on
# EfficientNet-Lite0, where one pass costs about 100 times more. Occlusion's patch and
# stride are fractions of the image side (see `_method_options`).
BOX_OPTIONS: dict[str, dict] = {
    "integrated_gradients": {"n_steps": 16},
    "smoothgrad": {"n_samples": 10},
    "gradient_shap": {"n_samples": 10},
    "rise": {"n_masks": 256},
    "extremal_perturbation": {"steps": 50},
    "kernel_shap": {"n_samples": 64},
    "lime": {"n_samples": 64},
}
GRID_OPTIONS: dict[str, dict] = {
    "integrated_gradients": {"n_steps": 8},
    "smoothgrad": {"n_samples": 8},
    "gradient_shap": {"n_samples": 8},
    "rise": {"n_masks": 64},
    "extremal_perturbation": {"steps": 16},
    "kernel_shap": {"n_samples": 32, "n_segments": 25},
    "lime": {"n_samples": 32, "n_segments": 25},
    "superpixel_ablation": {"n_segments": 25},
    # one full forward pass per channel of the layer: the 1280 channels of the last layer
    # would take hours, the 40 of blocks.2 (stride 8) fit
    "scorecam": {"layer": "blocks.2"},
    "ablationcam": {"layer": "blocks.2"},
}
# The counterfactual and planted-shortcut benchmarks: 64-pixel scenes like the box
# benchmarks, but no deletion/insertion curves, so the perturbation methods are almost all of
# the run (shortcut explains every scene on four models). Measured CPU per 64-pixel row, one
# thread: extremal_perturbation 190 ms at 50 steps, rise 200 ms at 256 masks, occlusion
# 170 ms at stride 4; every other method 55 ms or less (docs/evaluation.md).
SCENE_OPTIONS: dict[str, dict] = BOX_OPTIONS | {
    "rise": {"n_masks": 128},
    "extremal_perturbation": {"steps": 30},
}
# occlusion's patch and stride as a fraction of the side: (patch, stride) divisors
_OCCLUSION = {"box": (8, 16), "grid": (6, 6), "scene": (8, 8)}


def _method_options(
    name: str,
    side: int,
    method_options: dict[str, dict] | None,
    table: dict[str, dict] | None = None,
) -> dict:
    """Keyword arguments of method ``name`` on images of ``side`` pixels: the leaderboard's
    ``table`` (default `BOX_OPTIONS`; GridPG passes `GRID_OPTIONS`, the counterfactual and
    shortcut benchmarks `SCENE_OPTIONS`), occlusion's patch and stride (side / 8 and side / 16;
    side / 6 for both on GridPG, side / 8 for both on the scene benchmarks), updated by
    ``method_options[name]``. A ``layer`` in ``table`` is kept only for the default model's
    architecture (it names an EfficientNet block); ``method_options`` may name another."""
    table = BOX_OPTIONS if table is None else table
    defaults = dict(table.get(name, {}))
    if name == "occlusion":
        kind = {id(GRID_OPTIONS): "grid", id(SCENE_OPTIONS): "scene"}.get(id(table), "box")
        patch, stride = _OCCLUSION[kind]
        defaults |= {"patch": max(2, side // patch), "stride": max(1, side // stride)}
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
