"""TCAV (Kim et al. 2018, "Interpretability beyond feature attribution: quantitative testing
with concept activation vectors"): does a class's score depend on a human concept?

For a layer ``l`` with activations ``a_l(x)`` (flattened, ``D`` values):

1. the concept activation vector (CAV) ``v`` is the normal of a linear probe separating the
   activations of concept images from those of a random set (`fit_cav`: L2-regularised
   logistic regression, unit length, pointing towards the concept);
2. the directional derivative of class ``k``'s score along it is
   ``S(x) = grad_{a_l} h_k(a_l(x)) . v``, and the TCAV score is the share of the class's
   images with ``S(x) > 0`` (`tcav_score`);
3. significance: the concept's CAV is trained ``runs`` times, each against another random
   set, and ``runs`` random CAVs (a random set against another random set) give the
   scores of concepts that mean nothing. A two-sided t-test (Student's, equal variances)
   compares the two lists of scores; its p-value times the number of layers tested
   (Bonferroni) below ``alpha`` makes the concept significant for that layer.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats
from torch import nn

from convlens.attribution.common import layer_gradient
from convlens.concepts.sets import ImageSet, image_set
from convlens.errors import DataError, LayerError
from convlens.layers import borrowed_model, capture, resolve_layer
from convlens.layers.early_stop import run_until
from convlens.models.devices import placed_on
from convlens.models.loading import LoadedModel, load_model
from convlens.targets import resolve_targets

DEFAULT_RUNS = 10
DEFAULT_ALPHA = 0.05
L2 = 0.01


@dataclass(frozen=True)
class TcavResult:
    """One concept, class and layer: ``score`` the mean TCAV score over the runs (in [0,
    1]), ``p_value`` the Bonferroni-corrected p-value of the t-test against the random
    CAVs, ``significant`` whether it is below ``alpha``; ``scores``/``random_scores`` every
    run's score; ``class_id`` and ``class_name`` the class."""

    concept: str
    class_id: int
    class_name: str
    layer: str
    score: float
    p_value: float
    significant: bool
    scores: list[float] = field(default_factory=list)
    random_scores: list[float] = field(default_factory=list)

    def record(self) -> dict:
        """``{"concept", "class", "layer", "score", "p_value", "significant"}`` (the CLI's
        JSON) with the runs' scores."""
        return {
            "concept": self.concept,
            "class": self.class_name,
            "layer": self.layer,
            "score": self.score,
            "p_value": self.p_value,
            "significant": self.significant,
            "scores": self.scores,
            "random_scores": self.random_scores,
        }


def fit_cav(positive: torch.Tensor, negative: torch.Tensor, l2: float = L2) -> torch.Tensor:
    """The unit normal ``Tensor[D]`` of a logistic regression separating ``positive``
    (``Tensor[n, D]``, label 1) from ``negative`` (``Tensor[m, D]``, label 0): mean
    cross-entropy plus ``l2 / 2 * |w|^2``, minimised by L-BFGS from zero (deterministic).
    Features are scaled by one number (their overall standard deviation) so that ``l2``
    means the same at every layer. Zeros when the sets cannot be told apart."""
    x = torch.cat([positive, negative]).double().flatten(1)
    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).double()
    x = x / x.std().clamp_min(1e-12)
    w = torch.zeros(x.shape[1], dtype=torch.double, requires_grad=True)
    b = torch.zeros((), dtype=torch.double, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [w, b], lr=1, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        value = nn.functional.binary_cross_entropy_with_logits(x @ w + b, y)
        value = value + l2 / 2 * w.pow(2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimiser.step(loss)
    w = w.detach().float()
    norm = w.norm()
    return w / norm if norm > 0 else w


def tcav_score(gradients: torch.Tensor, cav: torch.Tensor) -> float:
    """Share of rows of ``gradients`` (``Tensor[N, D]``: d class score / d activation) whose
    directional derivative along ``cav`` (``Tensor[D]``) is positive, in [0, 1]."""
    return float((gradients.flatten(1).float() @ cav.float() > 0).float().mean())


def t_test(scores: list[float], random_scores: list[float]) -> float:
    """Two-sided p-value of Student's t-test between two lists of TCAV scores; 1 when both
    are constant and equal, 0 when both are constant and differ."""
    a, b = np.asarray(scores, float), np.asarray(random_scores, float)
    if a.std() == 0 and b.std() == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    with warnings.catch_warnings():  # nearly equal scores: scipy warns, the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b).pvalue)


def random_sets(randoms: list[ImageSet], runs: int, seed: int = 0) -> list[ImageSet]:
    """``runs + 1`` random sets: ``randoms`` as they are when there are enough, else one
    set (all of ``randoms`` pooled) split at random (``seed``) into ``runs + 1`` disjoint
    parts of equal size."""
    if len(randoms) >= runs + 1:
        return randoms[: runs + 1]
    images = torch.cat([r.images for r in randoms])
    sources = [s for r in randoms for s in r.sources]
    part = len(images) // (runs + 1)
    if part < 2:
        raise DataError(
            f"{runs} runs need {runs + 1} random sets: pass that many --random folders, or "
            f"at least {2 * (runs + 1)} random images to split ({len(images)} given)"
        )
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).tolist()
    parts = [order[i * part : (i + 1) * part] for i in range(runs + 1)]
    return [ImageSet(images[rows], [sources[j] for j in rows]) for rows in parts]


def layer_activations(
    module: nn.Module, images: torch.Tensor, layer: str, batch_size: int = 32
) -> torch.Tensor:
    """Activations of ``layer`` for ``images``, flattened: ``Tensor[N, D]`` (CPU, float32);
    the forward pass stops at the layer."""
    rows = []
    with borrowed_model(module), torch.no_grad(), capture(module, layer) as cap:
        for start in range(0, len(images), batch_size):
            cap.clear()
            device = next(module.parameters()).device
            run_until(module, [layer], images[start : start + batch_size].to(device))
            rows.append(cap.activation(layer).flatten(1).float().cpu())
    return torch.cat(rows)


def class_gradients(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    layer: str,
    class_id: int,
    batch_size: int = 32,
) -> torch.Tensor:
    """``d score_k / d activation`` of ``layer`` for each image, flattened: ``Tensor[N, D]``
    (CPU, float32); ``score_k`` is class ``class_id``'s logit."""
    module = model.module if isinstance(model, LoadedModel) else model
    rows = []
    with borrowed_model(module):
        device = next(module.parameters()).device
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size].to(device)
            targets = resolve_targets(class_id, len(chunk))
            _, gradient, _ = layer_gradient(module, chunk, targets, layer)
            rows.append(gradient.flatten(1).float().cpu())
    return torch.cat(rows)


def tcav(
    model: nn.Module | LoadedModel | str,
    concept,
    random,
    images,
    target: int | str,
    layers,
    *,
    runs: int = DEFAULT_RUNS,
    alpha: float = DEFAULT_ALPHA,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    seed: int = 0,
    concept_name: str | None = None,
) -> list[TcavResult]:
    """TCAV of ``concept`` for class ``target`` at each of ``layers`` (module docstring).

    Args:
        model: a LoadedModel, a registered name or path, or an nn.Module (borrowed).
        concept: the concept's images (`convlens.concepts.sets.image_set`: a folder,
            ``shapes:N@CLASS``, ``scenes:N@CLASS``, a preprocessed ``Tensor[N, 3, H, W]``).
        random: one random image set or a list of them: ``runs + 1`` sets are used as
            given, fewer are pooled and split into ``runs + 1`` disjoint parts.
        images: the images of the class whose score is tested.
        target: the class (id, or name with a model's labels).
        layers: one layer or a list (names, or ``#N`` rows of ``convlens layers``).
        runs: concept CAVs (each against its own random set) and random CAVs (>= 2; the
            paper's t-test uses many: 10 by default).
        alpha: significance level of each layer after the Bonferroni correction.

    Returns one `TcavResult` per layer, in the order given.

    Example:
        >>> results = tcav("synthetic-shapes", "shapes:40@circle", "shapes:40",
        ...                "shapes:20@circle", "circle", "features.15", runs=3)
        >>> [(r.layer, r.class_name) for r in results]
        [('features.15', 'circle')]
    """
    if runs < 2:
        raise DataError(f"runs must be >= 2 for a t-test (the paper uses 10 or more), got {runs}")
    loaded = load_model(model)
    module = loaded.module
    layer_list = layers if isinstance(layers, (list, tuple)) else [layers]
    names = [resolve_layer(module, layer)[0] for layer in layer_list]
    selector = resolve_targets(target, 1, labels=loaded.labels).positive
    if selector is None or int(selector.ids[0]) < 0:
        raise DataError(f"target {target!r}: TCAV tests one class; pass a class id or name")
    class_id = int(selector.ids[0])
    concept_set = image_set(concept, loaded.preprocess)
    randoms = random if isinstance(random, (list, tuple)) else [random]
    random_list = random_sets([image_set(r, loaded.preprocess) for r in randoms], runs, seed)
    tested = image_set(images, loaded.preprocess)
    name = concept_name or (str(concept) if not isinstance(concept, torch.Tensor) else "concept")
    results = []
    with placed_on(module, device):
        for layer in names:
            acts = layer_activations(module, concept_set.images, layer, batch_size)
            random_acts = [
                layer_activations(module, r.images, layer, batch_size) for r in random_list
            ]
            gradients = class_gradients(module, tested.images, layer, class_id, batch_size)
            if gradients.shape[1] != acts.shape[1]:
                raise LayerError(f"layer {layer!r}: images of other sizes give other shapes")
            scores = [tcav_score(gradients, fit_cav(acts, random_acts[i])) for i in range(runs)]
            baseline = [  # random set i + 1 as a "concept" against random set i
                tcav_score(gradients, fit_cav(random_acts[i + 1], random_acts[i]))
                for i in range(runs)
            ]
            p_value = min(1.0, t_test(scores, baseline) * len(names))
            results.append(
                TcavResult(
                    concept=name,
                    class_id=class_id,
                    class_name=loaded.label(class_id),
                    layer=layer,
                    score=float(np.mean(scores)),
                    p_value=p_value,
                    significant=bool(p_value < alpha) and not math.isnan(p_value),
                    scores=scores,
                    random_scores=baseline,
                )
            )
    return results
