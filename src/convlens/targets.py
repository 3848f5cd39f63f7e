"""What score is explained. One place turns every accepted form into `Targets` and checks it.

Accepted forms (``B`` = number of images):

- ``None`` or ``"top1"``: each image's top class; ``"top3"``: its top 3 classes, giving
  ``3 * B`` explained rows (image 0 rank 1, image 0 rank 2, ...).
- an ``int`` or a class name (``"tabby"``): the same class for every image.
- a list/tuple/1-D tensor of ``B`` ids or names: one class per image.
- ``contrast(a, b)``: the score of ``a`` minus the score of ``b`` ("why a rather than b");
  ``a`` and ``b`` take any single-class form, including ``"top1"``/``"top2"``.
- a regression model (output ``Tensor[B]`` or ``Tensor[B, 1]``): the default target
  (``None``/``"top1"``, or class ``0``) is the output itself, read as one class.
- ``similar_to(reference)``: for an embedding model (output ``Tensor[B, D]``, or any shape,
  flattened per image), the cosine similarity of each image's embedding to the embedding
  of ``reference`` (one image for all, or one per image). The reference embedding needs the
  model, so it is computed where the model is at hand
  (`convlens.attribution.common.resolve_reference`); `resolve_targets` refuses an
  unresolved one.
- a callable ``f(output) -> Tensor[B]``: any scalar per image (for non-classifiers,
  segmentation regions, ...). It is always called as on the user's batch: ``output`` has
  one row per input image, row ``i`` belonging to image ``i``. Methods that evaluate
  copies of the input (occluded, masked, noisy, interpolated) call it on the clean output
  with the rows of the copies being scored (at most one per image) put in their image's
  place, and read those rows of its result (`CopyTargets`); so ``f`` may index per image
  (``out.gather(1, ids[:, None])[:, 0]``), and each row's score must depend on that row only.

Text (a ``--target`` on the command line, the web view's form) is read by `parse_target`:
``top1``, ``topK``, a class id, a class name, ``A-B`` (why A rather than B; each part one
of the former, and a class name holding a hyphen stays one class), ``similar:PATH``
(`similar_to` the image at PATH), or ``det:N`` (detection ``N`` of a detector,
`convlens.detections.detection`); `target_text` writes a target back the same way.

Ranked targets are resolved on the model output inside a method's own forward pass, so
``"top1"`` costs a method no extra forward (and `explain` reports the explained classes and
scores from that same pass).
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from convlens.detections import parse_detection
from convlens.errors import TargetError

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Contrast:
    """Explain ``positive`` minus ``negative`` (each a single-class target form)."""

    positive: object
    negative: object


def contrast(positive: object, negative: object) -> Contrast:
    """Target "why ``positive`` rather than ``negative``" (contrastive maps)."""
    return Contrast(positive, negative)


@dataclass(frozen=True)
class Similarity:
    """Explain the cosine similarity of each image's embedding to ``reference``'s (see
    `similar_to`)."""

    reference: object

    def __str__(self) -> str:
        if isinstance(self.reference, torch.Tensor):
            return f"similar:<tensor {tuple(self.reference.shape)}>"
        return f"similar:{self.reference}"


def similar_to(reference: object) -> Similarity:
    """Target for embedding models: ``cos(e(x), e(reference))``, the cosine similarity of
    the image's embedding ``e(x)`` (the model output, flattened per image) to the embedding
    of ``reference``. ``reference``: a preprocessed ``Tensor[3, H, W]``, ``Tensor[1, 3, H,
    W]`` (one reference for every image) or ``Tensor[B, 3, H, W]`` (one per image), or, with
    a `LoadedModel`, anything `load_images` takes (a path, a sample name). Score range
    [-1, 1]."""
    return Similarity(reference)


@dataclass(frozen=True)
class ClassSelector:
    """Per explained row, a class given by id (``ids[n] >= 0``) or by rank (``ranks[n] >= 0``,
    0 = top class) in that row's output."""

    ids: torch.Tensor
    ranks: torch.Tensor

    def resolve(self, output: torch.Tensor) -> torch.Tensor:
        """Class ids ``Tensor[N]`` for the logits ``Tensor[N, K]``."""
        num_classes = output.shape[1]
        too_big = self.ids >= num_classes
        if bool(too_big.any()):
            bad = int(self.ids[too_big][0])
            raise TargetError(
                f"class id {bad} is out of range: the model has {num_classes} classes "
                f"(0..{num_classes - 1})"
            )
        if self.ranks.numel() and int(self.ranks.max()) >= num_classes:
            raise TargetError(
                f"top-{int(self.ranks.max()) + 1} asked of a model with {num_classes} classes"
            )
        ids = self.ids.to(output.device)
        if self.ranks.numel() and bool((self.ranks >= 0).any()):
            k = int(self.ranks.max()) + 1
            ranked = output.detach().topk(k, dim=1).indices
            by_rank = ranked.gather(1, self.ranks.clamp(min=0).to(output.device)[:, None])[:, 0]
            ids = torch.where(self.ranks.to(output.device) >= 0, by_rank, ids)
        return ids


@dataclass(frozen=True)
class Region:
    """Explain a class's logits summed over a region of a segmentation output (see `region`)."""

    target: object = None
    box: object = None
    mask: object = None

    def __str__(self) -> str:
        where = "predicted mask" if self.box is None and self.mask is None else "mask"
        if self.box is not None:
            where = f"box {torch.as_tensor(self.box).tolist()}"
        return f"{'top1' if self.target is None else self.target} over {where}"


def region(target: object = None, box: object = None, mask: object = None) -> Region:
    """Target for segmentation models (output ``Tensor[B, K, H, W]``; Vinogradova et al.
    2020, "Towards Interpretable Semantic Segmentation via Gradient-weighted Class
    Activation Mapping"): the score is ``sum_{(i, j) in M} y_c(i, j)``, class ``c``'s logits
    summed over a region ``M`` of the output.

    Args:
        target: the class ``c``: any single-class form or ``contrast(a, b)`` (each class then
            summed over its own region). A ranked form (``"top1"``) ranks classes by that sum.
        box: ``(x0, y0, x1, y1)`` output pixels (x1/y1 exclusive), one for all images or a
            ``Tensor[B, 4]``; the same region for every class.
        mask: ``Tensor[H, W]`` or ``Tensor[B, H, W]`` (bool or 0/1) at output resolution.

    Neither box nor mask: ``M`` is the predicted mask of ``c`` (pixels whose top class is
    ``c``), read from the unmodified input: methods that run copies of the input (occlusion,
    SmoothGrad, Integrated Gradients, Score-CAM) keep that mask for every copy. A plain class
    target on a segmentation output means the same (each of those methods pins the mask on
    its own clean forward pass).
    """
    if box is not None and mask is not None:
        raise TargetError("region takes a box or a mask, not both")
    return Region(target, box, mask)


@dataclass(frozen=True)
class RegionSelector:
    """Per explained row, the output pixels whose logits are summed: ``masks`` (bool
    ``Tensor[N, H, W]``) or ``boxes`` (``Tensor[N, 4]``), one region for every class; or
    ``labels`` (``LongTensor[N, H, W]``): class ``k``'s region is where ``labels == k`` (a
    predicted mask pinned on the clean output); or none of them: class ``k``'s region is where
    the scored output itself predicts ``k``."""

    masks: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    @property
    def predicted(self) -> bool:
        return self.masks is None and self.boxes is None

    def weights(self, output: torch.Tensor) -> torch.Tensor:
        """``Tensor[N, K or 1, H, W]`` 0/1: the region of each class (or of all classes)."""
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise TargetError(
                f"region targets need a segmentation output [B, classes, H, W], got {shape}"
            )
        height, width = output.shape[-2:]
        if self.boxes is not None:
            return _box_masks(self.boxes, height, width)[:, None].to(output)
        if self.masks is not None:
            if tuple(self.masks.shape[-2:]) != (height, width):
                raise TargetError(
                    f"the region mask is {tuple(self.masks.shape[-2:])} but the model output is "
                    f"{height}x{width}; pass a mask at the output's resolution"
                )
            return self.masks[:, None].to(output)
        labels = output.detach().argmax(1) if self.labels is None else self.labels
        classes = torch.arange(output.shape[1], device=output.device)[None, :, None, None]
        return (labels.to(output.device)[:, None] == classes).to(output)

    def pool(self, output: torch.Tensor) -> torch.Tensor:
        """``Tensor[N, K]``: each class's output summed over its region."""
        return (output * self.weights(output)).sum((2, 3))

    def pin(self, output: torch.Tensor) -> RegionSelector:
        """A predicted region fixed to the prediction of ``output`` (the clean rows)."""
        if not self.predicted or self.labels is not None:
            return self
        return RegionSelector(labels=output.detach().argmax(1).cpu())

    def subset(self, rows) -> RegionSelector:
        return RegionSelector(
            *(None if t is None else t[rows] for t in (self.masks, self.boxes, self.labels))
        )


def _box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    x0, y0, x1, y1 = boxes.T
    if bool(((x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height) | (x1 <= x0) | (y1 <= y0)).any()):
        raise TargetError(
            f"region box {boxes[0].tolist()} must satisfy 0 <= x0 < x1 <= {width} and "
            f"0 <= y0 < y1 <= {height} (output pixels, x1/y1 exclusive)"
        )
    ys, xs = torch.arange(height)[None, :, None], torch.arange(width)[None, None, :]
    return (
        (xs >= x0[:, None, None])
        & (xs < x1[:, None, None])
        & (ys >= y0[:, None, None])
        & (ys < y1[:, None, None])
    )


def _region_selector(spec: Region, batch_size: int) -> RegionSelector:
    """Check a `Region`'s box or mask and give one per image."""
    if spec.box is not None:
        boxes = torch.as_tensor(spec.box).long().reshape(-1, 4)
        if len(boxes) == 1:
            boxes = boxes.expand(batch_size, 4)
        if len(boxes) != batch_size:
            raise TargetError(f"got {len(boxes)} region boxes for {batch_size} images")
        return RegionSelector(boxes=boxes.clone())
    if spec.mask is not None:
        mask = torch.as_tensor(spec.mask)
        if mask.dim() == 2:
            mask = mask.expand(batch_size, *mask.shape)
        if mask.dim() != 3 or len(mask) != batch_size:
            raise TargetError(
                f"a region mask is Tensor[H, W] or Tensor[{batch_size}, H, W], got "
                f"{tuple(mask.shape)}"
            )
        if mask.dtype != torch.bool:
            if bool(((mask != 0) & (mask != 1)).any()):
                raise TargetError("a region mask must be bool or 0/1")
            mask = mask != 0
        if not bool(mask.flatten(1).any(1).all()):
            raise TargetError("a region mask selects no pixel; give at least one pixel")
        return RegionSelector(masks=mask.detach().cpu().clone())
    return RegionSelector()


@dataclass(frozen=True)
class Targets:
    """Resolved targets for ``N`` explained rows, each tied to an input image.

    ``image_index``: ``Tensor[N]`` index of the input image each row explains.
    """

    image_index: torch.Tensor
    positive: ClassSelector | None = None
    negative: ClassSelector | None = None
    fn: ScoreFn | None = None
    spec: str = "top1"
    region: RegionSelector | None = None

    def __len__(self) -> int:
        return len(self.image_index)

    def expand(self, images: torch.Tensor) -> torch.Tensor:
        """The input rows to explain: ``images[image_index]`` (no copy when already 1:1)."""
        if len(self.image_index) == len(images) and bool(
            (self.image_index == torch.arange(len(images))).all()
        ):
            return images
        return images[self.image_index.to(images.device)]

    def class_ids(self, output: torch.Tensor) -> torch.Tensor | None:
        """The explained class per row (``None`` for callable targets)."""
        return None if self.positive is None else self.positive.resolve(self.class_scores(output))

    def class_scores(self, output: torch.Tensor) -> torch.Tensor:
        """``Tensor[N, K]`` the targets pick from: the logits of a classifier, or each
        class's logits summed over its region for a segmentation output ``[N, K, H, W]``."""
        if self.region is not None:
            return self.region.pool(output)
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            return RegionSelector().pool(output)
        return _logits(output)

    def probabilities(self, output: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        """``Tensor[N]`` softmax probability of each row's class; for a segmentation output,
        its mean over the class's region (0 for an empty region)."""
        probabilities = output.softmax(1)
        if probabilities.dim() == 2:
            return probabilities.gather(1, class_ids[:, None].to(output.device))[:, 0]
        region = self.region or RegionSelector()
        weights = region.weights(output).expand_as(probabilities)
        mean = (probabilities * weights).sum((2, 3)) / weights.sum((2, 3)).clamp_min(1)
        return mean.gather(1, class_ids[:, None].to(output.device))[:, 0]

    def score(self, output: torch.Tensor) -> torch.Tensor:
        """The explained scalar per row, ``Tensor[N]``, differentiable w.r.t. ``output``."""
        if self.fn is not None:
            scores = self.fn(output)
            rows = len(output)  # a Tensor[B, ...] or a detector's list of B dicts
            if not isinstance(scores, torch.Tensor) or scores.shape != (rows,):
                shape = getattr(scores, "shape", type(scores).__name__)
                raise TargetError(
                    f"a target callable must return one score per image, a Tensor of shape "
                    f"[{rows}], not {shape}"
                )
            _check_callable_score(scores, output)
            return scores
        logits = self.class_scores(output)
        positive = self.positive.resolve(logits)
        scores = logits.gather(1, positive[:, None])[:, 0]
        if self.negative is not None:
            negative = self.negative.resolve(logits)
            _refuse_self_contrast(positive, negative, self.spec)
            scores = scores - logits.gather(1, negative[:, None])[:, 0]
        return scores

    def copies(self, rows: torch.Tensor, clean: torch.Tensor) -> CopyTargets:
        """Targets for copies of explained rows: ``rows`` ``Tensor[M]`` (CPU) is the row each
        copy belongs to, ``clean`` the output ``Tensor[N, ...]`` on the unmodified rows."""
        return CopyTargets(self, rows, clean)

    def subset(self, rows: slice | torch.Tensor) -> Targets:
        """The targets of some rows (for chunked computation)."""

        def pick(selector: ClassSelector | None) -> ClassSelector | None:
            if selector is None:
                return None
            return ClassSelector(selector.ids[rows], selector.ranks[rows])

        return Targets(
            self.image_index[rows],
            pick(self.positive),
            pick(self.negative),
            self.fn,
            self.spec,
            None if self.region is None else self.region.subset(rows),
        )


def _check_callable_score(scores: torch.Tensor, output: object) -> None:
    """A callable target's scores must be real numbers computed from the output by
    differentiable operations: a class index (argmax), a comparison or an integer cast has
    no gradient, and a perturbation method could not average it."""
    if not scores.is_floating_point():
        raise TargetError(
            f"a target callable must return floating-point scores, got {scores.dtype}; return "
            "a logit or probability (output[:, k]), not a class index, a comparison or a cast"
        )
    tracked = isinstance(output, torch.Tensor) and output.requires_grad
    if tracked and not scores.requires_grad:
        raise TargetError(
            "a target callable's scores do not depend on the model output through "
            "differentiable operations (detached, or computed from an index); return "
            "something like output[:, k] or output.softmax(1)[:, k]"
        )


def _refuse_self_contrast(positive: torch.Tensor, negative: torch.Tensor, spec: str) -> None:
    """A contrast whose two sides name one class in some row (``top1`` against the top
    class by name, say) has a logit difference of 0 and an empty map: refused."""
    same = positive == negative
    if bool(same.any()):
        row = int(same.nonzero()[0, 0])
        raise TargetError(
            f"the contrast {spec} sets class {int(positive[row])} against itself (row {row}: "
            "both sides name it); its logit difference is 0 and every map is empty, so "
            "contrast two different classes"
        )


@dataclass(frozen=True)
class CopyTargets:
    """`Targets` for ``M`` copies (occluded, masked, noisy, ...) of explained rows.

    ``score(output)`` gives each copy's target score, ``Tensor[M]``, differentiable w.r.t.
    ``output`` (``Tensor[M, ...]``, the model output on the copies). Class targets score
    each copy with its row's class. A callable target is called with ``clean``
    (``Tensor[N, ...]``) in which the rows of some copies, at most one copy per row, are
    replaced by those copies' outputs; each copy's score is its row of the result. So the
    callable sees one row per image, whatever the chunking, and a copy's score does not
    depend on which other copies share its forward pass.
    """

    targets: Targets
    rows: torch.Tensor
    clean: torch.Tensor

    def subset(self, copies: slice | torch.Tensor) -> CopyTargets:
        """The targets of some of the copies (for chunked computation)."""
        return CopyTargets(self.targets, self.rows[copies], self.clean)

    def score(self, output: torch.Tensor) -> torch.Tensor:
        if self.targets.fn is None:
            return self.targets.subset(self.rows).score(output)
        picked, scores = [], []
        for rows_once in _rounds(self.rows):
            if isinstance(self.clean, torch.Tensor):
                own = self.rows[rows_once].to(self.clean.device)
                batch = self.clean.index_copy(0, own, output[rows_once.to(output.device)])
            else:  # a detector's list of per-image dicts
                own, batch = self.rows[rows_once], list(self.clean)
                for copy, row in zip(rows_once.tolist(), own.tolist(), strict=True):
                    batch[row] = output[copy]
            scores.append(self.targets.score(batch)[own])
            picked.append(rows_once)
        if not picked:
            return output.new_zeros(0) if isinstance(output, torch.Tensor) else torch.zeros(0)
        order = torch.cat(picked).argsort()
        return torch.cat(scores)[order.to(scores[0].device)]


def _rounds(rows: torch.Tensor) -> list[torch.Tensor]:
    """Positions of ``rows`` split into rounds in which each row value occurs at most once:
    round ``t`` holds each value's ``t``-th occurrence."""
    rounds: list[list[int]] = []
    seen: dict[int, int] = {}
    for position, row in enumerate(rows.tolist()):
        occurrence = seen.get(row, 0)
        seen[row] = occurrence + 1
        if occurrence == len(rounds):
            rounds.append([])
        rounds[occurrence].append(position)
    return [torch.tensor(positions, dtype=torch.long) for positions in rounds]


def _logits(output: torch.Tensor) -> torch.Tensor:
    if isinstance(output, (list, tuple)):
        raise TargetError(
            "class targets need a classifier output; this model returns a list (a detector's "
            "detections?): explain one detection with target=convlens.detection(N) "
            "(--target det:N)"
        )
    if isinstance(output, torch.Tensor) and output.dim() == 1:  # a regression Tensor[B]
        return output[:, None]
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise TargetError(
            f"class targets need a classifier output [B, classes] (or a segmentation output "
            f"[B, classes, H, W], or a regression output [B] / [B, 1]), got {shape}; "
            "pass target=callable(output) -> Tensor[B] for other models"
        )
    return output


_TOPK = re.compile(r"^top(\d+)$")


def resolve_targets(
    target: object,
    batch_size: int,
    labels: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> Targets:
    """Turn any accepted target form into `Targets` for ``batch_size`` images.

    ``labels`` resolve class names; ``num_classes`` (when known) checks ids up front.
    Raises `TargetError` (a ValueError) naming the allowed values.
    """
    rows = torch.arange(batch_size)
    if num_classes is None and labels:
        num_classes = len(labels)
    if isinstance(target, Region):
        inner = resolve_targets(target.target, batch_size, labels, num_classes)
        if inner.fn is not None or isinstance(target.target, Region):
            raise TargetError("region(target, ...) takes a class target or contrast(a, b)")
        kind = "box" if target.box is not None else "mask" if target.mask is not None else "pred"
        selector = _region_selector(target, batch_size).subset(inner.image_index)
        return dataclasses.replace(inner, region=selector, spec=f"{inner.spec}@{kind}")
    if isinstance(target, Similarity):
        raise TargetError(
            "similar_to(...) is resolved with the model (its reference is embedded first); "
            "pass it to convlens.explain or a method function, not to resolve_targets"
        )
    if callable(target) and not isinstance(target, (torch.Tensor, Contrast)):
        return Targets(rows, fn=target, spec=getattr(target, "__name__", "callable"))
    if isinstance(target, str) and (match := _TOPK.match(target)) and int(match[1]) > 1:
        k = _top_k(int(match[1]), num_classes)
        image_index = rows.repeat_interleave(k)
        ranks = torch.arange(k).repeat(batch_size)
        selector = ClassSelector(torch.full_like(ranks, -1), ranks)
        return Targets(image_index, selector, spec=target)
    if isinstance(target, Contrast):
        positive = _selector(target.positive, batch_size, labels, num_classes)
        negative = _selector(target.negative, batch_size, labels, num_classes)
        same = (positive.ids == negative.ids) & (positive.ranks == negative.ranks)
        if bool(same.any()):
            raise TargetError(
                f"the contrast {target_text(target)} sets a class against itself (its logit "
                "difference is 0 and every map is empty); contrast two different classes"
            )
        return Targets(rows, positive, negative, spec=f"{target.positive}-{target.negative}")
    selector = _selector(target, batch_size, labels, num_classes)
    return Targets(rows, selector, spec="top1" if target is None else str(_plain(target)))


def _plain(target: object) -> object:
    return target.tolist() if isinstance(target, torch.Tensor) else target


def _top_k(k: int, num_classes: int | None) -> int:
    if k < 1 or (num_classes is not None and k > num_classes):
        allowed = f"1 <= k <= {num_classes}" if num_classes is not None else "k >= 1"
        raise TargetError(f"top-k needs {allowed}, got {k}")
    return k


def _selector(
    target: object, batch_size: int, labels: Sequence[str] | None, num_classes: int | None
) -> ClassSelector:
    if target is None:
        target = "top1"
    if isinstance(target, np.ndarray):
        target = torch.from_numpy(target)
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.is_complex() or target.dim() > 1:
            raise TargetError(
                f"a target tensor must hold integer class ids of shape [{batch_size}], "
                f"got {target.dtype} {tuple(target.shape)}"
            )
        target = target.tolist()  # 0-d: a Python int or bool, checked below
    if isinstance(target, (list, tuple)):
        if len(target) != batch_size:
            raise TargetError(
                f"got {len(target)} targets for {batch_size} images; pass one target per "
                "image or a single target for all"
            )
        pairs = [_one_class(t, labels, num_classes) for t in target]
    else:
        pairs = [_one_class(target, labels, num_classes)] * batch_size
    ids = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    ranks = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    return ClassSelector(ids, ranks)


def _one_class(
    target: object, labels: Sequence[str] | None, num_classes: int | None
) -> tuple[int, int]:
    """(class id, -1) for an explicit class, (-1, rank) for ``"topN"``."""
    if isinstance(target, bool):
        raise TargetError("a target cannot be a bool; pass a class id, name or 'top1'")
    if isinstance(target, numbers.Integral):
        target = int(target)
        if target < 0 or (num_classes is not None and target >= num_classes):
            allowed = f"0..{num_classes - 1}" if num_classes is not None else "ids >= 0"
            raise TargetError(f"class id {target} is out of range; allowed: {allowed}")
        return target, -1
    if isinstance(target, str):
        if match := _TOPK.match(target):
            rank = int(match[1])
            _top_k(rank, num_classes)
            return -1, rank - 1
        if target.isdigit():
            return _one_class(int(target), labels, num_classes)
        return _class_by_name(target, labels), -1
    raise TargetError(
        f"cannot use a {type(target).__name__} as a target; pass a class id, a class "
        "name, 'top1'/'topK', a list with one per image, contrast(a, b) or a callable"
    )


def _class_by_name(name: str, labels: Sequence[str] | None) -> int:
    if not labels:
        raise TargetError(f"class name {name!r} needs the model's labels; pass a class id instead")
    lowered = [label.lower() for label in labels]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    close = difflib.get_close_matches(name.lower(), lowered, n=3)
    hint = (
        f"; did you mean {', '.join(repr(labels[lowered.index(c)]) for c in close)}?"
        if close
        else ""
    )
    raise TargetError(f"no class named {name!r}{hint}")


def parse_target(
    text: str,
    labels: Sequence[str] | None = None,
    *,
    rather_than: str | None = None,
    one_image: bool = False,
) -> object:
    """The target form that ``text`` names (the grammar in the module docstring).

    ``labels`` tell class names from text holding a hyphen: ``A-B`` is a contrast only when
    both parts are classes (ids, ``topK`` or names of ``labels``). ``rather_than`` (a class
    in the same words) makes it ``contrast(text, rather_than)``. ``one_image``: the target
    for a batch of one image that gets one map, so ``topK`` is its K-th most probable class
    rather than K rows. Empty text means ``top1``. Names are checked when the target is
    resolved (`resolve_targets`), against the model's labels."""
    text = text.strip() or "top1"
    if text.startswith("similar:"):
        reference = text[len("similar:") :].strip()
        if not reference:
            raise TargetError("similar:PATH needs the reference image's path after the colon")
        return similar_to(reference)
    if (found := parse_detection(text)) is not None:
        return found
    if rather_than is not None and rather_than.strip():
        return contrast(_single_class(text), _single_class(rather_than))
    parts = _contrast_parts(text, labels)
    if parts is not None:
        return contrast(*parts)
    single = _single_class(text)
    if one_image and _TOPK.match(text):
        return [text]
    return single


def target_text(target: object) -> str:
    """A target as a user would write it: ``tabby-espresso`` for a contrast, the class
    target of a region, else ``str(target)``."""
    if isinstance(target, Region):
        return target_text(target.target)
    if isinstance(target, Similarity):
        return str(target)
    if isinstance(target, Contrast):
        return f"{target.positive}-{target.negative}"
    return str(target)


def _single_class(text: str) -> int | str:
    """One class in words: an int for digits, else the text (a name or ``topK``, K >= 1)."""
    text = text.strip()
    if (match := _TOPK.match(text)) and int(match[1]) < 1:
        raise TargetError(f"{text!r}: ranks count from 1 (top1 is the most probable class)")
    return int(text) if text.isdigit() else text


def _names_a_class(text: str, labels: Sequence[str] | None) -> bool:
    text = text.strip()
    if text.isdigit() or _TOPK.match(text):
        return True
    return labels is not None and text.lower() in {name.lower() for name in labels}


def _contrast_parts(text: str, labels: Sequence[str] | None) -> tuple | None:
    """``(A, B)`` when ``text`` is ``A-B`` with both parts classes, else None (also when
    the whole text is one class, such as a name with a hyphen in it)."""
    if "-" not in text or _names_a_class(text, labels):
        return None
    for cut in [i for i, char in enumerate(text) if char == "-"]:
        left, right = text[:cut], text[cut + 1 :]
        if left.strip() and right.strip():
            if _names_a_class(left, labels) and _names_a_class(right, labels):
                return _single_class(left), _single_class(right)
    return None
