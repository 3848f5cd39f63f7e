"""Network dissection (Bau et al. 2017, "Network Dissection: Quantifying Interpretability
of Deep Visual Representations"): which channels of a layer detect which concepts?

For channel ``k`` of a layer and a data set whose images come with concept masks
(`convlens.data.concept_masks`: the synthetic scenes' shapes, fills and colour bands, or a
user's label maps):

1. the threshold ``T_k`` is the channel's top ``quantile`` level over the data set (0.005
   as in the paper): the value with ``P(a_k > T_k) = quantile`` over every position of
   every image, at the layer's own resolution (`TopQuantile`, exact: ``T_k`` is the
   ``(m + 1)``-th largest of the ``n`` values, ``m = floor(quantile * n)``, so exactly
   ``m`` values lie above it when no two are equal);
2. each image's activation map of the channel is upsampled to the masks' resolution
   (bilinear, `convlens.maps.resize_maps`) and thresholded: ``M_k = a_k > T_k``;
3. the IoU of channel ``k`` with concept ``c`` is accumulated over the data set:
   ``IoU = sum_x |M_k(x) & L_c(x)| / sum_x |M_k(x) | L_c(x)|`` (`IouCounter`; 0 when the
   union is empty);
4. the channel's label is its best concept and that IoU; it is a *detector* when that IoU
   exceeds ``iou_threshold`` (0.04 as in the paper), and the layer's *unique detectors* are
   the distinct concepts among its detectors.

The control is the same architecture with random weights (`random_weights`: every module
with a ``reset_parameters`` re-initialised from a seeded generator), dissected on the same
images in the same passes. Two passes over the data: the thresholds, then the IoUs.
Memory: the IoU counts are flat (channels x concepts); the exact quantile keeps the top
``quantile * n + 1`` values per channel, 1/200 of the layer's activations over the data
set at the default quantile (e.g. 1281 values per channel for 1000 images with 16x16 maps).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from convlens.data.concept_masks import Concept, ConceptData, concept_data
from convlens.errors import DataError, LayerError, ModelLoadError
from convlens.files import write_json
from convlens.layers import borrowed_model, capture, resolve_layer
from convlens.layers.early_stop import run_until
from convlens.maps import resize_maps
from convlens.models.devices import placed_on
from convlens.models.loading import LoadedModel, load_model

DEFAULT_QUANTILE = 0.005
DEFAULT_IOU_THRESHOLD = 0.04
DEFAULT_DATA = "scenes-test:1000"
RESULT_FILE = "dissect.json"
_CHUNK_ELEMENTS = 1 << 24  # upsampled activations held at once (64 MiB of float32)
QUANTILE_METHOD = (
    "exact: T_k is the (m+1)-th largest of the n activation values of channel k over the "
    "data set at the layer's resolution, m = floor(quantile * n)"
)


@dataclass(frozen=True)
class ChannelLabel:
    """A channel's best concept: ``channel``, ``concept`` and ``group`` (see
    `convlens.data.concept_masks.Concept`), ``iou`` in [0, 1], ``threshold`` ``T_k``, and
    ``on_share`` the share of the data set's pixels where the upsampled channel exceeds it
    (the IoU with a concept covering a share ``s`` is at most ``min(on, s) / max(on, s)``)."""

    channel: int
    concept: str
    group: str
    iou: float
    threshold: float
    on_share: float = 0.0

    def record(self) -> dict:
        """Every field, by name (one entry of ``dissect.json``'s ``channels``)."""
        return asdict(self)


@dataclass(frozen=True)
class Dissection:
    """One layer of one model dissected: ``iou`` ``Tensor[K, C]`` (float64, every channel
    against every concept), ``thresholds`` ``Tensor[K]``, ``concept_pixels``
    ``LongTensor[C]`` (each concept's mask pixels over the data set), ``on_share``
    ``Tensor[K]`` (the share of pixels where each channel is on), ``weights``
    ``"trained"`` or ``"random"`` (then ``seed`` and ``kept_parameters``, the parameters no
    ``reset_parameters`` reached), ``control`` the random-weights dissection of the same
    layer (or None)."""

    layer: str
    model: str
    data: str
    images: int
    concepts: tuple[Concept, ...]
    iou: torch.Tensor
    thresholds: torch.Tensor
    concept_pixels: torch.Tensor
    on_share: torch.Tensor | None = None
    quantile: float = DEFAULT_QUANTILE
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    weights: str = "trained"
    seed: int | None = None
    kept_parameters: list[str] = field(default_factory=list)
    control: Dissection | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def channels(self) -> list[ChannelLabel]:
        """Each channel's best concept (the first of equal IoUs), in channel order."""
        best, index = self.iou.max(1)
        return [
            ChannelLabel(
                k,
                self.concepts[int(c)].name,
                self.concepts[int(c)].group,
                float(best[k]),
                float(self.thresholds[k]),
                0.0 if self.on_share is None else float(self.on_share[k]),
            )
            for k, c in enumerate(index.tolist())
        ]

    @property
    def detectors(self) -> list[ChannelLabel]:
        """The channels whose best IoU exceeds ``iou_threshold``."""
        return [label for label in self.channels if label.iou > self.iou_threshold]

    @property
    def unique_detectors(self) -> int:
        """The count of distinct concepts among the detectors."""
        return len({label.concept for label in self.detectors})

    def summary(self) -> dict:
        """``{"unique_detectors", "detectors", "mean_iou", "max_iou", "detector_concepts"}``
        (IoUs: of each channel's best concept)."""
        best = self.iou.max(1).values
        counts: dict[str, int] = {}
        for label in self.detectors:
            counts[label.concept] = counts.get(label.concept, 0) + 1
        return {
            "unique_detectors": self.unique_detectors,
            "detectors": len(self.detectors),
            "mean_iou": float(best.mean()) if len(best) else 0.0,
            "max_iou": float(best.max()) if len(best) else 0.0,
            "detector_concepts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        }

    def record(self) -> dict:
        """The JSON of ``DIR/<layer>/dissect.json``: the settings, ``channels`` (``{"channel",
        "concept", "group", "iou", "threshold"}``), the `summary` and the concepts, and the
        same under ``"control"`` for the random weights."""
        document = {
            "layer": self.layer,
            "model": self.model,
            "weights": self.weights,
            "data": self.data,
            "images": self.images,
            "quantile": self.quantile,
            "quantile_method": QUANTILE_METHOD,
            "upsampling": "bilinear, to the concept masks' resolution",
            "iou_threshold": self.iou_threshold,
            **self.summary(),
            "channels": [label.record() for label in self.channels],
            "concepts": [
                {"name": c.name, "group": c.group, "pixels": int(p)}
                for c, p in zip(self.concepts, self.concept_pixels.tolist(), strict=True)
            ],
        }
        if self.weights == "random":
            document["seed"] = self.seed
            document["reinitialised"] = (
                "every module with reset_parameters, from torch.manual_seed(seed)"
            )
            document["kept_parameters"] = self.kept_parameters
        if self.control is not None:
            document["control"] = self.control.record()
        if self.skipped:
            document["skipped"] = [{"source": s, "message": m} for s, m in self.skipped]
        return document


class TopQuantile:
    """Streaming exact top-``quantile`` level of each channel (module docstring, step 1):
    `update` with ``Tensor[B, K, h, w]`` activations, then `thresholds`. ``capacity``
    bounds the values kept per channel: ``floor(quantile * n) + 1`` for the largest ``n``
    that will be seen (more values than that raise `DataError`)."""

    def __init__(self, quantile: float, capacity: int):
        if not 0.0 < quantile < 1.0:
            raise DataError(f"quantile must lie in (0, 1), got {quantile}")
        self.quantile, self.capacity = quantile, max(1, int(capacity))
        self.top: torch.Tensor | None = None
        self.count = 0

    def update(self, activations: torch.Tensor) -> None:
        values = activations.detach().float().transpose(0, 1).flatten(1)  # [K, B*h*w]
        merged = values if self.top is None else torch.cat([self.top, values], 1)
        self.count += values.shape[1]
        if self.kept(self.count) > self.capacity:
            raise DataError(
                f"{self.count} values per channel but the quantile was sized for fewer; "
                "give the item count up front"
            )
        self.top = merged.topk(min(self.capacity, merged.shape[1]), dim=1).values

    def kept(self, count: int) -> int:
        """``floor(quantile * count) + 1``: the values above and at the threshold."""
        return math.floor(self.quantile * count) + 1

    def thresholds(self) -> torch.Tensor:
        """``Tensor[K]``: the ``(m + 1)``-th largest value per channel, ``m = floor(quantile *
        n)``."""
        if self.top is None:
            raise DataError("no activation was seen; the data set held no readable image")
        return self.top[:, self.kept(self.count) - 1]


def top_quantile(values: torch.Tensor, quantile: float = DEFAULT_QUANTILE) -> torch.Tensor:
    """``Tensor[K]``: the exact top-``quantile`` level of each row of ``Tensor[K, n]``
    (``T`` with ``floor(quantile * n)`` values above it when no two are equal)."""
    counter = TopQuantile(quantile, math.floor(quantile * values.shape[1]) + 1)
    counter.update(values[None])
    return counter.thresholds()


class IouCounter:
    """Intersections and unions of thresholded channels with concept masks, summed over the
    data set (module docstring, steps 2 and 3): `update` per batch, then `iou`.
    ``chunk_elements`` bounds the upsampled activations held at once (channels are taken
    in groups); it changes no count."""

    def __init__(
        self, concepts: tuple[Concept, ...], channels: int, chunk_elements: int = _CHUNK_ELEMENTS
    ):
        self.concepts, self.chunk_elements = concepts, chunk_elements
        self.groups = 1 + max(c.index for c in concepts)
        self.sizes = [
            1 + max(c.value for c in concepts if c.index == g) for g in range(self.groups)
        ]
        self.intersections = [torch.zeros(channels, v, dtype=torch.long) for v in self.sizes]
        self.pixels = [torch.zeros(v, dtype=torch.long) for v in self.sizes]
        self.active = torch.zeros(channels, dtype=torch.long)
        self.total = 0  # pixels of the masks seen

    def update(
        self, activations: torch.Tensor, thresholds: torch.Tensor, maps: torch.Tensor
    ) -> None:
        """``activations`` ``Tensor[B, K, h, w]``, ``thresholds`` ``Tensor[K]``, ``maps``
        ``LongTensor[B, G, H, W]`` (concept values, -1 none)."""
        batch, channels = activations.shape[:2]
        height, width = maps.shape[-2:]
        maps = maps.to(activations.device)
        self.total += batch * height * width
        thresholds = thresholds.to(activations.device)
        step = max(1, self.chunk_elements // max(1, batch * height * width))
        for start in range(0, channels, step):
            part = activations[:, start : start + step].float()
            up = resize_maps(part.flatten(0, 1), (height, width)).view(batch, -1, height, width)
            active = up > thresholds[start : start + step, None, None]
            self.active[start : start + step] += active.sum((0, 2, 3)).cpu()
            b, k, y, x = active.nonzero(as_tuple=True)
            for g, size in enumerate(self.sizes):
                values = maps[b, g, y, x]
                keep = values >= 0
                index = (k[keep] + start) * size + values[keep]
                counts = torch.bincount(index, minlength=channels * size)
                self.intersections[g] += counts.view(channels, size).cpu()
        for g, size in enumerate(self.sizes):
            values = maps[:, g].flatten()
            self.pixels[g] += torch.bincount(values[values >= 0], minlength=size).cpu()

    def concept_pixels(self) -> torch.Tensor:
        """``LongTensor[C]``: each concept's mask pixels so far."""
        return torch.tensor([int(self.pixels[c.index][c.value]) for c in self.concepts])

    def on_share(self) -> torch.Tensor:
        """``Tensor[K]``: the share of pixels where each channel was on."""
        return self.active.double() / max(1, self.total)

    def iou(self) -> torch.Tensor:
        """``Tensor[K, C]`` float64: summed intersection over summed union (0 when empty)."""
        inter = torch.stack(
            [self.intersections[c.index][:, c.value] for c in self.concepts], 1
        ).double()
        union = self.active.double()[:, None] + self.concept_pixels().double()[None] - inter
        return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))


def random_weights(module: nn.Module, seed: int = 0) -> tuple[nn.Module, list[str]]:
    """A copy of ``module`` (on the CPU, eval mode) with every submodule that has a
    ``reset_parameters`` re-initialised from ``torch.manual_seed(seed)`` (the caller's
    random state is kept), and the names of the parameters none reached (left as
    trained). ``module`` itself is not changed."""
    try:
        twin = copy.deepcopy(module).cpu()
    except Exception as error:  # a model that cannot be copied (TorchScript, open handles)
        raise ModelLoadError(
            f"cannot copy the model for the random-weights control ({error}); "
            "dissect without the control (control=False, --no-control)"
        ) from error
    before = {name: p.detach().clone() for name, p in twin.named_parameters()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for sub in twin.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
    kept = [name for name, p in twin.named_parameters() if torch.equal(p.detach(), before[name])]
    return twin.eval(), kept


def dissect(
    model: nn.Module | LoadedModel | str,
    layers,
    data: str | Path | ConceptData = DEFAULT_DATA,
    *,
    quantile: float = DEFAULT_QUANTILE,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    control: bool = True,
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> list[Dissection]:
    """Network dissection of each of ``layers`` (module docstring).

    Args:
        model: a LoadedModel, a registered name or path, or an nn.Module (borrowed, handed
            back unchanged).
        layers: one layer or a list (names, or ``#N`` rows of ``convlens layers``).
        data: ``scenes[:N]``, ``scenes-test[:N]``, a label-map folder or a `ConceptData`
            (`convlens.data.concept_masks.concept_data`).
        quantile: the top share of each channel's activations that counts as "on".
        iou_threshold: a channel is a detector when its best IoU exceeds this.
        control: also dissect the same architecture with random weights (``seed``).

    Returns one `Dissection` per layer, in the order given, each with its ``control``.

    Example:
        >>> result = dissect("synthetic-scenes", "features.16", "scenes-test:2")
        >>> result[0].layer, len(result[0].channels), result[0].control.weights
        ('features.16', 48, 'random')
    """
    loaded = load_model(model)
    module = loaded.module
    layer_list = layers if isinstance(layers, (list, tuple)) else [layers]
    names = list(dict.fromkeys(resolve_layer(module, layer)[0] for layer in layer_list))
    if not names:
        raise LayerError("no layer given; name at least one (see 'convlens layers')")
    if not 0.0 <= iou_threshold <= 1.0:
        raise DataError(f"iou_threshold must lie in [0, 1], got {iou_threshold}")
    if not 0.0 < quantile < 1.0:
        raise DataError(f"quantile must lie in (0, 1) (the paper's is 0.005), got {quantile}")
    source = concept_data(data)
    twin, kept = random_weights(module, seed) if control else (None, [])
    with placed_on(module, device) as where:
        models = [module] if twin is None else [module, twin.to(where)]
        quantiles = _thresholds(models, names, source, loaded, quantile, batch_size)
        counters, images, skipped = _intersections(
            models, names, source, loaded, quantiles, batch_size
        )
    results = []
    for name in names:
        runs = [
            Dissection(
                layer=name,
                model=loaded.name,
                data=source.name,
                images=images,
                concepts=source.concepts,
                iou=counters[i][name].iou(),
                thresholds=quantiles[i][name].cpu(),
                concept_pixels=counters[i][name].concept_pixels(),
                on_share=counters[i][name].on_share(),
                quantile=quantile,
                iou_threshold=iou_threshold,
                weights="trained" if i == 0 else "random",
                seed=None if i == 0 else seed,
                kept_parameters=[] if i == 0 else kept,
                skipped=skipped if i == 0 else [],
            )
            for i in range(len(models))
        ]
        if len(runs) == 2:
            runs[0] = replace(runs[0], control=runs[1])
        results.append(runs[0])
    return results


def save_dissections(results: list[Dissection], folder: str | Path) -> list[Path]:
    """Write each result's `Dissection.record` to ``folder/<layer>/dissect.json``."""
    return [
        write_json(Path(folder) / result.layer / RESULT_FILE, result.record()) for result in results
    ]


def _activations(module: nn.Module, names: list[str], images: torch.Tensor) -> dict:
    """``{layer: Tensor[B, K, h, w]}`` of one forward pass that stops after the last layer."""
    device = next(iter(module.parameters()), images).device
    with borrowed_model(module), torch.no_grad(), capture(module, names) as cap:
        run_until(module, names, images.to(device))
        outputs = {name: cap.activation(name) for name in names}
    for name, output in outputs.items():
        if output.dim() != 4:
            raise LayerError(
                f"layer {name!r} gives {tuple(output.shape)}, not channel maps [B, K, h, w]; "
                "dissect a convolutional layer (see 'convlens layers')"
            )
    return outputs


def _thresholds(models, names, source: ConceptData, loaded, quantile, batch_size) -> list[dict]:
    """Pass 1: ``[{layer: Tensor[K]}]`` per model, the top-quantile levels."""
    counters: list[dict[str, TopQuantile]] = [{} for _ in models]
    for batch, _ in source.batches(loaded.preprocess, batch_size):
        if batch is None:
            continue
        for i, module in enumerate(models):
            for name, output in _activations(module, names, batch.images).items():
                if name not in counters[i]:
                    cells = output.shape[2] * output.shape[3]
                    counters[i][name] = TopQuantile(
                        quantile, _capacity(quantile, len(source) * cells)
                    )
                counters[i][name].update(output)
    if not counters[0]:
        raise DataError(f"{source.name}: no readable image; nothing to dissect")
    return [{name: c.thresholds() for name, c in per_model.items()} for per_model in counters]


def _capacity(quantile: float, values: int) -> int:
    return math.floor(quantile * values) + 1


def _intersections(models, names, source: ConceptData, loaded, quantiles, batch_size):
    """Pass 2: ``([{layer: IouCounter}] per model, images read, skipped)``."""
    counters: list[dict[str, IouCounter]] = [{} for _ in models]
    images, skipped = 0, []
    for batch, unread in source.batches(loaded.preprocess, batch_size):
        skipped.extend(unread)
        if batch is None:
            continue
        images += len(batch.images)
        for i, module in enumerate(models):
            for name, output in _activations(module, names, batch.images).items():
                counter = counters[i].setdefault(name, IouCounter(source.concepts, output.shape[1]))
                counter.update(output, quantiles[i][name], batch.maps)
    return counters, images, skipped
