"""The planted-shortcut benchmark: does a map put mass on the cue when, and only when, the
model uses it?

Data: scenes ``0 .. limit-1`` of ``ShortcutScenes(seed=1, rate=0)`` (`convlens.data.shortcuts`:
held out, the cue independent of the class, about half of the scenes carry it). Models: the
shipped ``shortcut-R`` models (`convlens.models.shortcuts`, rates 0, 0.5, 0.9, 1.0), whose
weights files store their measured ``reliance`` on the cue. Every row explains the shortcut
class ("triangle") of one scene on one model, whether or not the scene holds a triangle.

Per scene ``i`` and model ``m``:

- the cue's counterfactual effect ``e_mi = logit_c(image_i) - logit_c(image_without_cue_i)``
  (exact: the two images differ only in the cue's pixels; 0 for a scene without the cue,
  where the two are the same image);
- the map's cue share ``s_mi = sum_{p in cue window} max(0, A_p) / sum_p max(0, A_p)`` (0 for a
  map with no positive mass), on the cue's window (where it is painted, or would be).

Scores (JSON keys):

- ``shortcut_corr``: Spearman rank correlation (ties get their average rank) of ``s`` and
  ``e`` across the scenes, on the rate-1.0 model (the headline). A map scores high when its
  mass on the cue's window follows what the cue does to the logit: high where the cue is
  painted and used, low where it is absent. Ranks, because logit units are arbitrary and a
  few large effects should not decide the score.
- ``shortcut_corr_cued``: the same over the scenes that carry the cue only (does the share
  track the SIZE of the effect?); None for a map whose share does not vary there (a map equal
  to the cue mask).
- ``shortcut_slope``: least-squares slope of the mean cue share over the scenes carrying the
  cue against the models' stored reliance, across the models. A map that ignores the model
  (every floor) has slope 0; a faithful map moves mass onto the cue as reliance grows.
- ``cue_share_R``: that mean cue share on model ``shortcut-R``; ``ms_per_image``.

Correlations are None where either side is constant (`rank_correlation`). The floors of
`convlens.evaluate.floors` are scored the same way (their maps depend on the pixels only,
not on the model).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from scipy.stats import rankdata

from convlens.data.shortcuts import SHORTCUT_CLASS, ShortcutBatch, ShortcutScenes
from convlens.data.synthetic import TEST_SEED
from convlens.errors import ConvlensError, DataError
from convlens.evaluate.ground_truth import GroundTruth
from convlens.evaluate.leaderboard import (
    SCENE_OPTIONS,
    Leaderboard,
    _method_options,
    explain_all,
)
from convlens.models.loading import LoadedModel
from convlens.models.shortcuts import SHORTCUT_RATES, load_shortcut_model, shortcut_record
from convlens.train.shortcuts import cue_effects

DEFAULT_LIMIT = 60
HEADLINE_RATE = 1.0


@dataclass(frozen=True)
class ShortcutModel:
    """One model of the benchmark: its ``rate``, the `LoadedModel`, its stored ``reliance``,
    and on the benchmark's scenes the cue's ``effects`` Tensor[N] (0 where no cue) and the
    ``logits`` Tensor[N, C] of the images as shown."""

    rate: float
    model: LoadedModel
    reliance: float
    effects: torch.Tensor
    logits: torch.Tensor


def shortcut_models(
    batch: ShortcutBatch, rates: Sequence[float] = SHORTCUT_RATES
) -> list[ShortcutModel]:
    """The shipped models of ``rates`` with their stored reliance and their cue effects on
    ``batch``."""
    models = []
    for rate in rates:
        loaded = load_shortcut_model(rate)
        effects, logits = cue_effects(loaded.module, loaded.preprocess, batch)
        reliance = float(shortcut_record(rate)["reliance"])
        effects = torch.where(batch.has_cue, effects, torch.zeros_like(effects))
        models.append(ShortcutModel(float(rate), loaded, reliance, effects, logits))
    return models


def cue_share(maps: torch.Tensor, cue_masks: torch.Tensor) -> torch.Tensor:
    """``Tensor[N]``: share of each map's positive mass inside its cue window (maps
    ``Tensor[N, H, W]``, ``cue_masks`` bool Tensor[N, H, W]); 0 for a map with none."""
    positive = maps.float().clamp(min=0).flatten(1)
    total = positive.sum(1)
    inside = (positive * cue_masks.flatten(1)).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=1e-30), torch.zeros_like(total))


def pearson(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Pearson correlation of two ``Tensor[N]``; None when either is constant or N < 2."""
    x, y = x.double(), y.double()
    if len(x) < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    if _flat(dx, x) or _flat(dy, y):
        return None
    return float((dx * dy).sum() / (dx.norm() * dy.norm()))


def _flat(deviations: torch.Tensor, values: torch.Tensor) -> bool:
    """Is ``values`` constant up to float64 rounding?"""
    return float(deviations.abs().max()) <= 1e-12 * (1.0 + float(values.abs().max()))


def rank_correlation(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Spearman rank correlation of two ``Tensor[N]`` (ties get their average rank): the
    `pearson` correlation of the ranks; None when either is constant or N < 2."""
    rx = torch.from_numpy(rankdata(x.double().numpy()))
    ry = torch.from_numpy(rankdata(y.double().numpy()))
    return pearson(rx, ry)


def slope(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Least-squares slope of ``y`` on ``x``; None when ``x`` does not vary."""
    xs, ys = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    dx = xs - xs.mean()
    if float(dx.pow(2).sum()) == 0.0:
        return None
    return float((dx * (ys - ys.mean())).sum() / dx.pow(2).sum())


def shortcut_scores(
    maps: dict[float, torch.Tensor],
    batch: ShortcutBatch,
    models: Sequence[ShortcutModel],
    headline_rate: float = HEADLINE_RATE,
) -> dict[str, float | None]:
    """The scores of the module docstring for one method's maps ``maps[rate]``
    ``Tensor[N, H, W]`` (explaining the shortcut class of each scene of ``batch`` on the
    model of that rate)."""
    if headline_rate not in maps:
        raise DataError(f"the shortcut scores need maps of the rate-{headline_rate} model")
    by_rate = {m.rate: m for m in models}
    cued = batch.has_cue
    shares = {rate: cue_share(m, batch.cue_masks) for rate, m in maps.items()}
    head = by_rate[headline_rate]
    means = {rate: float(shares[rate][cued].mean()) for rate in maps}
    rates = sorted(maps)
    return {
        "shortcut_corr": rank_correlation(shares[headline_rate], head.effects),
        "shortcut_corr_cued": rank_correlation(shares[headline_rate][cued], head.effects[cued]),
        "shortcut_slope": slope([by_rate[r].reliance for r in rates], [means[r] for r in rates]),
    } | {f"cue_share_{rate:.1f}": means[rate] for rate in rates}


def evaluate_shortcut(
    methods: Sequence[str] | None = None,
    limit: int = DEFAULT_LIMIT,
    *,
    seed: int = TEST_SEED,
    rates: Sequence[float] = SHORTCUT_RATES,
    batch_size: int = 32,
    method_options: dict[str, dict] | None = None,
    floors: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Leaderboard:
    """Score ``methods`` (default: every registered one) and the floors on the planted
    shortcut: scenes ``0 .. limit-1`` of ``ShortcutScenes(seed=seed, rate=0)`` explained on
    every shipped shortcut model of ``rates`` (must include 1.0). Returns a `Leaderboard`
    whose scores have the keys of the module docstring; ``accuracy`` is the share of scenes
    where the rate-1.0 model's triangle decision (logit > 0) is right on the image as shown."""
    from convlens.attribution import list_methods
    from convlens.evaluate.leaderboard import _check_methods

    if HEADLINE_RATE not in [float(r) for r in rates]:
        raise DataError("the shortcut benchmark needs the rate-1.0 model among its rates")
    if limit < 2:
        raise DataError(f"the shortcut benchmark needs at least 2 scenes, got --limit {limit}")
    names = [m.name for m in list_methods()] if methods is None else list(methods)
    _check_methods(names)
    batch = ShortcutScenes(limit, seed=seed, rate=0.0).batch()
    models = shortcut_models(batch, rates)
    head = next(m for m in models if m.rate == HEADLINE_RATE)
    present = batch.labels[:, SHORTCUT_CLASS] > 0
    board = Leaderboard(
        model=", ".join(m.model.name for m in models),
        images=len(batch),
        accuracy=float(((head.logits[:, SHORTCUT_CLASS] > 0) == present).float().mean()),
        settings={
            "rows": "held-out scenes",
            "cue_scenes": int(batch.has_cue.sum()),
            "reliance": {f"{m.rate:.1f}": m.reliance for m in models},
            "seed": seed,
            "batch_size": batch_size,
        },
    )
    display = batch.display()
    targets = torch.full((len(batch),), SHORTCUT_CLASS)
    side = display.shape[1]
    for name in names:
        try:
            maps, seconds = {}, 0.0
            for m in models:
                truth = GroundTruth(
                    m.model.preprocess.normalize(display), display, targets, [], None, []
                )
                options = _method_options(name, side, method_options, SCENE_OPTIONS)
                maps[m.rate], spent = explain_all(m.model, truth, name, options, batch_size)
                seconds += spent
        except ConvlensError as error:
            board.errors[name] = str(error)
            if progress is not None:
                progress(f"{name}: failed: {error}")
            continue
        board.scores[name] = shortcut_scores(maps, batch, models) | {
            "ms_per_image": 1000.0 * seconds / (len(batch) * len(models))
        }
        _report(progress, name, board.scores[name])
    if floors:
        _score_floors(board, batch, models, progress)
    return board


def _score_floors(board: Leaderboard, batch: ShortcutBatch, models, progress) -> None:
    """The floors' maps depend on the pixels only: the same maps for every model."""
    from convlens.evaluate.floors import FLOORS, floor_maps

    for name in FLOORS:
        start = time.perf_counter()
        maps = floor_maps(name, batch.images)
        seconds = time.perf_counter() - start
        board.scores[name] = shortcut_scores({m.rate: maps for m in models}, batch, models) | {
            "ms_per_image": 1000.0 * seconds / len(batch)
        }
        _report(progress, name, board.scores[name])


def _report(progress, name: str, scores: dict) -> None:
    if progress is not None:
        corr, slope_ = scores["shortcut_corr"], scores["shortcut_slope"]
        progress(
            f"{name}: shortcut_corr {'-' if corr is None else f'{corr:.3f}'}, "
            f"shortcut_slope {'-' if slope_ is None else f'{slope_:+.4f}'}"
        )


__all__ = [
    "DEFAULT_LIMIT",
    "ShortcutModel",
    "cue_share",
    "evaluate_shortcut",
    "pearson",
    "rank_correlation",
    "shortcut_models",
    "shortcut_scores",
    "slope",
]
