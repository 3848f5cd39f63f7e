"""Counterfactual ground truth: what the model relies on, measured by leaving elements out.

The multi-object scenes are rendered from code (`convlens.data.scenes`), so every element of
a scene -- a background mosaic region, a clutter ellipse, an object, the occluding bar -- can
be left out by re-rendering the scene without it: what was under it shows, every other pixel
(noise included) is equal, and the image stays in the training distribution (it is a scene
the generator could have drawn). The model's reliance on each element is then known
exactly, not guessed from an annotation:

    effect(e, c) = logit_c(scene) - logit_c(scene without e)

for the class ``c`` explained on the row. A faithful map puts its positive mass on the
elements with the largest effects. Per row (one explained class of one scene), each
element's mass is ``sum_{p in V_e} max(0, m_p)`` over the pixels ``V_e`` where the element
is on top in the full scene (elements with no visible pixel change nothing and are left
out), and

- ``cf_spearman``: Spearman's rank correlation (average ranks for ties) between the masses
  and the effects of the row's elements, the mean over rows. A map whose masses are all
  equal (an all-zero map, say) ranks nothing: that row scores 0. A row whose effects are all
  equal has no ranking to match and is left out (``settings["constant_effects"]`` counts
  them).
- ``cf_top1``: whether the element holding the most mass is the one with the largest
  effect, the mean over rows; with a tie for the most mass, the share of the tied elements
  that have the largest effect (the expected hit of breaking the tie at random).

The model-free floors of `convlens.evaluate.floors` are scored the same way and listed as
rows; a method's margin is its score minus the best floor's. A floor's masses follow the
elements' visible areas (and the centre bias), so a floor scores what area or position
alone predicts about the model's reliance: that is the bar to clear.

Rows of `counterfactual_set`: every present class of every scene (one row per (scene,
class) pair, classes in increasing id order, as the ``shapes-multi`` benchmark), its class
logit explained. The benchmark (``convlens evaluate --benchmark counterfactual``) uses the
first scenes of the held-out stream (seed 1) and the shipped ``synthetic-scenes`` model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from convlens.errors import ConvlensError, DataError, MetricError
from convlens.evaluate.ground_truth import GroundTruth
from convlens.models.loading import LoadedModel

CF_KEYS = ("cf_spearman", "cf_top1", "ms_per_image")


@dataclass(frozen=True)
class CounterfactualSet:
    """Rows ready for a model, one per explained (scene, class) pair:

    ``tensor`` Tensor[R, 3, H, W] the full scenes as model inputs; ``display``
    uint8[R, H, W, 3] their pixels; ``labels`` LongTensor[R] the explained class;
    ``regions`` R bool Tensors[E_r, H, W], the visible pixels of each counted element of the
    row's scene (bottom first; elements with no visible pixel are not counted);
    ``effects`` R float Tensors[E_r], ``logit(scene) - logit(scene without element)`` of the
    row's class; ``kinds`` R tuples of E_r element kinds (``"target"`` for the explained
    class's own object, else the `SceneElement.kind`); ``elements`` R LongTensors[E_r], the
    counted elements' indices in `convlens.data.scenes.scene_elements`; ``detected``
    bool Tensor[R] whether the model finds the class in the full scene (logit > 0);
    ``sources`` ``"scene:SEED:INDEX:CLASS"`` per row."""

    tensor: torch.Tensor
    display: np.ndarray
    labels: torch.Tensor
    regions: list[torch.Tensor]
    effects: list[torch.Tensor]
    kinds: list[tuple[str, ...]]
    elements: list[torch.Tensor]
    detected: torch.Tensor
    sources: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def ground_truth(self) -> GroundTruth:
        """The rows as a `GroundTruth` (no boxes or masks) for `explain_all`."""
        return GroundTruth(self.tensor, self.display, self.labels, [], None, self.sources)


def _pixels(scene_image: torch.Tensor) -> np.ndarray:
    """A scene's ``image`` Tensor[3, H, W] (multiples of 1/255) as exact uint8[H, W, 3]."""
    return (scene_image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@torch.no_grad()
def _logits(model: LoadedModel, display: np.ndarray, batch_size: int) -> torch.Tensor:
    """``Tensor[V, C]`` float32 on the CPU: the model's outputs on ``display`` uint8[V, H, W, 3]."""
    from convlens.layers.borrow import borrowed_model
    from convlens.models.devices import model_input

    outputs = []
    with borrowed_model(model.module):
        for start in range(0, len(display), batch_size):
            inputs = model.preprocess.normalize(display[start : start + batch_size])
            outputs.append(model.module(model_input(model.module, inputs)).float().cpu())
    return torch.cat(outputs)


def element_effects(
    model: LoadedModel,
    seed: int,
    indices: Sequence[int],
    size: int,
    batch_size: int = 64,
) -> list[torch.Tensor]:
    """``effects[i]`` Tensor[E_i, C]: for scene ``indices[i]`` of stream ``seed`` (``size``
    pixels) and each of its E_i elements (`convlens.data.scenes.scene_elements` order),
    ``logits(scene) - logits(scene without that element)`` for every class ``C`` of the
    model. All scenes' variants go through the model together in chunks of ``batch_size``
    (results do not depend on it beyond float rounding)."""
    return [effects for *_, effects in _scene_effects(model, seed, indices, size, batch_size)]


def _scene_effects(model, seed, indices, size, batch_size):
    """Per scene ``(elements, full scene, its logits Tensor[C], effects Tensor[E, C])`` (see
    `element_effects`)."""
    from convlens.data.scenes import leave_one_out

    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    drawn, displays = [], []
    for index in indices:
        elements, variants = leave_one_out(seed, index, size)
        displays += [_pixels(v.image) for v in variants]
        drawn.append((elements, variants[0]))
    if not displays:
        return []
    logits = _logits(model, np.stack(displays), batch_size)
    result, start = [], 0
    for elements, scene in drawn:
        block = logits[start : start + len(elements) + 1]
        result.append((elements, scene, block[0], block[0] - block[1:]))
        start += len(elements) + 1
    return result


def counterfactual_set(
    model: LoadedModel,
    count: int,
    seed: int = 1,
    start: int = 0,
    batch_size: int = 64,
) -> CounterfactualSet:
    """Scenes ``start .. start + count - 1`` of stream ``seed`` at the model's input size,
    one row per present class (see the module docstring), with each element's effect on the
    row's class logit."""
    from convlens.data.scenes import MIN_SIZE

    if count < 1:
        raise DataError(f"limit must be at least 1 scene, got {count}")
    height, width = model.preprocess.height_width
    if height != width or height < MIN_SIZE:
        raise DataError(
            f"the scenes are square and at least {MIN_SIZE} px but {model.name} expects "
            f"{height}x{width} inputs; use a model with square inputs (synthetic-scenes)"
        )
    indices = range(start, start + count)
    displays, labels, regions, effects, kinds, elements, sources, detected = ([] for _ in range(8))
    for index, (drawn, scene, logits, scene_effects) in zip(
        indices, _scene_effects(model, seed, indices, height, batch_size), strict=True
    ):
        counted = [e for e, element in enumerate(drawn) if element.visible.any()]
        visible = torch.stack([drawn[e].visible for e in counted])
        display = _pixels(scene.image)
        for k in sorted(scene.classes.tolist()):
            displays.append(display)
            labels.append(k)
            detected.append(bool(logits[k] > 0))
            regions.append(visible)
            effects.append(scene_effects[counted, k])
            kinds.append(
                tuple("target" if drawn[e].class_id == k else drawn[e].kind for e in counted)
            )
            elements.append(torch.tensor(counted))
            sources.append(f"scene:{seed}:{index}:{k}")
    display = np.stack(displays)
    labels = torch.tensor(labels)
    return CounterfactualSet(
        tensor=model.preprocess.normalize(display),
        display=display,
        labels=labels,
        regions=regions,
        effects=effects,
        kinds=kinds,
        elements=elements,
        detected=torch.tensor(detected),
        sources=sources,
    )


def element_mass(maps: torch.Tensor, cf: CounterfactualSet) -> list[torch.Tensor]:
    """Per row ``Tensor[E_r]`` float64: the positive mass ``sum max(0, m)`` of the row's map
    (``maps`` Tensor[R, H, W], input resolution) on each counted element's visible pixels."""
    from convlens.localize.masks import check_maps

    maps = check_maps(maps, "maps").detach().cpu().double()
    if maps.shape[0] != len(cf) or maps.shape[-2:] != cf.tensor.shape[-2:]:
        raise MetricError(
            f"maps {tuple(maps.shape)} do not match the {len(cf)} rows of "
            f"{tuple(cf.tensor.shape[-2:])} pixels; give one map per row at input resolution"
        )
    positive = maps.clamp(min=0)
    return [
        (regions.double() * positive[r]).flatten(1).sum(1) for r, regions in enumerate(cf.regions)
    ]


def cf_row_scores(maps: torch.Tensor, cf: CounterfactualSet) -> tuple[torch.Tensor, torch.Tensor]:
    """``(spearman, top1)`` Tensors[R] of the rows (module docstring); ``spearman`` is NaN on
    a row whose effects are all equal (no ranking to match)."""
    from convlens.evaluate.sanity import spearman

    rho, top1 = [], []
    for mass, effect in zip(element_mass(maps, cf), cf.effects, strict=True):
        effect = effect.double()
        if bool((effect == effect[0]).all()):
            rho.append(float("nan"))
        elif bool((mass == mass[0]).all()):
            rho.append(0.0)
        else:
            rho.append(float(spearman(mass[None, None], effect[None, None])[0]))
        most = mass == mass.max()
        top1.append(float((most & (effect == effect.max())).sum() / most.sum()))
    return torch.tensor(rho, dtype=torch.float64), torch.tensor(top1, dtype=torch.float64)


def cf_scores(maps: torch.Tensor, cf: CounterfactualSet) -> dict[str, float]:
    """``cf_spearman`` and ``cf_top1``: the means over the rows (``cf_spearman`` over the rows
    whose effects are not all equal) of `cf_row_scores`."""
    rho, top1 = cf_row_scores(maps, cf)
    defined = ~torch.isnan(rho)
    mean_rho = float(rho[defined].mean()) if bool(defined.any()) else float("nan")
    return {"cf_spearman": mean_rho, "cf_top1": float(top1.mean())}


def evaluate_counterfactual(
    model: LoadedModel,
    methods: Sequence[str],
    cf: CounterfactualSet,
    *,
    batch_size: int = 32,
    method_options: dict[str, dict] | None = None,
    floors: bool = True,
    progress: Callable[[str], None] | None = None,
):
    """Explain every row's class with each method (and score the floors); returns a
    `convlens.evaluate.leaderboard.Leaderboard` whose scores have `CF_KEYS`. ``accuracy``:
    the share of rows whose class the model detects (logit > 0, sigmoid > 0.5). A method
    that raises a convlens error is recorded in ``errors`` and the others still run."""
    from convlens.evaluate.floors import FLOORS, floor_maps
    from convlens.evaluate.leaderboard import (
        SCENE_OPTIONS,
        Leaderboard,
        _method_options,
        explain_all,
    )

    truth = cf.ground_truth()
    side = cf.tensor.shape[-1]
    effects = torch.cat(cf.effects)
    constant = sum(bool((e == e[0]).all()) for e in cf.effects)
    board = Leaderboard(
        model=model.name,
        images=len(cf),
        accuracy=float(cf.detected.float().mean()),
        settings={
            "rows": "image-class pairs",
            "scenes": len({source.rsplit(":", 1)[0] for source in cf.sources}),
            "elements_per_row": float(np.mean([len(e) for e in cf.effects])),
            "constant_effects": constant,
            "mean_effect": {
                kind: float(effects[_kind_mask(cf, kind)].mean())
                for kind in ("target", "object", "clutter", "background", "occluder")
                if bool(_kind_mask(cf, kind).any())
            },
            "batch_size": batch_size,
        },
    )
    for name in methods:
        try:
            options = _method_options(name, side, method_options, SCENE_OPTIONS)
            maps, seconds = explain_all(model, truth, name, options, batch_size)
        except ConvlensError as error:
            board.errors[name] = str(error)
            if progress is not None:
                progress(f"{name}: failed: {error}")
            continue
        _record(board, name, cf_scores(maps, cf), seconds, progress)
    if floors:
        pixels = torch.from_numpy(cf.display).permute(0, 3, 1, 2).float() / 255
        for name in FLOORS:
            began = time.perf_counter()
            maps = floor_maps(name, pixels)
            _record(board, name, cf_scores(maps, cf), time.perf_counter() - began, progress)
    return board


def _kind_mask(cf: CounterfactualSet, kind: str) -> torch.Tensor:
    return torch.tensor([k == kind for kinds in cf.kinds for k in kinds], dtype=torch.bool)


def _record(board, name: str, scores: dict, seconds: float, progress) -> None:
    board.scores[name] = scores | {"ms_per_image": 1000.0 * seconds / board.images}
    if progress is not None:
        progress(
            f"{name}: cf_spearman {scores['cf_spearman']:+.3f}, cf_top1 {scores['cf_top1']:.3f}"
        )


__all__ = [
    "CF_KEYS",
    "CounterfactualSet",
    "cf_row_scores",
    "cf_scores",
    "counterfactual_set",
    "element_effects",
    "element_mass",
    "evaluate_counterfactual",
]
