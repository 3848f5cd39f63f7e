"""`explain`: one entry point for every registered method, returning an `Explanation`."""

from __future__ import annotations

import difflib
import inspect
import numbers
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convlens.attribution.common import prepare, resolve_cam_layer, resolve_reference
from convlens.attribution.methods import get_method, list_methods
from convlens.attribution.registry import MethodInfo, MethodResult
from convlens.data.folders import replaced_folder
from convlens.data.images import ImageBatch, load_images
from convlens.detections import Detection, detach_output, is_detections, top_detections
from convlens.errors import ConvlensError, MethodError
from convlens.files import LEDGER, atomic_file, owned, write_json
from convlens.layers.borrow import borrowed_model
from convlens.layers.find import LayerSpec
from convlens.maps import normalize_maps
from convlens.models.devices import DeviceSpec, model_input, placed_on, to_cpu
from convlens.models.loading import LoadedModel, as_module
from convlens.models.outputs import OutputKey
from convlens.models.outputs import output_key as reading_output
from convlens.targets import Targets

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Explanation:
    """Maps of one method for ``N`` explained rows (``N = B`` images, or ``B * k`` for top-k).

    ``maps``: raw ``Tensor[N, H, W]`` at input resolution. ``image_index``: the input image
    of each row. ``class_ids``/``scores``: the explained class (None for callable targets)
    and the target score on the unmodified input. ``display``: ``uint8[N, H, W, 3]`` pixels
    the model saw (when known), for overlays. ``output``: the model output on the
    unmodified rows (``Tensor[N, K]`` for a classifier), from the method's own forward pass.
    ``rather_than_ids``/``rather_than_names``: for a contrast target, the class each row is
    explained against (its score was subtracted), ``rather_than_probabilities`` its
    probability (as ``probabilities``). ``gradient``: the signed input gradient
    ``Tensor[N, C, H, W]`` behind a guided-backprop or deconvnet map (None otherwise).
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
    output: torch.Tensor | None = None
    rather_than_ids: torch.Tensor | None = None
    rather_than_names: list[str] | None = None
    gradient: torch.Tensor | None = None
    rather_than_probabilities: torch.Tensor | None = None

    def __post_init__(self) -> None:
        """Every tensor on the CPU for drawing and saving, whatever device the model ran on
        (half and bfloat16 maps widened to float32)."""
        tensors = ("maps", "image_index", "class_ids", "scores", "probabilities", "output")
        for name in (*tensors, "rather_than_ids", "rather_than_probabilities", "gradient"):
            object.__setattr__(self, name, to_cpu(getattr(self, name)))
        object.__setattr__(self, "extras", {k: to_cpu(v) for k, v in self.extras.items()})

    def normalized(self) -> torch.Tensor:
        """Each map min-max scaled to [0, 1] (constant maps become zeros), for numeric use;
        `overlay` draws signed maps centred at 0 instead."""
        return normalize_maps(self.maps)

    def overlay(self, row: int = 0, alpha: float = 0.5, cmap: str | None = None) -> np.ndarray:
        """``uint8[H, W, 3]``: row ``row``'s map over the image the model saw, drawn like the
        CLI panel (`convlens.render.images.overlay_map`: non-negative maps min-max in jet,
        signed maps centred at 0 in blue-white-red; ``cmap`` overrides the colormap)."""
        from convlens.render.images import overlay_map

        if self.display is None:
            raise ConvlensError(
                "no display image is known for this explanation; pass images through a "
                "LoadedModel (or use convlens.render.images.overlay_map with your own image)"
            )
        return overlay_map(self.display[row], self.maps[row], alpha=alpha, cmap=cmap)

    def tiles(self, note: str = "") -> list:
        """One `convlens.render.panel.PanelTile` per row, titled as ``convlens explain``
        titles them (method, layer, explained class and probability or score, ``A rather
        than B``); guided backprop and deconvnet rows draw their input gradient as an RGB
        image. ``note``: text under every tile."""
        from convlens.render.panel import PanelTile, gradient_image, tile_title

        tiles = []
        for row, entry in enumerate(self.row_records()):
            title = tile_title(
                self.method,
                entry["class_name"],
                entry["score"],
                entry["probability"],
                layer=self.layer,
                rather_than=entry["contrast"]["rather_than"] if "contrast" in entry else None,
            )
            rgb, own = None, ""
            if self.gradient is not None:
                rgb = gradient_image(self.gradient[row])
                peak = float(self.gradient[row].abs().max())
                own = f"input gradient, grey = 0, max |g| = {peak:.3g}"
            text = "; ".join(part for part in (own, note) if part)
            tiles.append(PanelTile(self.maps[row], title, self.method, rgb, text))
        return tiles

    def picture(self) -> np.ndarray:
        """``uint8[H, W, 3]``: the ``convlens explain`` panel of each input image (the
        image, then one tile per row of it, with colourbars), stacked top to bottom. Without
        known pixels (a bare tensor on an nn.Module) the maps are drawn over grey. This is
        what a notebook shows for an Explanation (`_repr_png_`)."""
        from convlens.render.images import stacked
        from convlens.render.panel import explanation_panel

        tiles = self.tiles()
        panels = []
        for image in dict.fromkeys(self.image_index.tolist()):
            rows = [r for r, i in enumerate(self.image_index.tolist()) if i == image]
            if self.display is not None:
                pixels, title = self.display[rows[0]], "input"
            else:
                pixels = np.full((*self.maps.shape[-2:], 3), 128, np.uint8)
                title = "input (pixels not known: grey)"
            if self.sources:
                title = f"{title}\n{Path(self.sources[rows[0]]).name}"
            panels.append(explanation_panel(pixels, [tiles[r] for r in rows], title))
        return stacked(panels)

    def _repr_png_(self) -> bytes:
        """PNG bytes of `picture`: Jupyter shows an Explanation as its panel."""
        from convlens.render.images import png_bytes

        return png_bytes(self.picture())

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

    def row_records(self) -> list[dict]:
        """One JSON-ready record per explained row, as ``convlens explain`` writes them in
        its ``methods`` list: method, layer, seconds, the row's class id and name, score
        and probability, its value of each extra, and for a contrast target a
        ``contrast`` entry naming the class it is explained against and its probability."""
        records = []
        for row, info in enumerate(self.record()["rows"]):
            entry = {"method": self.method, "layer": self.layer, "seconds": round(self.seconds, 4)}
            entry |= {k: v for k, v in info.items() if k != "source"}
            entry |= {k: _row_value(_jsonable(v), row) for k, v in self.extras.items()}
            if self.rather_than_ids is not None:
                entry["contrast"] = {
                    "class_id": info["class_id"],
                    "class_name": info["class_name"],
                    "rather_than_id": int(self.rather_than_ids[row]),
                    "rather_than": self.rather_than_names[row] if self.rather_than_names else None,
                    "rather_than_probability": None
                    if self.rather_than_probabilities is None
                    else float(self.rather_than_probabilities[row]),
                    "score": "logit difference",
                }
            records.append(entry)
        return records

    def save(self, folder: str | Path) -> Path:
        """Write ``maps.npy`` (raw), one overlay PNG per row (when the display image is
        known) and ``manifest.json`` into ``folder``, as one unit: everything is written to
        a temporary sibling folder that then replaces ``folder`` by rename, so an error
        halfway leaves an existing folder as it was (and no new folder). An existing folder
        is replaced only if it holds nothing but files an earlier save wrote and nobody
        changed since (`convlens.files.owned`); otherwise `ConvlensError`, before anything
        is written."""
        from convlens.render import save_png

        folder = Path(folder)
        with replaced_folder(folder, partial(_saved_file, folder)) as staging:
            with atomic_file(staging / "maps.npy") as handle:
                np.save(handle, self.maps.cpu().numpy())
            files = []
            if self.display is not None:
                for row in range(len(self.maps)):
                    name = f"{row:03d}_{self.method}.png"
                    save_png(self.overlay(row), staging / name)
                    files.append(name)
            manifest = self.record() | {"maps": "maps.npy", "overlays": files}
            write_json(staging / "manifest.json", manifest)
        return folder


def _saved_file(folder: Path, name: str) -> bool:
    """Whether ``folder/name`` is a file `Explanation.save` writes (any method's), unchanged
    since it wrote it, or the folder's ledger of them."""
    if name == LEDGER:
        return True
    saved_name = name in ("maps.npy", "manifest.json") or bool(_OVERLAY_NAME.fullmatch(name))
    return saved_name and owned(folder / name)


_OVERLAY_NAME = re.compile(r"\d{3,}_\w+\.png")


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def _row_value(value, row: int):
    """Row ``row``'s entry of a per-row extra (a list); a scalar extra as it is."""
    return value[row] if isinstance(value, list) else value


def explain(
    model: nn.Module | LoadedModel,
    images,
    method: str = "gradcam",
    target: object = None,
    layer: LayerSpec | None = None,
    *,
    device: DeviceSpec | None = None,
    output_key: OutputKey = None,
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
        layer: only for methods that use a layer (``get_method(method).uses_layer``: the
            CAM family); default the last spatial layer. Giving a layer to any other
            method raises MethodError.
        options: the method's keyword options, listed in ``get_method(method).options``
            (``n_steps=`` for integrated_gradients, ``patch=``/``stride=`` for occlusion,
            ``progress=True`` for a bar on slow methods). Any other name raises MethodError
            before anything runs.
        output_key: for a model whose output is a dict, tuple or ``ModelOutput``-like
            object, the entry to explain (a name, or a tuple position); default: the only
            tensor it holds, else its ``logits`` (`convlens.models.outputs`). A regression
            output (``Tensor[B]``/``[B, 1]``) is explained as it is (no class, no
            probability); an embedding model with ``target=similar_to(reference)``.
        device: run this call on ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or
            ``"auto"`` (`convlens.resolve_device`); the model is moved there for the call
            and back afterwards. None (default): run where the model is. The images always
            follow the model; every tensor of the result is on the CPU.

    Cost: the method alone. The explained scores, classes and probabilities are read from
    the output of the method's own forward pass on the unmodified images
    (`MethodResult.output`), so no other forward pass runs. ``Explanation.seconds`` times
    the method.
    """
    if device is not None:
        with placed_on(as_module(model), device):
            return explain(model, images, method, target, layer, output_key=output_key, **options)
    if output_key is not None:
        with reading_output(output_key):
            return explain(model, images, method, target, layer, **options)
    info = get_method(method)
    check_method_options(info, options, layer)
    tensor, display, sources = _as_model_input(model, images)
    target = resolve_reference(model, target)  # a similar_to reference is embedded once
    targets = prepare(model, tensor, target).targets  # checked before anything runs
    if info.uses_layer:
        layer = resolve_cam_layer(as_module(model), tensor, layer)
    return _run_method(info, model, tensor, target, layer, options, targets, display, sources)


def check_layer_use(infos: list[MethodInfo], layer: LayerSpec | None) -> None:
    """MethodError when ``layer`` is given but none of the methods ``infos`` uses one."""
    if layer is not None and not any(info.uses_layer for info in infos):
        check_method_options(infos[0], {}, layer)


def check_method_options(info: MethodInfo, options: dict, layer: LayerSpec | None) -> None:
    """MethodError unless ``info``'s method takes every name in ``options`` (and a layer,
    when ``layer`` is given); the message lists what the method does accept."""
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        close = {m for name in unknown for m in difflib.get_close_matches(name, info.options)}
        hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
        accepted = ", ".join(info.options) if info.options else "no options"
        raise MethodError(
            f"{info.name} does not take {', '.join(unknown)}{hint}; it accepts: {accepted}"
        )
    _check_option_types(info, options)
    if layer is not None and not info.uses_layer:
        users = ", ".join(m.name for m in list_methods() if m.uses_layer)
        raise MethodError(
            f"{info.name} does not use a layer; leave layer unset for it (methods that take "
            f"one: {users})"
        )


@dataclass(frozen=True)
class _Scored:
    """What every method's Explanation reports about its rows: the targets and, per row,
    the target score, class id, probability and class name on the unmodified input."""

    targets: Targets
    scores: torch.Tensor
    class_ids: torch.Tensor | None
    probabilities: torch.Tensor | None
    names: list[str] | None
    rather_than_ids: torch.Tensor | None = None
    rather_than_names: list[str] | None = None
    rather_than_probabilities: torch.Tensor | None = None


def _score_output(model: nn.Module | LoadedModel, targets: Targets, output) -> _Scored:
    """Scores, classes and probabilities of the explained rows, read from a method's output
    on the unmodified rows (``Tensor[N, ...]``, one row per explained row)."""
    scores = targets.score(output).detach()
    class_ids = targets.class_ids(output) if targets.fn is None else None
    if class_ids is not None and targets.class_scores(output).shape[1] == 1:
        class_ids = None  # a regression output: the score is the output, no class to name
    probabilities, names, against, against_names, against_p = None, None, None, None, None
    label = model.label if isinstance(model, LoadedModel) else (lambda c: f"class {c}")
    if isinstance(targets.fn, Detection):  # the explained detection's class, no softmax
        class_ids = targets.fn.pin(output).references[1]
        return _Scored(targets, scores, class_ids, None, [label(int(c)) for c in class_ids])
    if class_ids is not None:
        probabilities = targets.probabilities(output, class_ids)
        names = [label(int(c)) for c in class_ids]
    if targets.negative is not None:
        against = targets.negative.resolve(targets.class_scores(output))
        against_names = [label(int(c)) for c in against]
        against_p = targets.probabilities(output, against).detach()
    return _Scored(
        targets, scores, class_ids, probabilities, names, against, against_names, against_p
    )


def _run_method(
    info: MethodInfo, model, tensor, target, layer, options, targets: Targets, display, sources
) -> Explanation:
    """Run one method (layer already resolved when it uses one) and wrap its maps, scored
    from the method's own output on the unmodified rows."""
    start = time.perf_counter()
    if info.uses_layer:
        result: MethodResult = info.run(model, tensor, target, layer=layer, **options)
    else:
        result = info.run(model, tensor, target, **options)
    seconds = time.perf_counter() - start
    scored = _score_output(model, targets, result.output)
    rows = targets.image_index
    extras = result.extras
    if isinstance(targets.fn, Detection):  # the explained box, for the panel and the JSON
        extras = {"box": targets.fn.pin(result.output).references[0]} | extras
    return Explanation(
        maps=result.maps.detach(),
        method=info.name,
        layer=layer if info.uses_layer else None,
        image_index=rows,
        class_ids=scored.class_ids,
        scores=scored.scores,
        probabilities=scored.probabilities,
        class_names=scored.names,
        sources=[sources[i] for i in rows.tolist()] if sources else [],
        display=None if display is None else display[rows.numpy()],
        seconds=seconds,
        target=targets.spec,
        extras=extras,
        output=detach_output(result.output),
        rather_than_ids=scored.rather_than_ids,
        rather_than_names=scored.rather_than_names,
        gradient=result.gradient,
        rather_than_probabilities=scored.rather_than_probabilities,
    )


def method_names(spec: str) -> list[str]:
    """``"gradcam, occlusion"`` (spaces and empty entries ignored) or ``"all"`` to a list of
    registered names (checked: an unknown name raises `MethodError` with close matches)."""
    if spec.strip() == "all":
        return [info.name for info in list_methods()]
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise MethodError(
            f"{spec!r} names no method; pass names from 'convlens methods', comma separated, "
            "or 'all'"
        )
    return [get_method(name).name for name in names]


def _check_option_types(info: MethodInfo, options: dict) -> None:
    """MethodError for an option whose value is not of its default's kind: a switch takes
    true or false (``eigen_smooth=no`` would be a true string), a count or seed a whole
    number. Other values (pairs, tensors, names, numbers) stay the method's to check."""
    defaults = inspect.signature(info.run).parameters
    for key, value in options.items():
        default = defaults[key].default if key in defaults else inspect.Parameter.empty
        if default is inspect.Parameter.empty or default is None or value is None:
            continue
        if isinstance(default, bool):
            wanted, fits = "true or false", isinstance(value, bool)
        elif isinstance(default, numbers.Integral):
            wanted = "a whole number"
            fits = not isinstance(value, (bool, str)) and (
                not isinstance(value, float) or value.is_integer()
            )
        else:  # numbers may also be names ("mean") or lists ("0.1,0.2"): the method checks
            continue
        if not fits:
            raise MethodError(f"{info.name}: {key} must be {wanted}, got {value!r}")


@dataclass(frozen=True)
class MethodFailure:
    """A method that raised in `explain_methods` with ``keep_going=True``."""

    method: str
    error: Exception


def explain_methods(
    model: LoadedModel | nn.Module,
    images,
    methods: list[str],
    target: object = None,
    layer: LayerSpec | None = None,
    progress: bool = False,
    keep_going: bool = False,
    device: DeviceSpec | None = None,
    method_options: dict[str, dict] | None = None,
    output_key: OutputKey = None,
) -> tuple[list[Explanation], list[MethodFailure]]:
    """`explain` with each of ``methods`` on the same images: loaded and checked once, the
    layer of layer-based methods resolved once (``layer`` applies to those only), each
    scored from its own forward pass. ``progress``: a bar for methods that take one.
    ``keep_going``: a method that raises is returned as a `MethodFailure` and the others
    still run (otherwise the first error propagates). ``device``: as for `explain` (the
    model is moved back afterwards). ``method_options``: ``{method name: {option: value}}``,
    checked (`check_method_options`) before anything runs. ``output_key``: as for
    `explain`. Returns ``(explanations in method order, failures)``.
    """
    if device is not None or output_key is not None:
        key = nullcontext() if output_key is None else reading_output(output_key)
        with placed_on(as_module(model), device), key:
            return explain_methods(
                model, images, methods, target, layer, progress, keep_going, None, method_options
            )
    infos = [get_method(name) for name in methods]
    check_layer_use(infos, layer)
    method_options = method_options or {}
    for info in infos:
        check_method_options(info, method_options.get(info.name, {}), None)
    tensor, display, sources = _as_model_input(model, images)
    target = resolve_reference(model, target)
    targets = prepare(model, tensor, target).targets  # a bad target stops every method
    layer_name, layer_error = None, None
    if any(info.uses_layer for info in infos):
        try:
            layer_name = resolve_cam_layer(as_module(model), tensor, layer)
        except Exception as error:  # fails every layer method; the others still run
            if not keep_going:
                raise
            layer_error = error
    results, failures = [], []
    for info in infos:
        if info.uses_layer and layer_error is not None:
            failures.append(MethodFailure(info.name, layer_error))
            continue
        options = {"progress": True} if progress and info.takes_progress else {}
        options |= method_options.get(info.name, {})
        try:
            name = layer_name if info.uses_layer else None
            results.append(
                _run_method(info, model, tensor, target, name, options, targets, display, sources)
            )
        except Exception as error:  # a model may fail with any exception type
            if not keep_going:
                raise
            failures.append(MethodFailure(info.name, error))
    return results, failures


def top_predictions(model: LoadedModel | nn.Module, images: torch.Tensor, k: int = 5) -> list:
    """Per image of ``Tensor[B, 3, H, W]``, the ``k`` most probable classes (softmax of the
    output; for a segmentation model, its mean over the pixels):
    ``[[{"class_id", "label", "probability"}, ...], ...]``. The images follow
    the model (`convlens.models.model_input`)."""
    module = as_module(model)
    with borrowed_model(module), torch.no_grad():
        output = module(model_input(module, images))
    return predictions_from_output(model, output, k)


def predictions_from_output(
    model: LoadedModel | nn.Module, output: torch.Tensor, k: int = 5
) -> list:
    """`top_predictions` from a model output already computed (``Tensor[B, K]``, or
    ``[B, K, H, W]`` for segmentation; for instance ``Explanation.output``), without a
    forward pass. A regression output (``Tensor[B]`` or ``[B, 1]``) gives one entry per
    image, ``{"class_id": None, "label": "output", "value", "probability": None}``. A
    detector's output (a list of dicts) gives its first ``k`` detections, the detection
    score as ``probability`` and the ``box`` besides."""
    label = model.label if isinstance(model, LoadedModel) else (lambda c: f"class {c}")
    if is_detections(output):
        found = top_detections(output, k)
        return [
            [
                {
                    "class_id": d["class_id"],
                    "label": label(d["class_id"]),
                    "probability": d["score"],
                }
                | {"box": d["box"]}
                for d in row
            ]
            for row in found
        ]
    if output.dim() == 1 or (output.dim() == 2 and output.shape[1] == 1):
        return [
            [{"class_id": None, "label": "output", "value": float(v), "probability": None}]
            for v in output.detach().float().reshape(-1)
        ]
    probabilities = output.detach().float().softmax(dim=1)
    if probabilities.dim() == 4:  # a segmentation output: each class's mean over the pixels
        probabilities = probabilities.mean((2, 3))
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [
        [
            {"class_id": int(c), "label": label(int(c)), "probability": float(p)}
            for p, c in zip(row_values, row_ids, strict=True)
        ]
        for row_values, row_ids in zip(values, indices, strict=True)
    ]


def _as_model_input(model, images) -> tuple[torch.Tensor, np.ndarray | None, list[str]]:
    """``(Tensor[B, 3, H, W] on the model's device and in its dtype, display, sources)``."""
    tensor, display, sources = _unpack_images(model, images)
    return model_input(as_module(model), tensor), display, sources


def _unpack_images(model, images) -> tuple[torch.Tensor, np.ndarray | None, list[str]]:
    if isinstance(images, ImageBatch):
        return images.tensor, images.display, list(images.sources)
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        display = None
        if isinstance(model, LoadedModel):
            # uint8 in torch, then a strided numpy view: a few % of a forward pass less
            # than rounding in numpy (the pixels are the same).
            pixels = model.preprocess.denormalize(images).float().mul_(255).round_()
            display = pixels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return images, display, [f"<tensor {i}>" for i in range(len(images))]
    if not isinstance(model, LoadedModel):
        raise ConvlensError(
            "with a bare nn.Module, images must be a preprocessed Tensor[B, 3, H, W]; "
            "or wrap the model with convlens.load_model(module, preprocess=...) to pass files"
        )
    batch = load_images(images, preprocess=model.preprocess)
    return batch.tensor, batch.display, batch.sources
