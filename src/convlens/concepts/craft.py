"""CRAFT (Fel et al. 2023, "CRAFT: Concept Recursive Activation FacTorization for
Explainability"): which concepts does a layer hold for a class, and how much does the
class's score depend on each?

For images of one class and a layer ``l`` with non-negative (post-ReLU) activations:

1. crops (`random_boxes`): ``crops_per_image`` random square crops per image, each of
   side ``crop`` times the shorter image side, resized (bilinear) to the model input;
2. the layer's activations of each crop, averaged over positions: ``A`` ``[n_crops, C]``;
3. the concept bank: the non-negative factorisation ``A ~ U W`` with ``k`` concepts
   (`convlens.concepts.nmf.nmf`): ``W`` ``[k, C]`` (a concept is a non-negative direction
   of the layer, unit norm), ``U`` ``[n_crops, k]`` how much of each concept each crop
   holds; a concept's best crops are those with the highest ``U``;
4. a concept's map on any image (`concept_maps`): at every position of the layer's
   spatial map ``a(x, y)`` ``[C]``, the non-negative coefficients ``u(x, y) >= 0``
   minimising ``|a(x, y) - u(x, y) W|^2`` (NNLS with ``W`` fixed), upsampled bilinearly
   to the input;
5. a concept's importance to the class, on the full images: the layer's map is split as
   ``a = u W + r`` (the residual ``r`` the bank does not explain is kept), and the rest of
   the network sees ``r + (m * u) W`` for a mask ``m`` in ``[0, 1]^k`` on the concepts,
   the same at every position (the paper's masks on the coefficients, spatial version):

   - ``"sobol"`` (the default, the paper's): Sobol total indices of the class score
     (the logit) as a function of ``m``; the masks are a scrambled Sobol sequence
     (quasi-Monte Carlo, ``designs`` points, Saltelli's design of ``designs * (k + 2)``
     evaluations per image, scrambled anew for each image) and the index of concept
     ``i`` is Jansen's estimator ``E[(f(A) - f(A_B^i))^2] / (2 Var f)``: the share of
     the score's variance that involves concept ``i``, alone or with others (in [0, 1]
     up to sampling error; they need not sum to 1). Averaged over the images. One
     image's estimate is noisy at 32 points (a concept column of one design can be off
     by 70%); a new scramble per image makes those errors average out over the images
     instead of favouring one concept slot everywhere.
   - ``"occlusion"``: ``f(1) - f(1 - e_i)``, the drop of the class logit when concept
     ``i`` is removed everywhere (signed; in logit units), averaged over the images.

With ``m = 1`` the network sees its own activation, so a mask of ones gives the model's
own score whatever the quality of the factorisation; the paper feeds ``(m * u) W``
without the residual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.quasirandom import SobolEngine

from convlens.concepts.nmf import nmf, nnls_coefficients
from convlens.concepts.sets import image_set
from convlens.errors import DataError, LayerError, TargetError
from convlens.layers import borrowed_model, capture, resolve_layer
from convlens.layers.capture import replaced_output
from convlens.layers.early_stop import run_until
from convlens.maps import resize_maps
from convlens.models.devices import model_device, placed_on
from convlens.models.loading import LoadedModel, load_model
from convlens.targets import resolve_targets

IMPORTANCES = ("sobol", "occlusion")
DEFAULT_CONCEPTS = 10
DEFAULT_CROP = 0.5
DEFAULT_CROPS_PER_IMAGE = 8
DEFAULT_DESIGNS = 32
DEFAULT_BEST = 8


@dataclass(frozen=True)
class CraftResult:
    """CRAFT of one class at one layer; concepts ranked by importance (concept 0 the most
    important).

    ``bank`` ``Tensor[k, C]`` the concept directions (unit rows); ``importance``
    ``Tensor[k]`` (``importance_method``: ``"sobol"`` total indices or ``"occlusion"``
    logit drops); ``coefficients`` ``Tensor[n_crops, k]`` each crop's ``U``; ``boxes``
    ``LongTensor[n_crops, 4]`` each crop as ``(x0, y0, x1, y1)`` in pixels of the model
    input (x1, y1 exclusive); ``crop_rows`` ``LongTensor[n_crops]`` the row of the image
    each crop is from, ``sources`` the images' names; ``best`` per concept the crop rows
    with the highest coefficients, best first; ``error`` the relative error of the
    factorisation; ``input_size`` ``(H, W)``."""

    class_id: int
    class_name: str
    layer: str
    bank: torch.Tensor
    importance: torch.Tensor
    importance_method: str
    coefficients: torch.Tensor
    boxes: torch.Tensor
    crop_rows: torch.Tensor
    sources: list[str]
    best: list[list[int]]
    error: float
    input_size: tuple[int, int]

    @property
    def k(self) -> int:
        return int(self.bank.shape[0])

    def record(self) -> dict:
        """What ``convlens concepts`` writes to ``concepts.json``: the class, the layer, the
        settings' results, and per concept its importance and best crops (source, box,
        coefficient)."""
        concepts = []
        for concept in range(self.k):
            crops = [
                {
                    "source": self.sources[int(self.crop_rows[row])],
                    "box": [int(v) for v in self.boxes[row]],
                    "coefficient": float(self.coefficients[row, concept]),
                }
                for row in self.best[concept]
            ]
            concepts.append(
                {
                    "id": concept,
                    "importance": float(self.importance[concept]),
                    "best_crops": crops,
                }
            )
        return {
            "class": self.class_name,
            "class_id": self.class_id,
            "layer": self.layer,
            "k": self.k,
            "importance_method": self.importance_method,
            "reconstruction_error": self.error,
            "crops": len(self.boxes),
            "images": len(self.sources),
            "input_size": list(self.input_size),
            "concepts": concepts,
        }


def random_boxes(
    count: int, size: tuple[int, int], crop: float, generator: torch.Generator
) -> torch.Tensor:
    """``LongTensor[count, 4]``: square boxes ``(x0, y0, x1, y1)`` of side ``crop`` times
    the shorter side of an image of ``size`` ``(H, W)``, placed uniformly at random."""
    if not 0 < crop <= 1:
        raise DataError(f"crop must be a fraction of the image side in (0, 1], got {crop}")
    height, width = size
    side = max(1, round(crop * min(height, width)))
    x0 = torch.randint(0, width - side + 1, (count,), generator=generator)
    y0 = torch.randint(0, height - side + 1, (count,), generator=generator)
    return torch.stack([x0, y0, x0 + side, y0 + side], 1)


def crop_images(images: torch.Tensor, rows: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``Tensor[n, 3, H, W]``: crop ``boxes[i]`` of ``images[rows[i]]``, each resized
    bilinearly to the images' size ``(H, W)``."""
    size = images.shape[-2:]
    crops = [
        F.interpolate(
            images[int(r) : int(r) + 1, :, int(y0) : int(y1), int(x0) : int(x1)],
            size=tuple(size),
            mode="bilinear",
            align_corners=False,
        )
        for r, (x0, y0, x1, y1) in zip(rows, boxes, strict=True)
    ]
    return torch.cat(crops)


def spatial_activations(
    module: nn.Module, images: torch.Tensor, layer: str, batch_size: int = 32
) -> torch.Tensor:
    """``Tensor[N, C, h, w]`` (CPU, float32): ``layer``'s output for ``images`` (a layer
    without positions, ``[N, C]``, is given ``h = w = 1``); the forward pass stops at the
    layer. `DataError` when an activation is negative (NMF needs post-ReLU layers)."""
    rows = []
    with borrowed_model(module), torch.no_grad(), capture(module, layer) as cap:
        device = model_device(module)
        for start in range(0, len(images), batch_size):
            cap.clear()
            run_until(module, [layer], images[start : start + batch_size].to(device))
            rows.append(cap.activation(layer).float().cpu())
    activations = torch.cat(rows)
    if activations.dim() == 2:
        activations = activations[:, :, None, None]
    if activations.dim() != 4:
        raise LayerError(
            f"layer {layer!r} gives Tensor{list(activations.shape)}; CRAFT needs "
            "[N, C, h, w] or [N, C] (see 'convlens layers')"
        )
    if bool((activations < 0).any()):
        raise DataError(
            f"layer {layer!r} has negative activations ({float(activations.min()):.3g}); "
            "CRAFT factorises non-negative ones: choose the ReLU after it (see "
            "'convlens layers')"
        )
    return activations


def position_coefficients(activations: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """``Tensor[N, k, h, w]`` float64: the NNLS coefficients on ``bank`` (``Tensor[k, C]``)
    of the activation at every position of ``activations`` (``Tensor[N, C, h, w]``)."""
    n, c, h, w = activations.shape
    flat = activations.permute(0, 2, 3, 1).reshape(-1, c)
    u = nnls_coefficients(flat, bank)
    return u.view(n, h, w, -1).permute(0, 3, 1, 2).contiguous()


def _masked_activation(
    coefficients: torch.Tensor, bank: torch.Tensor, residual: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    """``Tensor[M, C, h, w]``: ``residual + (m * u) W`` for each mask row ``m`` of ``masks``
    (``Tensor[M, k]``), ``coefficients`` ``u`` ``Tensor[k, h, w]`` of one image."""
    kept = masks[:, :, None, None] * coefficients[None]
    return residual[None] + torch.einsum("mkhw,kc->mchw", kept, bank)


def _class_scores(
    module: nn.Module,
    image: torch.Tensor,
    layer: str,
    activations: torch.Tensor,
    class_id: int,
    batch_size: int,
) -> torch.Tensor:
    """``Tensor[M]`` float64: class ``class_id``'s logit when ``layer`` outputs each of
    ``activations`` (``Tensor[M, C, h, w]``) for ``image`` (``Tensor[3, H, W]``)."""
    device = model_device(module)
    scores = []
    for start in range(0, len(activations), batch_size):
        chunk = activations[start : start + batch_size]

        def replace(output: torch.Tensor, chunk=chunk) -> torch.Tensor:
            return chunk.view(output.shape).to(output.device, output.dtype)

        with replaced_output(module, layer, replace):
            batch = image[None].expand(len(chunk), -1, -1, -1).to(device)
            logits = module(batch)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise DataError("CRAFT's importance needs a model that returns logits [B, classes]")
        if not 0 <= class_id < logits.shape[1]:
            raise TargetError(
                f"class {class_id} is out of range: the model has {logits.shape[1]} classes"
            )
        scores.append(logits[:, class_id].double().cpu())
    return torch.cat(scores)


def sobol_design(k: int, designs: int, seed: int) -> tuple[torch.Tensor, int]:
    """Saltelli's design on ``[0, 1]^k`` from a scrambled Sobol sequence of dimension
    ``2k``: ``Tensor[designs * (k + 2), k]`` masks, rows ``A`` (``designs``), ``B``, then
    ``A_B^1 .. A_B^k`` (``A`` with column ``i`` from ``B``); and ``designs``."""
    points = SobolEngine(2 * k, scramble=True, seed=seed).draw(designs, dtype=torch.float64)
    a, b = points[:, :k], points[:, k:]
    mixed = []
    for i in range(k):
        ab = a.clone()
        ab[:, i] = b[:, i]
        mixed.append(ab)
    return torch.cat([a, b, *mixed]), designs


def jansen_total_indices(scores: torch.Tensor, k: int, designs: int) -> torch.Tensor:
    """``Tensor[k]``: Jansen's total Sobol indices from the scores of a `sobol_design`
    (``Tensor[designs * (k + 2)]``); zeros when the scores do not vary."""
    f_a, f_b = scores[:designs], scores[designs : 2 * designs]
    f_ab = scores[2 * designs :].view(k, designs)
    variance = torch.cat([f_a, f_b]).var()
    if float(variance) <= 1e-12 * max(1.0, float(scores.abs().max()) ** 2):
        return torch.zeros(k, dtype=torch.float64)
    return (f_a[None] - f_ab).pow(2).mean(1) / (2 * variance)


def concept_importance(
    module: nn.Module,
    images: torch.Tensor,
    layer: str,
    bank: torch.Tensor,
    class_id: int,
    *,
    method: str = "sobol",
    designs: int = DEFAULT_DESIGNS,
    batch_size: int = 32,
    seed: int = 0,
) -> torch.Tensor:
    """``Tensor[k]`` float64: each concept's importance to class ``class_id`` over
    ``images`` (``Tensor[N, 3, H, W]``), by ``method`` (module docstring, step 5)."""
    if method not in IMPORTANCES:
        raise DataError(f"unknown importance {method!r}; use one of {', '.join(IMPORTANCES)}")
    k = bank.shape[0]
    masks = torch.cat([torch.ones(1, k), 1 - torch.eye(k)]).double()
    activations = spatial_activations(module, images, layer, batch_size).double()
    coefficients = position_coefficients(activations, bank)
    bank = bank.double()
    residual = activations - torch.einsum("nkhw,kc->nchw", coefficients, bank)
    totals = torch.zeros(k, dtype=torch.float64)
    with borrowed_model(module), torch.no_grad():
        for row in range(len(images)):
            if method == "sobol":  # a scramble per image: the design's errors average out
                masks, designs = sobol_design(k, designs, seed * 1_000_003 + row)
            varied = _masked_activation(coefficients[row], bank, residual[row], masks)
            scores = _class_scores(module, images[row], layer, varied, class_id, batch_size)
            if method == "sobol":
                totals += jansen_total_indices(scores, k, designs)
            else:
                totals += scores[0] - scores[1:]
    return totals / len(images)


def concept_maps(
    model: nn.Module | LoadedModel | str,
    images,
    result: CraftResult | torch.Tensor,
    layer: str | None = None,
    *,
    upsample: bool = True,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Each concept's map on ``images``: ``Tensor[N, k, H, W]`` (input size; with
    ``upsample=False`` the layer's ``[N, k, h, w]``), float32, non-negative: the NNLS
    coefficients of the layer's activation at every position on the concept bank
    (module docstring, step 4).

    Args:
        model: the model CRAFT ran on (a LoadedModel, a name or path, an nn.Module).
        images: a preprocessed ``Tensor[N, 3, H, W]`` or an image set name
            (`convlens.concepts.sets.image_set`).
        result: a `CraftResult` (its bank and layer), or a bank ``Tensor[k, C]`` with
            ``layer``.
    """
    loaded = load_model(model)
    bank = result.bank if isinstance(result, CraftResult) else result
    layer = result.layer if isinstance(result, CraftResult) else layer
    if layer is None:
        raise LayerError("concept_maps with a bank tensor needs the layer it was found at")
    tensor = image_set(images, loaded.preprocess).images
    with placed_on(loaded.module, device):
        activations = spatial_activations(loaded.module, tensor, layer, batch_size)
    maps = position_coefficients(activations, bank).float()
    if not upsample:
        return maps
    n, k, h, w = maps.shape
    return resize_maps(maps.view(n * k, h, w), tensor.shape[-2:]).view(n, k, *tensor.shape[-2:])


def _class_id(loaded: LoadedModel, target: int | str) -> int:
    selector = resolve_targets(target, 1, labels=loaded.labels).positive
    if selector is None or int(selector.ids[0]) < 0:
        raise DataError(f"target {target!r}: CRAFT explains one class; pass a class id or name")
    return int(selector.ids[0])


def craft(
    model: nn.Module | LoadedModel | str,
    images,
    target: int | str,
    layer: str,
    *,
    concepts: int = DEFAULT_CONCEPTS,
    crop: float = DEFAULT_CROP,
    crops_per_image: int = DEFAULT_CROPS_PER_IMAGE,
    importance: str = "sobol",
    designs: int = DEFAULT_DESIGNS,
    best: int = DEFAULT_BEST,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> CraftResult:
    """CRAFT concepts of class ``target`` at ``layer`` (module docstring).

    Args:
        model: a LoadedModel, a registered name or path, or an nn.Module (borrowed, handed
            back unchanged).
        images: the class's images: a preprocessed ``Tensor[N, 3, H, W]`` or an image set
            name (`convlens.concepts.sets.image_set`: a folder, ``scenes:N@CLASS``, ...).
        target: the class (id, or name with a model's labels).
        layer: a layer with non-negative outputs (after a ReLU), by name or ``#N``.
        concepts: ``k``, the number of concepts.
        crop: side of the random crops as a fraction of the shorter image side.
        crops_per_image: random crops per image.
        importance: ``"sobol"`` (the paper's; the default) or ``"occlusion"``.
        designs: Sobol points per image (``designs * (k + 2)`` forward passes per image).
        best: best crops kept per concept.
        seed: seeds the crops, the factorisation and the Sobol sequence.

    Returns a `CraftResult`, concepts ranked by importance (most important first).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> result = craft(net, torch.rand(4, 3, 8, 8), 0, "1", concepts=2, crops_per_image=2)
        >>> result.bank.shape, result.coefficients.shape, result.importance.shape
        (torch.Size([2, 4]), torch.Size([8, 2]), torch.Size([2]))
    """
    loaded = load_model(model)
    module = loaded.module
    name = resolve_layer(module, layer)[0]
    class_id = _class_id(loaded, target)
    if crops_per_image < 1 or best < 1 or designs < 2:
        raise DataError("crops_per_image and best must be >= 1, designs >= 2")
    if importance not in IMPORTANCES:
        raise DataError(f"unknown importance {importance!r}; use one of {', '.join(IMPORTANCES)}")
    tensor_set = image_set(images, loaded.preprocess)
    tensor = tensor_set.images
    size = tuple(tensor.shape[-2:])
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(len(tensor)).repeat_interleave(crops_per_image)
    boxes = random_boxes(len(rows), size, crop, generator)
    with placed_on(module, device):
        crops = crop_images(tensor, rows, boxes)
        pooled = spatial_activations(module, crops, name, batch_size).mean((2, 3))
        factors = nmf(pooled, concepts, seed=seed)
        scores = concept_importance(
            module,
            tensor,
            name,
            factors.bank,
            class_id,
            method=importance,
            designs=designs,
            batch_size=batch_size,
            seed=seed,
        )
    order = torch.argsort(-scores, stable=True)
    coefficients = factors.coefficients[:, order]
    top = min(best, len(rows))
    best_rows = [coefficients[:, j].topk(top).indices.tolist() for j in range(concepts)]
    return CraftResult(
        class_id=class_id,
        class_name=loaded.label(class_id),
        layer=name,
        bank=factors.bank[order].float(),
        importance=scores[order].float(),
        importance_method=importance,
        coefficients=coefficients.float(),
        boxes=boxes,
        crop_rows=rows,
        sources=tensor_set.sources,
        best=best_rows,
        error=factors.error,
        input_size=(int(size[0]), int(size[1])),
    )
