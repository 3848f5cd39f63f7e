"""Steps every attribution method shares: input checks, target resolution, the gradient of
the target score w.r.t. the input or one layer, upsampling and normalisation."""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from convlens.detections import detach_output, is_detections
from convlens.errors import ConvlensError, LayerError, MethodError, TargetError
from convlens.layers.borrow import borrowed_model, require_autograd
from convlens.layers.capture import capture
from convlens.layers.find import LayerSpec, default_cam_layer, resolve_layer_names
from convlens.layers.input_gradient import input_gradient_forward
from convlens.models.devices import (
    CPU_PASS_PIXELS,
    cpu_fast_layout,
    cpu_passes,
    model_input,
)
from convlens.models.loading import LoadedModel, as_module
from convlens.targets import (
    ClassSelector,
    CopyTargets,
    RegionSelector,
    Similarity,
    Targets,
    resolve_targets,
)


@dataclass(frozen=True)
class Prepared:
    """A method's checked inputs: ``images`` ``Tensor[N, 3, H, W]`` already expanded to one
    row per explained target (detached; the caller's tensor is never modified)."""

    module: nn.Module
    images: torch.Tensor
    targets: Targets


def prepare(
    model: nn.Module | LoadedModel, images: torch.Tensor, target: object = None
) -> Prepared:
    """Check ``images`` (``Tensor[B, C, H, W]`` floating point) and resolve ``target``.
    The images follow the model: a copy on its device and in its dtype when they differ."""
    module = as_module(model)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConvlensError(
            f"images must be a Tensor[B, C, H, W], got {shape}; use convlens.load_images or "
            "model.preprocess(...) to make one (unsqueeze(0) a single image)"
        )
    if not images.is_floating_point():
        raise ConvlensError(
            f"images must be a floating point tensor, got {images.dtype}; normalise them "
            "with the model's preprocess"
        )
    labels = model.labels if isinstance(model, LoadedModel) else None
    target = resolve_reference(model, target)
    targets = resolve_targets(target, len(images), labels=labels)
    return Prepared(module, targets.expand(model_input(module, images.detach())), targets)


def resolve_reference(model: nn.Module | LoadedModel, target: object) -> object:
    """``target``, with a `similar_to` target turned into the score function it stands for
    (one forward pass embeds the reference, in eval mode and without autograd); any other
    target as it is."""
    if not isinstance(target, Similarity):
        return target
    module = as_module(model)
    reference = target.reference
    if not isinstance(reference, torch.Tensor):
        if not isinstance(model, LoadedModel):
            raise ConvlensError(
                "similar_to(path or image) needs the model's preprocessing: wrap the model "
                "with convlens.load_model(module, preprocess=...), or pass the reference as a "
                "preprocessed Tensor[3, H, W]"
            )
        from convlens.data.images import load_images

        reference = load_images([reference], preprocess=model.preprocess).tensor
    if reference.dim() == 3:
        reference = reference[None]
    if reference.dim() != 4 or not reference.is_floating_point():
        raise ConvlensError(
            f"a similar_to reference is a preprocessed float Tensor[3, H, W] or [R, 3, H, W], "
            f"got {reference.dtype} {tuple(reference.shape)}"
        )
    with borrowed_model(module), torch.no_grad():
        embedding = module(model_input(module, reference.detach()))
    return similarity_score(embedding)


def similarity_score(reference: torch.Tensor):
    """The score ``f(output) -> Tensor[B]``: the cosine similarity of each row's output
    (flattened) to ``reference`` (``Tensor[1, ...]`` for every row, or ``Tensor[B, ...]``,
    row ``i`` for image ``i``), in [-1, 1]."""
    reference = reference.detach().flatten(1)

    def similar(output: torch.Tensor) -> torch.Tensor:
        flat = output.flatten(1)
        if flat.shape[1] != reference.shape[1] or len(reference) not in (1, len(flat)):
            raise TargetError(
                f"similar_to: the images' embeddings are {tuple(flat.shape)} but the "
                f"reference's are {tuple(reference.shape)}; give one reference image, or one "
                "per image, whose embedding has the images' size"
            )
        return torch.nn.functional.cosine_similarity(flat, reference.to(flat), dim=1)

    return similar


def resolve_cam_layer(
    module: nn.Module, images: torch.Tensor, layer: LayerSpec | list | tuple | None
) -> str:
    """The layer name to hook: the given one, or the default CAM layer; several layers
    (``"a,b"`` or a list) as their names joined by commas (`resolve_layer_names`)."""
    if layer is None:
        return default_cam_layer(module, images)
    return resolve_layer_names(module, layer)


def check_spatial(name: str, activation: torch.Tensor) -> None:
    if activation.dim() != 4:
        raise LayerError(
            f"layer {name!r} outputs shape {tuple(activation.shape)}, which has no spatial "
            "[C, H, W] layout; CAM methods need a convolutional layer (leave layer unset "
            "for the default, or see 'convlens layers')"
        )


GRADIENT_METHOD = (
    "this method (cam, eigencam, scorecam, ablationcam, occlusion, rise, kernel_shap, lime "
    "and superpixel_ablation need no gradient; the others do)"
)


def input_gradient(
    module: nn.Module, images: torch.Tensor, targets: Targets | CopyTargets
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of each row's target score w.r.t. its input: ``(Tensor[N, C, H, W], output)``.

    Only the input gradient is computed (no parameter ``.grad``): the forward pass runs in
    `input_gradient_forward` (eval batch norms, convolutions and constant padding get an
    input-gradient-only backward; the native gradient within float rounding, about a
    tenth to a fifth less time on CPU for ResNet-50 and EfficientNet-Lite0). Rows are
    independent, so the gradient of the summed scores is each row's own gradient.
    ``targets``: `Targets` for the explained rows themselves, `CopyTargets` for copies of
    them (noisy, path points).
    Rows holding the same input (`SharedRows`: a grid explained once per cell) share one
    forward pass, and each row's gradient comes from its own backward pass (one pass per
    row of the largest group, each covering one row of every group): the same gradients as
    a forward per row, at a fraction of the cost (a batch of copies of a large image is
    memory bound on a CPU).
    """
    require_autograd(GRADIENT_METHOD)
    shared = SharedRows.of(images.detach())
    if shared.pays_per_row_backward():
        found = _shared_input_gradient(module, images, targets, shared)
        if found is not None:
            return found
    return in_cpu_passes(images, targets, lambda x, t: _input_gradient_pass(module, x, t))


def _input_gradient_pass(
    module: nn.Module, images: torch.Tensor, targets: Targets | CopyTargets
) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        output = input_gradient_forward(lambda: module(inputs))
        scores = targets.score(output)
        (gradient,) = torch.autograd.grad(scores.sum(), inputs)
    return gradient, detach_output(output)


def in_cpu_passes(images: torch.Tensor, targets: Targets | CopyTargets, run: Callable) -> tuple:
    """``run(images, targets)`` (a tuple of per-row results) on the whole batch, or on the CPU
    in even passes of at most `cpu_pass_rows` rows (`cpu_passes`) joined in order: per
    image, saliency, Grad-CAM and guided backprop on 32 images of 224 x 224 in one pass cost
    1.2x to 1.4x what they cost in passes of 8 there (docs/performance.md). Rows are taken
    to be independent (as everywhere in convlens: a batch equals single-image calls), so
    the results are the same up to float rounding. A batch stays whole where a pass could
    see other rows: a callable target on the explained rows (`Targets.fn`: it gets the
    whole batch's output) or any other scorer than `Targets` and `CopyTargets` (a method's
    own); and when a pass's results are not rows of that pass (`_joinable`: a layer that
    reshapes the batch, say), the whole batch runs once more in one pass. Passes of one
    row happen only for images larger than 448 x 448 (half of `CPU_PASS_PIXELS`): a model
    that squeezes its output fails there as it does on a single image."""
    passes = cpu_passes(images)
    splittable = isinstance(targets, CopyTargets) or (
        isinstance(targets, Targets) and targets.fn is None
    )
    if len(passes) < 2 or not splittable:
        return run(images, targets)
    joined = _joined_passes(passes, lambda rows: run(images[rows], targets.subset(rows)))
    return run(images, targets) if joined is None else joined


def _joined_passes(passes: list[slice], run: Callable[[slice], tuple]) -> tuple | None:
    """``run(rows)`` (a tuple of per-row results) for each slice of ``passes``, each result
    joined over the passes in order (`_joined`); None as soon as a pass's results are not
    rows of that pass (`_joinable`), for the caller to run the whole batch instead."""
    parts = []
    for rows in passes:
        found = run(rows)
        if not all(_joinable(t, rows.stop - rows.start) for t in found):
            return None
        parts.append(found)
    return tuple(_joined(list(pieces)) for pieces in zip(*parts, strict=True))


def _joinable(output: object, rows: int) -> bool:
    """Whether ``output`` holds one entry per row of its pass: a tensor ``[rows, ...]`` or a
    detector's list of ``rows`` dicts."""
    if isinstance(output, torch.Tensor):
        return output.dim() >= 1 and len(output) == rows
    return isinstance(output, list) and len(output) == rows and is_detections(output)


def _joined(outputs: list):
    """The outputs of consecutive passes (all `_joinable`) as one batch's."""
    if isinstance(outputs[0], torch.Tensor):
        return torch.cat(outputs)
    return [item for out in outputs for item in out]


def _shared_input_gradient(
    module: nn.Module, images: torch.Tensor, targets: Targets | CopyTargets, shared: SharedRows
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`input_gradient` with one forward pass per group of ``shared``; None when the output
    is not a tensor (then its rows cannot be indexed)."""
    group = shared.group.to(images.device)
    inputs = images.detach()[shared.first.to(images.device)].clone().requires_grad_(True)
    with torch.enable_grad():
        output = input_gradient_forward(lambda: module(inputs))
        if not isinstance(output, torch.Tensor):
            return None
        return per_row_gradients(output, targets, inputs, shared), detach_output(output)[group]


def per_row_gradients(
    output: torch.Tensor,
    targets: Targets | CopyTargets,
    wrt: torch.Tensor,
    shared: SharedRows,
    allow_unused: bool = False,
) -> torch.Tensor | None:
    """``Tensor[N, ...]``: the gradient of each row's target score on ``output[group]`` w.r.t.
    its group's row of ``wrt`` (``Tensor[U, ...]``), one backward pass per slot
    (`group_slots`). With ``allow_unused``, None where the scores do not depend on ``wrt``."""

    def gradient(score: torch.Tensor, retain: bool) -> tuple[torch.Tensor | None, ...]:
        return torch.autograd.grad(score, wrt, retain_graph=retain, allow_unused=allow_unused)

    return per_row_backward(output, targets, shared, gradient)[0]


def per_row_backward(
    output: torch.Tensor,
    targets: Targets | CopyTargets,
    shared: SharedRows,
    backward: Callable[[torch.Tensor, bool], Sequence[torch.Tensor | None]],
) -> list[torch.Tensor | None]:
    """Each row's own backward pass on a batch of distinct inputs: ``backward(score,
    retain_graph)`` (one result per tensor it differentiates, ``Tensor[U, ...]`` or None)
    runs once per slot (`group_slots`) on the summed target scores of that slot's rows of
    ``output[group]``, and each result comes back with one row per explained row
    (``Tensor[N, ...]``; None where no slot reached it)."""
    group = shared.group.to(output.device)
    scores = targets.score(output[group])
    slots = group_slots(shared.group)
    last = int(slots.max())
    found: list[torch.Tensor | None] = []
    for slot in range(last + 1):
        rows = torch.nonzero(slots == slot)[:, 0]
        parts = backward(scores[rows.to(scores.device)].sum(), slot < last)
        found += [None] * (len(parts) - len(found))
        for k, part in enumerate(parts):
            if part is None:
                continue
            at = rows.to(part.device)
            if found[k] is None:
                found[k] = torch.zeros_like(part[group.to(part.device)])
            found[k][at] = part[group.to(part.device)[at]]
    return found


def layer_gradient(
    module: nn.Module, images: torch.Tensor, targets: Targets, layer: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activation ``A`` of ``layer`` and ``dscore/dA`` (both ``Tensor[N, C, h, w]``), and the
    output. The forward pass records autograd only from ``layer`` on; the backward stops
    there. ``A`` is the last call's output when the layer runs more than once. Rows holding
    the same image (`SharedRows`) share one forward pass; each row's gradient then comes
    from its own backward pass from the output to the layer (one pass per row of the
    largest group, each covering one row of every group), equal to a forward per row."""
    require_autograd(GRADIENT_METHOD)
    shared = SharedRows.of(images)
    if shared.pays_per_row_backward():
        found = _shared_layer_gradient(module, images, targets, layer, shared)
        if found is not None:
            return found
    return in_cpu_passes(images, targets, lambda x, t: _layer_gradient_pass(module, x, t, layer))


def _layer_gradient_pass(
    module: nn.Module, images: torch.Tensor, targets: Targets, layer: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with capture(module, layer, gradients=True, graph_from_layer=True) as cap:
        output = module(images)
        activation = cap.activation(layer)
        check_spatial(layer, activation)
        scores = targets.score(output)
        require_recorded(scores, layer)
        (gradient,) = torch.autograd.grad(scores.sum(), activation, allow_unused=True)
    return activation.detach(), require_reached(gradient, layer), detach_output(output)


def require_recorded(scores: torch.Tensor, layer: str) -> None:
    """`LayerError` (`require_reached`) when ``scores``, computed with autograd recorded
    only from ``layer`` on, record no graph at all."""
    if not scores.requires_grad:
        require_reached(None, layer)


def require_reached(gradient: torch.Tensor | None, layer: str) -> torch.Tensor:
    """``gradient``, the explained score's gradient at ``layer``'s output; `LayerError` when
    it is None (``allow_unused``): the layer feeds only a side computation of the forward
    pass, or what follows it runs without autograd."""
    if gradient is None:
        raise LayerError(
            f"the explained score does not depend on layer {layer!r}: its output reaches the "
            "model's output through no recorded gradient (it feeds only a side computation, "
            "or the model runs what follows it under torch.no_grad); choose a layer on the "
            "way to the output, see 'convlens layers'"
        )
    return gradient


def _shared_layer_gradient(
    module: nn.Module, images: torch.Tensor, targets: Targets, layer: str, shared: SharedRows
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """`layer_gradient` with one forward pass per group of ``shared``; None when the output
    is not a tensor or the layer's batch is not the images' (then rows cannot be indexed)."""
    group = shared.group.to(images.device)
    with capture(module, layer, gradients=True, graph_from_layer=True) as cap:
        output = module(images[shared.first.to(images.device)])
        activation = cap.activation(layer)
        check_spatial(layer, activation)
        if not isinstance(output, torch.Tensor) or len(activation) != len(shared):
            return None
        require_recorded(output, layer)
        gradient = per_row_gradients(output, targets, activation, shared, allow_unused=True)
        gradient = require_reached(gradient, layer)
    return activation.detach()[group], gradient, detach_output(output)[group]


def group_slots(group: torch.Tensor) -> torch.Tensor:
    """``Tensor[N]``: each row's position among the rows of its group (0 for a group's
    first row, 1 for its second ...), so the rows of one slot are in distinct groups."""
    slots = torch.empty_like(group)
    seen: dict[int, int] = {}
    for row, g in enumerate(group.tolist()):
        slots[row] = seen.get(g, 0)
        seen[g] = int(slots[row]) + 1
    return slots


def reduce_channels(attribution: torch.Tensor, how: str) -> torch.Tensor:
    """``Tensor[N, C, H, W]`` to a map ``Tensor[N, H, W]``: ``"max_abs"`` (largest magnitude
    over channels), ``"square"`` (sum of squares), ``"sum"`` (signed sum) or ``"abs_sum"``."""
    if how == "max_abs":
        return attribution.abs().amax(dim=1)
    if how == "square":
        return attribution.square().sum(dim=1)
    if how == "sum":
        return attribution.sum(dim=1)
    if how == "abs_sum":
        return attribution.abs().sum(dim=1)
    raise ConvlensError(
        f"unknown channel reduction {how!r}; use 'max_abs', 'square', 'sum' or 'abs_sum'"
    )


def pin_ranked_targets(module: nn.Module, images: torch.Tensor, targets: Targets) -> Targets:
    """Targets with every ranked class ("top1", "top2", ...) replaced by the class id it has
    on ``images``, so perturbed or interpolated copies explain the same class. Runs a
    forward pass only when some target is ranked."""
    selectors = [s for s in (targets.positive, targets.negative) if s is not None]
    unpinned = targets.region is not None and targets.region.predicted
    unpinned = unpinned or getattr(targets.fn, "pin", None) is not None  # a detection target
    if not unpinned and not any(bool((s.ranks >= 0).any()) for s in selectors):
        return targets
    with torch.no_grad():
        output = module(images)
    return fix_ranked_targets(targets, output)


def fix_ranked_targets(targets: Targets, output: torch.Tensor) -> Targets:
    """`pin_ranked_targets` given the output ``Tensor[N, K]`` of the unperturbed images (or
    ``Tensor[N, K, H, W]`` of a segmentation model, whose predicted-mask region is pinned
    too: copies then sum each class over the clean prediction's mask)."""
    if targets.fn is not None:  # a detection target pins its reference detections
        pin = getattr(targets.fn, "pin", None)
        return targets if pin is None else dataclasses.replace(targets, fn=pin(output))
    region = targets.region
    if region is None and isinstance(output, torch.Tensor) and output.dim() == 4:
        region = RegionSelector()
    region = None if region is None else region.pin(output)
    pinned = dataclasses.replace(targets, region=region)
    scores = pinned.class_scores(output)

    def fix(selector: ClassSelector | None) -> ClassSelector | None:
        if selector is None:
            return None
        ids = selector.resolve(scores).cpu()
        return ClassSelector(ids, torch.full_like(ids, -1))

    return dataclasses.replace(
        pinned, positive=fix(targets.positive), negative=fix(targets.negative)
    )


def positive_int(name: str, value: object) -> int:
    """``value`` if it is an int >= 1 (not a bool), else a `MethodError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MethodError(f"{name} must be a positive integer, got {value!r}")
    return value


MIN_CHUNK = 8


def chunk_size(batch_size: int | None, rows: int, pixels: int | None = None) -> int:
    """Copies built at a time (a chunk) for methods that evaluate many perturbed copies;
    off the CPU each chunk is one forward pass, on the CPU the chunk then goes through the
    model in even passes of at most `CPU_PASS_PIXELS` pixels (`forward_copies`,
    `in_cpu_passes`).

    ``None`` (the default everywhere): as many as the explained batch has rows (for methods
    that share copies between rows of one image, `SharedRows`, its distinct images), but at
    least ``MIN_CHUNK``, so each chunk has the shape (and memory) of the caller's own
    batch, and single images still run in efficient batches.
    Given ``pixels`` (``H * W`` of the copies) larger than 224 x 224, as many copies as fit
    in ``CPU_PASS_PIXELS`` (at least one): 2 per pass at 448 x 448, 1 at 672 x 672. Per-image
    cost rises with batch size on CPU (memory bound: at 672 pixels a copy alone costs about
    half the CPU of one in a pass of nine), so larger fixed chunks are slower there. An
    explicit ``batch_size`` is used as given; it never changes results.
    """
    if batch_size is not None:
        return positive_int("batch_size", batch_size)
    if pixels is not None and pixels > CPU_PASS_PIXELS // MIN_CHUNK:
        return max(1, CPU_PASS_PIXELS // pixels)
    return max(rows, MIN_CHUNK)


# modules whose forward failed on a channels-last batch (`forward_copies`)
_CONTIGUOUS_ONLY: weakref.WeakSet[nn.Module] = weakref.WeakSet()
# what torch says when a forward pass needs a contiguous layout (``view`` and the like)
_LAYOUT_ERRORS = ("view size is not compatible", "contiguous", "stride", "memory format")


def forward_copies(module: nn.Module, copies: torch.Tensor) -> torch.Tensor | list:
    """``module(copies)`` for a batch of perturbed copies ``Tensor[N, C, H, W]`` (RISE,
    occlusion, Score-CAM, the superpixel methods, the metric zoo, the deletion curves). On
    the CPU the copies go through in even passes of at most `CPU_PASS_PIXELS` pixels (8
    images of 224 x 224; `cpu_passes`), whatever batch the caller built: per image a pass
    of 64 copies costs 1.2x to 1.8x one of 8 (cache and fresh allocations;
    docs/performance.md), and the outputs are joined (tensors concatenated, a detector's
    lists chained); an output that is not one entry per copy stops the split after the
    first pass, and the whole batch runs in one pass.
    Each pass is handed over in channels-last layout (`cpu_fast_layout`; RISE through
    `explain`: 1.4x to 2.6x faster); the same values up to float rounding. A model whose
    forward cannot take that layout (a ``view`` of a convolution's output, say) raises on
    the first batch: that batch and every later one for this module go contiguous (also
    copies that came in channels-last, such as a metric's reused buffer). Any other error
    of the model is raised as it is, never retried."""
    passes = cpu_passes(copies)
    if len(passes) < 2:
        return _forward_laid_out(module, copies)
    joined = _joined_passes(passes, lambda rows: (_forward_laid_out(module, copies[rows]),))
    return _forward_laid_out(module, copies) if joined is None else joined[0]


def _forward_laid_out(module: nn.Module, copies: torch.Tensor) -> torch.Tensor:
    """``module(copies)`` in channels-last layout where the module takes it (`forward_copies`)."""
    laid_out = cpu_fast_layout(copies)
    if laid_out.is_contiguous():  # not a CPU image batch (or one with C = 1 or H = W = 1)
        return module(laid_out)
    if module in _CONTIGUOUS_ONLY:
        return module(copies.contiguous())
    try:
        return module(laid_out)
    except RuntimeError as error:
        if not any(part in str(error) for part in _LAYOUT_ERRORS):
            raise
        _CONTIGUOUS_ONLY.add(module)
    return module(copies.contiguous())


def clean_pass(prepared: Prepared, laid_out: bool = False) -> tuple[torch.Tensor, Targets]:
    """The model's output on the unperturbed images (without autograd) and the targets
    pinned to it (`fix_ranked_targets`), which every perturbed copy is then scored by.
    ``laid_out``: in the layout of `forward_copies`, for a method that subtracts its copies'
    scores from the clean one (a change the score does not read then moves it by exactly
    zero); the output differs from a plain forward pass's by float rounding."""
    with torch.no_grad():
        if laid_out:
            output = forward_copies(prepared.module, prepared.images)
        else:
            output = prepared.module(prepared.images)
    return output, fix_ranked_targets(prepared.targets, output)


def work_items(count: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat work list of ``count`` items (masks, samples, steps...) for each of ``rows``
    images, item-major (work item ``k = item * rows + row``): the item and the row of each,
    ``Tensor[count * rows]`` (int64, CPU) twice. Chunks of it (`in_chunks`) are the passes."""
    return torch.arange(count).repeat_interleave(rows), torch.arange(rows).repeat(count)


def in_chunks(total: int, size: int):
    """Slices ``[start, stop)`` covering ``range(total)`` in steps of ``size`` (>= 1)."""
    positive_int("batch_size", size)
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


@dataclass(frozen=True)
class SharedRows:
    """Rows of a batch that hold the same input share the forward passes of their perturbed
    copies (a GridPG grid explained once per cell, top-k targets, one image explained for
    several classes): every perturbed forward pass already gives the output for all
    classes, so one copy per distinct input is scored once per row it stands for.

    ``first``: ``Tensor[U]`` (int64, CPU), the first row of each distinct group, in row
    order; ``group``: ``Tensor[N]``, each row's group. A perturbation that depends on the
    row only through the tensors compared in `SharedRows.of` (the image, its superpixels,
    its coalitions) is the same for every row of a group, so results equal one copy per
    row (up to the float rounding of a different batch shape), for a model that treats
    every row of a batch alike (a hook that acts on some rows only, as CRP's channel
    conditioning does, needs one row per copy)."""

    first: torch.Tensor
    group: torch.Tensor

    @classmethod
    def of(cls, *tensors: torch.Tensor, share: bool = True) -> SharedRows:
        """Groups of rows equal in every tensor of ``tensors`` (each ``Tensor[N, ...]``,
        compared exactly); ``share=False`` (an output that cannot be indexed by rows, such
        as detections): every row its own group."""
        rows = len(tensors[0])
        if not share:
            return cls(torch.arange(rows), torch.arange(rows))
        keys = [
            tuple(float(t[r].double().sum()) for t in tensors) for r in range(rows)
        ]  # a cheap key first, exact comparison only within a key
        first: list[int] = []
        group: list[int] = []
        for r in range(rows):
            same = (
                g
                for g, f in enumerate(first)
                if keys[f] == keys[r] and all(torch.equal(t[r], t[f]) for t in tensors)
            )
            found = next(same, None)
            if found is None:
                found = len(first)
                first.append(r)
            group.append(found)
        return cls(torch.tensor(first, dtype=torch.long), torch.tensor(group, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.first)

    def pays_per_row_backward(self) -> bool:
        """Whether one forward pass per group and one backward pass per slot
        (`per_row_gradients`: as many passes as the largest group has rows, each over all
        groups) costs less than a forward and a backward pass over every row, counting a
        backward pass as dear as a forward one: ``U (1 + S) < 2 N``. A grid's cells (U = 1)
        pay; a chunk of integrated-gradients points where a few images' baselines coincide
        does not."""
        largest = int(torch.bincount(self.group).max()) if len(self.group) else 0
        return len(self) * (1 + largest) < 2 * len(self.group)

    def expand(self, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For copies of the groups ``groups`` (``Tensor[k]``): the copy and the row of every
        (copy, row of its group) pair, ``Tensor[m]`` twice (copy-major, rows in order)."""
        return torch.nonzero(groups.cpu()[:, None] == self.group[None], as_tuple=True)

    def scores(
        self, pinned: Targets, clean: object, output: object, groups: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(copy, row, score)``, each ``Tensor[m]``: the target score of every row of each
        copy's group on that copy's ``output`` (``Tensor[k, ...]`` for copies of ``groups``),
        read by ``pinned.copies(row, clean)`` as for a copy per row."""
        copy, row = self.expand(groups)
        if len(copy) != len(groups) or not torch.equal(copy, torch.arange(len(groups))):
            output = output[copy.to(output.device)]
        return copy, row, pinned.copies(row, clean).score(output)
