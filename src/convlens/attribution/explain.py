"""`explain`: one entry point for every registered method, returning an `Explanation`."""

from __future__ import annotations

import inspect
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convlens.attribution.common import normalize_maps, resolve_cam_layer
from convlens.attribution.registry import get_method, list_methods
from convlens.data.images import ImageBatch, load_images
from convlens.errors import ConvlensError
from convlens.layers.capture import borrowed_model
from convlens.layers.find import LayerSpec
from convlens.models.loading import LoadedModel, as_module
from convlens.targets import resolve_targets

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Explanation:
    """Maps of one method for ``N`` explained rows (``N = B`` images, or ``B * k`` for top-k).

    ``maps``: raw ``Tensor[N, H, W]`` at input resolution. ``image_index``: the input image
    of each row. ``class_ids``/``scores``: the explained class (None for callable targets)
    and the target score on the unmodified input. ``display``: ``uint8[N, H, W, 3]`` pixels
    the model saw (when known), for overlays.
    """

    maps: torch.Tensor
    method: str
    layer: str | None
    image_index: torch.Tensor
    class_ids: torch.Tensor | None
    scores: torch.Tensor
    probabilities: torch.Tensor | None
    class_names: list[str] | None
    sources: list[str]
    display: np.ndarray | None
    seconds: float
    target: str
    extras: dict = field(default_factory=dict)

    def normalized(self) -> torch.Tensor:
        """Each map scaled to [0, 1] (constant maps become zeros)."""
        return normalize_maps(self.maps)

    def overlay(self, row: int = 0, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
        """``uint8[H, W, 3]``: row ``row``'s normalised map over the image the model saw."""
        from convlens.render import overlay

        if self.display is None:
            raise ConvlensError(
                "no display image is known for this explanation; pass images through a "
                "LoadedModel (or use convlens.render.overlay with your own image)"
            )
        return overlay(self.display[row], self.normalized()[row], alpha=alpha, cmap=cmap)

    def record(self) -> dict:
        """JSON-ready summary (no arrays)."""
        rows = []
        for row in range(len(self.maps)):
            rows.append(
                {
                    "source": self.sources[row] if self.sources else None,
                    "class_id": None if self.class_ids is None else int(self.class_ids[row]),
                    "class_name": None if self.class_names is None else self.class_names[row],
                    "score": float(self.scores[row]),
                    "probability": None
                    if self.probabilities is None
                    else float(self.probabilities[row]),
                }
            )
        extras = {k: _jsonable(v) for k, v in self.extras.items()}
        return {
            "schema_version": SCHEMA_VERSION,
            "method": self.method,
            "layer": self.layer,
            "target": self.target,
            "seconds": self.seconds,
            "rows": rows,
            "extras": extras,
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``maps.npy`` (raw), one overlay PNG per row (when the display image is
        known) and ``manifest.json``. A folder left half-written by an error is removed."""
        from convlens.render import save_png

        folder = Path(folder)
        existed = folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / "maps.npy", self.maps.cpu().numpy())
            files = []
            if self.display is not None:
                for row in range(len(self.maps)):
                    name = f"{row:03d}_{self.method}.png"
                    save_png(self.overlay(row), folder / name)
                    files.append(name)
            manifest = self.record() | {"maps": "maps.npy", "overlays": files}
            (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
        except BaseException:
            if not existed:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def explain(
    model: nn.Module | LoadedModel,
    images,
    method: str = "gradcam",
    target: object = None,
    layer: LayerSpec | None = None,
    **options,
) -> Explanation:
    """Explain ``target`` for ``images`` with a registered ``method``.

    Args:
        model: a LoadedModel or any nn.Module (borrowed: handed back unchanged).
        images: a preprocessed ``Tensor[B, 3, H, W]``, an `ImageBatch`, or with a
            LoadedModel anything `load_images` takes (paths, sample names, PIL images,
            arrays).
        method: a name from `list_methods()` (``"gradcam"``, ``"saliency"``, ...).
        target: see `convlens.targets` (default: each image's top class).
        layer: for methods that use a layer; default the last spatial layer.
        options: passed to the method (``steps=``, ``patch=``, ...).
    """
    info = get_method(method)
    tensor, display, sources = _as_model_input(model, images)
    module = as_module(model)
    if info.uses_layer:
        layer = resolve_cam_layer(module, tensor, layer)
    elif layer is not None:
        options["layer"] = layer
    start = time.perf_counter()
    if info.uses_layer:
        result = info.fn(model, tensor, target, layer=layer, **options)
    else:
        result = info.fn(model, tensor, target, **options)
    seconds = time.perf_counter() - start
    maps, extras = result if isinstance(result, tuple) else (result, {})
    labels = model.labels if isinstance(model, LoadedModel) else None
    targets = resolve_targets(target, len(tensor), labels=labels)
    with borrowed_model(module), torch.no_grad():
        output = module(targets.expand(tensor))
    scores = targets.score(output)
    class_ids = targets.class_ids(output) if targets.fn is None else None
    probabilities = None
    if class_ids is not None:
        probabilities = output.softmax(1).gather(1, class_ids[:, None])[:, 0]
    names = None
    if class_ids is not None:
        names = [
            model.label(int(c)) if isinstance(model, LoadedModel) else f"class {int(c)}"
            for c in class_ids
        ]
    rows = targets.image_index
    return Explanation(
        maps=maps.detach(),
        method=method,
        layer=layer if info.uses_layer else None,
        image_index=rows,
        class_ids=class_ids,
        scores=scores.detach(),
        probabilities=probabilities,
        class_names=names,
        sources=[sources[i] for i in rows.tolist()] if sources else [],
        display=None if display is None else display[rows.numpy()],
        seconds=seconds,
        target=targets.spec,
        extras=extras,
    )


def method_names(spec: str) -> list[str]:
    """``"gradcam,occlusion"`` or ``"all"`` to a list of registered names (checked)."""
    if spec.strip() == "all":
        return [info.name for info in list_methods()]
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise ConvlensError("no method given; pass --method NAME[,NAME...] or 'all'")
    return [get_method(name).name for name in names]


def explain_methods(
    model: LoadedModel | nn.Module,
    images,
    methods: list[str],
    target: object = None,
    layer: LayerSpec | None = None,
    progress: bool = False,
) -> list[Explanation]:
    """`explain` with each of ``methods`` on the same images (loaded once); the layer of
    layer-based methods is resolved once. ``progress`` shows a bar for slow methods."""
    tensor, display, sources = _as_model_input(model, images)
    batch = ImageBatch(tensor, display, sources) if display is not None else tensor
    infos = [get_method(name) for name in methods]
    if layer is None and any(info.uses_layer for info in infos):
        layer = resolve_cam_layer(as_module(model), tensor, None)
    results = []
    for info in infos:
        options = {}
        if progress and info.slow and "progress" in inspect.signature(info.fn).parameters:
            options["progress"] = True
        results.append(
            explain(model, batch, info.name, target, layer if info.uses_layer else None, **options)
        )
    return results


def top_predictions(model: LoadedModel | nn.Module, images: torch.Tensor, k: int = 5) -> list:
    """Per image, the ``k`` most probable classes: ``[{"class_id", "label", "probability"}]``."""
    module = as_module(model)
    with borrowed_model(module), torch.no_grad():
        probabilities = module(images).softmax(dim=1)
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    label = model.label if isinstance(model, LoadedModel) else (lambda c: f"class {c}")
    return [
        [
            {"class_id": int(c), "label": label(int(c)), "probability": float(p)}
            for p, c in zip(row_values, row_ids, strict=True)
        ]
        for row_values, row_ids in zip(values, indices, strict=True)
    ]


def _as_model_input(model, images) -> tuple[torch.Tensor, np.ndarray | None, list[str]]:
    if isinstance(images, ImageBatch):
        return images.tensor, images.display, list(images.sources)
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        display = None
        if isinstance(model, LoadedModel):
            pixels = model.preprocess.denormalize(images)
            display = (pixels.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        return images, display, [f"<tensor {i}>" for i in range(len(images))]
    if not isinstance(model, LoadedModel):
        raise ConvlensError(
            "with a bare nn.Module, images must be a preprocessed Tensor[B, 3, H, W]; "
            "or wrap the model with convlens.load_model(module, preprocess=...) to pass files"
        )
    batch = load_images(images, preprocess=model.preprocess)
    return batch.tensor, batch.display, batch.sources
