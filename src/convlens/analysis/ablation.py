"""Layer ablation (Zeiler & Fergus 2014, section 5.1): skip or silence one named layer at a
time and measure the change in accuracy and true-class probability, optionally after a
short fine-tuning of the ablated network (on a copy: the user's model is never trained).

A layer is ablated by a forward hook that replaces its output: ``"identity"`` passes the
layer's input through (the layer is skipped: a residual block becomes its shortcut; input
and output shapes must match), ``"zero"`` sets the output to zeros (any shape), ``"auto"``
skips where the shapes match and zeroes otherwise. The hook is removed on exit.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from convlens.analysis.scores import checked_labels, class_scores
from convlens.errors import DataError, LayerError
from convlens.features.activations import stage_layers
from convlens.layers import resolve_layer
from convlens.layers.find import LayerSpec
from convlens.models.devices import model_device, model_input
from convlens.models.loading import LoadedModel, as_module
from convlens.train.loop import train_classifier

MODES = ("auto", "identity", "zero")


@dataclass(frozen=True)
class AblationRow:
    """One ablated layer: the ``mode`` used, accuracy and mean true-class probability with
    it ablated, and after fine-tuning (None when not fine-tuned)."""

    layer: str
    mode: str
    accuracy: float
    probability: float
    tuned_accuracy: float | None = None
    tuned_probability: float | None = None


@dataclass(frozen=True)
class AblationResult:
    """The intact model's ``accuracy`` and mean true-class ``probability`` on ``images``
    items, one `AblationRow` per layer in the order asked, and with fine-tuning the intact
    model's scores after the same fine-tuning (the control: what tuning alone changes)."""

    accuracy: float
    probability: float
    images: int
    rows: list[AblationRow]
    tuned_accuracy: float | None = None
    tuned_probability: float | None = None

    def record(self) -> dict:
        """JSON-ready: the baseline and, per layer, the scores and their changes."""
        return {
            "images": self.images,
            "accuracy": self.accuracy,
            "probability": self.probability,
            "tuned_accuracy": self.tuned_accuracy,
            "tuned_probability": self.tuned_probability,
            "layers": [
                row.__dict__
                | {
                    "accuracy_change": row.accuracy - self.accuracy,
                    "probability_change": row.probability - self.probability,
                }
                for row in self.rows
            ],
        }


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise DataError(f"ablation mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


@contextmanager
def ablated(model: nn.Module | LoadedModel, layer: LayerSpec, mode: str = "auto") -> Iterator[list]:
    """Within the block, ``layer``'s output is replaced (see the module docstring). Yields a
    list that receives the mode used at each call of the layer ("identity" or "zero").
    `LayerError` (at the forward pass) for ``"identity"`` on a layer whose output shape
    differs from its input's. The hooks are removed on exit, also after an exception."""
    check_mode(mode)
    module = as_module(model)
    name, target = resolve_layer(module, layer)
    used: list[str] = []
    kept: list[torch.Tensor] = []

    def keep_input(_module, inputs):
        kept[:] = [inputs[0].clone()] if inputs and isinstance(inputs[0], torch.Tensor) else []

    def replace_output(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise LayerError(f"layer {name!r} outputs a {type(output).__name__}, not a tensor")
        same = bool(kept) and kept[0].shape == output.shape
        if mode == "identity" and not same:
            shape = tuple(kept[0].shape) if kept else "no tensor"
            raise LayerError(
                f"cannot skip layer {name!r}: its input {shape} and output "
                f"{tuple(output.shape)} differ; use mode 'zero' (or 'auto')"
            )
        chosen = "identity" if mode != "zero" and same else "zero"
        used.append(chosen)
        return kept[0] if chosen == "identity" else torch.zeros_like(output)

    handles = [
        target.register_forward_pre_hook(keep_input),
        target.register_forward_hook(replace_output),
    ]
    try:
        yield used
    finally:
        for handle in handles:
            handle.remove()


def matching_layers(module: nn.Module, specs: Sequence[LayerSpec]) -> list[str]:
    """Layer names for ``specs``: a name, an index (see `resolve_layer`) or a pattern whose
    ``*`` stands for any characters but a dot and ``?`` for one (``"blocks.*.*"``: every
    module two levels below ``blocks``), matched in model order."""
    names: list[str] = []
    all_names = [name for name, _ in module.named_modules() if name]
    for spec in specs:
        if isinstance(spec, str) and ("*" in spec or "?" in spec):
            pattern = _dotted_pattern(spec)
            found = [name for name in all_names if pattern.fullmatch(name)]
            if not found:
                raise LayerError(
                    f"no layer name matches {spec!r}; see 'convlens layers' for the names"
                )
            names += found
        else:
            names.append(resolve_layer(module, spec)[0])
    return list(dict.fromkeys(names))


def _dotted_pattern(spec: str) -> re.Pattern:
    parts = (re.escape(part) for part in re.split(r"([*?])", spec) if part)
    return re.compile("".join({"\\*": "[^.]*", "\\?": "[^.]"}.get(p, p) for p in parts))


@dataclass(frozen=True)
class FineTune:
    """Fine-tune each ablated copy for ``epochs`` on ``inputs`` ``Tensor[N, 3, H, W]`` and
    ``labels`` ``LongTensor[N]`` (AdamW, one-cycle, peak ``learning_rate``, seed ``seed``)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    epochs: int = 1
    learning_rate: float = 1e-3
    batch_size: int = 64
    seed: int = 0


def ablate_layers(
    model: nn.Module | LoadedModel,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    layers: Sequence[LayerSpec] | None = None,
    mode: str = "auto",
    *,
    fine_tune: FineTune | None = None,
    batch_size: int = 32,
) -> AblationResult:
    """Ablate each of ``layers`` in turn (default: every stage, `stage_layers`) and score
    the classifier on ``inputs`` ``Tensor[N, 3, H, W]`` (normalised) with class ids
    ``labels`` ``LongTensor[N]``: accuracy and mean softmax probability of the true class,
    intact and per ablated layer. With ``fine_tune``, each ablated network is also trained
    briefly (a deep copy with the layer's hook left on) and scored again, and so is an
    intact copy (the control).

    The model comes back exactly as it was: hooks removed, modes restored, weights
    untouched (fine-tuning works on a copy).

    Example:
        >>> from convlens import load_model
        >>> from convlens.analysis import labelled_images
        >>> model = load_model("synthetic-shapes")
        >>> data = labelled_images("shapes-test:20", model.preprocess)
        >>> result = ablate_layers(model, data.inputs, data.labels, ["features.3"])
        >>> [(row.layer, row.mode) for row in result.rows]  # "auto" zeroes this layer
        [('features.3', 'zero')]
    """
    check_mode(mode)
    labels = checked_labels(inputs, labels)
    module = as_module(model)
    names = (
        stage_layers(module, model_input(module, inputs[:1])[0])
        if layers is None
        else matching_layers(module, layers)
    )
    accuracy, probability = _scores(module, inputs, labels, batch_size)
    rows = []
    for name in names:
        with ablated(module, name, mode) as used:
            ablated_scores = _scores(module, inputs, labels, batch_size)
        tuned = _fine_tuned(module, name, mode, fine_tune, inputs, labels, batch_size)
        rows.append(AblationRow(name, _mode_used(used), *ablated_scores, *tuned))
    control = _fine_tuned(module, None, mode, fine_tune, inputs, labels, batch_size)
    return AblationResult(accuracy, probability, len(inputs), rows, *control)


def _scores(module, inputs, labels, batch_size) -> tuple[float, float]:
    probability, predicted = class_scores(module, inputs, labels, batch_size)
    return float((predicted == labels).float().mean()), float(probability.mean())


def _mode_used(used: list[str]) -> str:
    if not used:
        return "not run"  # the layer is not on the forward path
    return used[0] if len(set(used)) == 1 else "mixed"


def _fine_tuned(module, name, mode, fine_tune: FineTune | None, inputs, labels, batch_size):
    if fine_tune is None:
        return None, None
    twin = copy.deepcopy(module)  # trained in place of the user's model
    with nullcontext() if name is None else ablated(twin, name, mode):
        device = model_device(twin)  # the tuning data follows the model (--device)
        train_classifier(
            twin,
            fine_tune.inputs.to(device),
            fine_tune.labels.to(device),
            epochs=fine_tune.epochs,
            batch_size=fine_tune.batch_size,
            learning_rate=fine_tune.learning_rate,
            seed=fine_tune.seed,
        )
        return _scores(twin, inputs, labels, batch_size)
