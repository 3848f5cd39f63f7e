"""TCAV (Kim et al. 2018, "Interpretability beyond feature attribution: quantitative testing
with concept activation vectors"): does a class's score depend on a human concept?

For a layer ``l`` with activations ``a_l(x)`` (flattened, ``D`` values):

1. the concept activation vector (CAV) ``v`` is the normal of a linear probe separating the
   activations of concept images from those of a random set (`fit_cav`: L2-regularised
   logistic regression, unit length, pointing towards the concept);
2. the directional derivative of class ``k``'s score along it is
   ``S(x) = grad_{a_l} h_k(a_l(x)) . v``; the TCAV score is the share of the class's
   images with ``S(x) > 0`` (`tcav_score`), and the mean cosine is the mean of
   ``S(x) / |grad_{a_l} h_k(a_l(x))|`` (`mean_cosine`: how strongly, not only whether,
   the score grows along ``v``);
3. the concept's CAV is trained ``runs`` times, each against another random set
   ``R_0 .. R_{runs-1}``; every random set ``R_j`` (``runs + 1`` of them) is also trained,
   as a "null concept" that means nothing, against ``runs`` of the others.

Three significance tests (`TESTS`), all computed, one chosen by ``test``; the p-value is
multiplied by the number of layers tested (Bonferroni):

- ``"cosine"`` (the default) and ``"score"``: the concept is ONE sample of images, so under
  the null hypothesis (the concept images are just more images of the random distribution)
  its statistic (mean over its runs) is one more draw from the distribution of the null
  concepts' statistics. The Crawford and Howell (1998) t-test compares one value with a
  small control sample: ``t = (x - mean) / (sd * sqrt((n + 1) / n))`` with ``n - 1``
  degrees of freedom, two-sided. The null concepts are exchangeable with the concept when
  the concept set has the random sets' size.
- ``"runs"``: the paper's test. A Student's t-test between the concept's ``runs`` scores
  and ``runs`` random-vs-random scores (``R_{i+1}`` against ``R_i``). It treats the
  concept's runs as independent draws, but they share one concept sample, so it finds
  "significant" random concepts far more often than ``alpha`` (docs/concepts.md).
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
DEFAULT_TEST = "cosine"
TESTS = ("cosine", "score", "runs")
L2 = 0.01


@dataclass(frozen=True)
class TcavResult:
    """One concept, class and layer: ``score`` the mean TCAV score over the runs (in [0,
    1]), ``cosine`` the mean cosine (in [-1, 1]); ``p_value`` the Bonferroni-corrected
    p-value of ``test`` and ``significant`` whether it is below ``alpha``; ``p_values``
    every test's (`TESTS`); ``scores``/``cosines`` every run's, ``random_scores`` the
    random-vs-random scores of the ``"runs"`` test, ``null_scores``/``null_cosines`` each
    null concept's mean; ``class_id`` and ``class_name`` the class."""

    concept: str
    class_id: int
    class_name: str
    layer: str
    score: float
    p_value: float
    significant: bool
    test: str = DEFAULT_TEST
    cosine: float = 0.0
    p_values: dict[str, float] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)
    cosines: list[float] = field(default_factory=list)
    random_scores: list[float] = field(default_factory=list)
    null_scores: list[float] = field(default_factory=list)
    null_cosines: list[float] = field(default_factory=list)

    def record(self) -> dict:
        """``{"concept", "class", "layer", "score", "p_value", "significant"}`` (the CLI's
        JSON) with the test, the mean cosine, every test's p-value and the runs' values."""
        return {
            "concept": self.concept,
            "class": self.class_name,
            "layer": self.layer,
            "score": self.score,
            "p_value": self.p_value,
            "significant": self.significant,
            "test": self.test,
            "cosine": self.cosine,
            "p_values": self.p_values,
            "scores": self.scores,
            "cosines": self.cosines,
            "random_scores": self.random_scores,
            "null_scores": self.null_scores,
            "null_cosines": self.null_cosines,
        }


def fit_cav(positive: torch.Tensor, negative: torch.Tensor, l2: float = L2) -> torch.Tensor:
    """The unit normal ``Tensor[D]`` of a logistic regression separating ``positive``
    (``Tensor[n, D]``, label 1) from ``negative`` (``Tensor[m, D]``, label 0): mean
    cross-entropy plus ``l2 / 2 * |w|^2`` (the bias not penalised), minimised exactly by
    Newton's method with a backtracking line search (deterministic). Features are scaled by
    one number (their overall standard deviation) so that ``l2`` means the same at every
    layer. Zeros when the sets cannot be told apart.

    With more features than examples (most convolutional layers) the L2 term puts the
    optimum in the span of the examples (representer theorem): the problem is solved in an
    orthonormal basis of that span (from the eigenvectors of ``X X^T``), over at most
    ``n + m`` numbers instead of ``D``, and mapped back; the minimum is the same."""
    x = torch.cat([positive, negative]).double().flatten(1)
    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).double()
    x = x / x.std().clamp_min(1e-12)
    design, basis = _row_space(x)
    w = _newton_logistic(design, y, l2)
    if basis is not None:
        w = basis @ w
    w = w.float()
    norm = w.norm()
    return w / norm if norm > 1e-12 else torch.zeros_like(w)


def _row_space(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x V, V)`` with ``V`` ``Tensor[D, r]`` an orthonormal basis of the rows of ``x``
    (``Tensor[N, D]``) when ``D > N``; ``(x, None)`` otherwise."""
    if x.shape[1] <= x.shape[0]:
        return x, None
    eigenvalues, vectors = torch.linalg.eigh(x @ x.T)
    kept = eigenvalues > eigenvalues.max().clamp_min(1e-300) * 1e-12
    sigma = eigenvalues[kept].sqrt()
    return vectors[:, kept] * sigma, (x.T @ vectors[:, kept]) / sigma


def _newton_logistic(design: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    """Weights ``Tensor[d]`` minimising ``mean BCE(design @ w + b, y) + l2 / 2 * |w|^2``
    over ``w`` and an unpenalised bias ``b`` (Newton steps, halved until the objective
    falls enough; stops when the Newton decrement ``g . H^-1 g`` is below 1e-14, where
    rounding in the objective would stop the line search)."""
    count, width = design.shape
    a = torch.cat([design, torch.ones(count, 1, dtype=design.dtype)], 1)
    penalty = torch.full((width + 1,), l2, dtype=design.dtype)
    penalty[-1] = 0.0

    def objective(theta: torch.Tensor) -> torch.Tensor:
        z = a @ theta
        return (nn.functional.softplus(z) - y * z).mean() + 0.5 * (penalty * theta) @ theta

    theta = torch.zeros(width + 1, dtype=design.dtype)
    for _ in range(100):
        p = torch.sigmoid(a @ theta)
        gradient = a.T @ (p - y) / count + penalty * theta
        hessian = (a.T * (p * (1 - p))) @ a / count + torch.diag(penalty + 1e-12)
        step = torch.linalg.solve(hessian, gradient)
        if gradient @ step < 1e-14:
            break
        start, rate = objective(theta), 1.0
        while objective(theta - rate * step) > start - 1e-4 * rate * (gradient @ step):
            rate /= 2
            if rate < 1e-12:
                break
        theta = theta - rate * step
    return theta[:width]


def tcav_score(gradients: torch.Tensor, cav: torch.Tensor) -> float:
    """Share of rows of ``gradients`` (``Tensor[N, D]``: d class score / d activation) whose
    directional derivative along ``cav`` (``Tensor[D]``) is positive, in [0, 1]."""
    return float((gradients.flatten(1).float() @ cav.float() > 0).float().mean())


def mean_cosine(gradients: torch.Tensor, cav: torch.Tensor) -> float:
    """Mean over rows of ``gradients`` (``Tensor[N, D]``) of the cosine between the row and
    the unit vector ``cav`` (``Tensor[D]``), in [-1, 1]; a zero row counts as 0."""
    rows = gradients.flatten(1).float()
    norms = rows.norm(dim=1).clamp_min(1e-30)
    return float((rows @ cav.float() / norms).mean())


def t_test(scores: list[float], random_scores: list[float]) -> float:
    """Two-sided p-value of Student's t-test between two lists of TCAV scores; 1 when both
    are constant and equal, 0 when both are constant and differ."""
    a, b = np.asarray(scores, float), np.asarray(random_scores, float)
    if a.std() == 0 and b.std() == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    with warnings.catch_warnings():  # nearly equal scores: scipy warns, the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b).pvalue)


def crawford_howell(value: float, controls: list[float]) -> float:
    """Two-sided p-value of Crawford and Howell's (1998) t-test of one ``value`` against a
    small control sample (``n >= 2`` values): ``t = (value - mean) / (sd * sqrt((n + 1) /
    n))``, ``sd`` with ``n - 1`` in the denominator, ``n - 1`` degrees of freedom. 1 when
    the controls are constant and equal to ``value``, 0 when constant and different."""
    c = np.asarray(controls, float)
    n = len(c)
    sd = c.std(ddof=1)
    if sd == 0:
        return 1.0 if value == c.mean() else 0.0
    t = (value - c.mean()) / (sd * math.sqrt((n + 1) / n))
    return float(2 * stats.t.sf(abs(t), n - 1))


def null_concept_runs(
    random_acts: list[torch.Tensor], gradients: torch.Tensor, runs: int
) -> dict[tuple[int, int], tuple[float, float]]:
    """``{(j, i): (TCAV score, mean cosine)}`` of random set ``j`` as a concept against
    random set ``i``, for every ``j != i`` among the ``runs + 1`` sets: ``runs`` runs per
    null concept, and the ``"runs"`` test's random-vs-random pairs ``(i + 1, i)``."""
    found = {}
    for j, concept in enumerate(random_acts[: runs + 1]):
        for i, negative in enumerate(random_acts[: runs + 1]):
            if i != j:
                cav = fit_cav(concept, negative)
                found[j, i] = (tcav_score(gradients, cav), mean_cosine(gradients, cav))
    return found


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
    test: str = DEFAULT_TEST,
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
            given, fewer are pooled and split into ``runs + 1`` disjoint parts. Give the
            random sets the concept set's size: they are the null concepts.
        images: the images of the class whose score is tested.
        target: the class (id, or name with a model's labels).
        layers: one layer or a list (names, or ``#N`` rows of ``convlens layers``).
        runs: concept CAVs, each against its own random set (>= 2; 10 by default); the
            ``runs + 1`` random sets each serve as a null concept.
        alpha: significance level of each layer after the Bonferroni correction.
        test: ``"cosine"``, ``"score"`` or ``"runs"`` (`TESTS`, module docstring); every
            test's p-value is in the result's ``p_values``.

    Returns one `TcavResult` per layer, in the order given.

    Example:
        >>> results = tcav("synthetic-shapes", "shapes:40@circle", "shapes:40",
        ...                "shapes:20@circle", "circle", "features.15", runs=3)
        >>> [(r.layer, r.class_name, r.test) for r in results]
        [('features.15', 'circle', 'cosine')]
    """
    if runs < 2:
        raise DataError(f"runs must be >= 2 for a t-test (the paper uses 10 or more), got {runs}")
    if test not in TESTS:
        raise DataError(f"unknown TCAV test {test!r}: choose one of {', '.join(TESTS)}")
    if not 0.0 < alpha < 1.0:
        raise DataError(f"alpha is a significance level in (0, 1) (say 0.05), got {alpha}")
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
            result = tcav_statistics(acts, random_acts, gradients, runs, len(names))
            p_value = result["p_values"][test]
            results.append(
                TcavResult(
                    concept=name,
                    class_id=class_id,
                    class_name=loaded.label(class_id),
                    layer=layer,
                    p_value=p_value,
                    significant=bool(p_value < alpha) and not math.isnan(p_value),
                    test=test,
                    **result,
                )
            )
    return results


def tcav_statistics(
    acts: torch.Tensor,
    random_acts: list[torch.Tensor],
    gradients: torch.Tensor,
    runs: int,
    layers: int = 1,
    null: dict[tuple[int, int], tuple[float, float]] | None = None,
) -> dict:
    """The `TcavResult` fields of one layer but names, the chosen test and significance,
    from activations ``Tensor[N, D]`` of the concept, of the ``runs + 1`` random sets
    (`random_sets`) and the class gradients ``Tensor[M, D]``: the concept's runs against
    ``random_acts[:runs]``, the null concepts' runs (``null``: `null_concept_runs` of the
    same sets, computed when None), and each test's p-value times ``layers`` (capped at 1).
    """
    concept_runs = []
    for negative in random_acts[:runs]:
        cav = fit_cav(acts, negative)
        concept_runs.append((tcav_score(gradients, cav), mean_cosine(gradients, cav)))
    scores = [score for score, _ in concept_runs]
    cosines = [cosine for _, cosine in concept_runs]
    null = null if null is not None else null_concept_runs(random_acts, gradients, runs)
    null_means = [
        np.mean([null[j, i] for i in range(runs + 1) if i != j], axis=0) for j in range(runs + 1)
    ]
    null_scores = [float(m[0]) for m in null_means]
    null_cosines = [float(m[1]) for m in null_means]
    random_scores = [null[i + 1, i][0] for i in range(runs)]
    raw = {
        "cosine": crawford_howell(float(np.mean(cosines)), null_cosines),
        "score": crawford_howell(float(np.mean(scores)), null_scores),
        "runs": t_test(scores, random_scores),
    }
    return {
        "score": float(np.mean(scores)),
        "cosine": float(np.mean(cosines)),
        "p_values": {key: min(1.0, value * layers) for key, value in raw.items()},
        "scores": scores,
        "cosines": cosines,
        "random_scores": random_scores,
        "null_scores": null_scores,
        "null_cosines": null_cosines,
    }
