"""D-RISE (Petsiuk et al. 2021, "Black-box Explanation of Object Detectors via Saliency
Maps"): the black-box method for one detection of a detector (`convlens.detections`).

The masks are RISE's (`convlens.attribution.black_box.RiseDraws`: a ``cells x cells`` grid of
Bernoulli(``keep``) cells, upsampled bilinearly with a random shift); each masked image
``x * m_k`` is run through the detector, and mask ``k`` is weighted by how much its
detections still contain the explained one:

    w_k = max_j  IoU(L_t, L_j) * cos(P_t, P_j) * O_j

over the detections ``j`` of the masked image, where ``L`` are boxes, ``t`` is the
reference detection (`Detection.pin`: detection ``index`` of the unmasked image), ``P_t`` is
the one-hot vector of its label, ``P_j`` is detection ``j``'s class-probability vector and
``O_j`` its objectness. Detectors report these to different extents, and the weight uses
what the output holds:

- ``class_scores`` ``Tensor[D, K]`` present: ``P_j`` is that row (so ``cos = P_j[c] /
  ||P_j||``); otherwise ``P_j`` is the one-hot vector of ``labels[j]`` (``cos`` is 1 for the
  same label, else 0);
- ``objectness`` ``Tensor[D]`` present: ``O_j`` is it; otherwise, when ``class_scores`` is
  present too, ``O_j = 1``; when neither is (torchvision's detectors), ``O_j = scores[j]``,
  the detection's class score, so that the score's fall with the mask still counts.

The map is ``1 / (N keep) * sum_k w_k m_k`` (RISE's normalisation: the expected weight of a
pixel given that it is kept), ``Tensor[N, H, W]``.
"""

from __future__ import annotations

import torch
from torch import nn

from convlens.attribution.black_box import RiseDraws
from convlens.attribution.common import (
    chunk_size,
    clean_pass,
    forward_copies,
    in_chunks,
    prepare,
    work_items,
)
from convlens.attribution.registry import MethodResult, register_method
from convlens.data.progress import progress_bar
from convlens.detections import Detection, box_iou, check_detections
from convlens.errors import TargetError
from convlens.layers.borrow import borrowed_model
from convlens.models.loading import LoadedModel


def detection_similarity(item: dict, box: torch.Tensor, label: int) -> torch.Tensor:
    """D-RISE's weight of one image's detections ``item`` for the reference ``(box, label)``
    (the module docstring): ``max_j IoU * cos * O``, a 0-d float tensor (0 without
    detections)."""
    boxes = item["boxes"].float()
    if len(boxes) == 0:
        return torch.zeros((), device=boxes.device)
    ious = box_iou(boxes, box.to(boxes))
    class_scores = item.get("class_scores")
    if class_scores is not None:
        vectors = class_scores.float()
        cosine = vectors[:, label] / vectors.norm(dim=1).clamp_min(1e-12)
        objectness = item.get("objectness")
        objectness = torch.ones_like(ious) if objectness is None else objectness.float()
    else:
        cosine = (item["labels"] == label).float()
        objectness = item.get("objectness")
        objectness = item["scores"].float() if objectness is None else objectness.float()
    return (ious * cosine * objectness).max()


# head="detector": like the trained-head methods, it works on one kind of model only (a
# detector), so `list_methods()` and ``--method all`` leave it out; it is found by name.
@register_method("drise", "perturbation", slow=True, head="detector")
def drise(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    target: object = None,
    *,
    n_masks: int = 1000,
    cells: int = 8,
    keep: float = 0.5,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> MethodResult:
    """D-RISE (Petsiuk et al. 2021): RISE masks weighted by how well the masked image's
    detections match the explained detection.

    ``target``: a detection target (`convlens.detection`, ``--target det:N``; None means
    ``detection(0)``). Masks as `rise_masks` with ``n_masks``, ``cells``, ``keep`` and
    ``seed`` (the same masks for every image); each weighted by ``max_j IoU x cos x
    objectness`` over the masked image's detections (the module docstring of
    `convlens.attribution.detection` says which output entries it reads). ``images``: what
    the detector takes (torchvision detectors: ``[0, 1]`` pixels; masking multiplies them,
    so masked parts are black). ``batch_size``: masked copies built at a time (never changes
    results). Costs ``n_masks * images + images`` forward passes without autograd.
    Returns ``Tensor[N, H, W]``.
    """
    if target is None:
        target = Detection()
    if not isinstance(target, Detection):
        raise TargetError(
            "drise explains one detection: pass target=convlens.detection(N) (--target det:N)"
        )
    prepared = prepare(model, images, target)
    x = prepared.images
    draws = RiseDraws.draw(n_masks, tuple(x.shape[2:]), cells, keep, seed)
    rows = len(x)
    mask_of, row_of = work_items(n_masks, rows)
    total = torch.zeros(rows, *x.shape[2:], dtype=torch.float32, device=x.device)
    with borrowed_model(prepared.module), torch.no_grad():
        output, pinned = clean_pass(prepared)
        boxes, labels = pinned.fn.references
        chunks = list(in_chunks(len(row_of), chunk_size(batch_size, rows)))
        for chunk in progress_bar(chunks, disable=not progress, desc="drise", leave=False):
            used, position = mask_of[chunk].unique(return_inverse=True)
            masks = draws.masks(used).to(x.device)[position.to(x.device)]
            row = row_of[chunk]
            masked = x[row.to(x.device)] * masks[:, None].to(x.dtype)
            detections = check_detections(forward_copies(prepared.module, masked))
            weights = torch.stack(
                [
                    detection_similarity(item, boxes[r], int(labels[r])).to(total.device)
                    for item, r in zip(detections, row.tolist(), strict=True)
                ]
            )
            total.index_add_(0, row.to(x.device), weights[:, None, None] * masks)
    return MethodResult(total / (n_masks * float(keep)), output)
