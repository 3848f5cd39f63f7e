"""A notebook explorer: pick an image, a method, a layer and a class from drop-downs and see
the explanation panel (``convlens[notebook]`` extra: ipywidgets, imported only when
`explorer` is called).

The logic lives in `ExplorerState` (no widgets: what each choice explains, which layers
and classes are offered), so it is tested without a browser; `explorer` only wires
drop-downs to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from convlens.attribution.explain import (
    Explanation,
    _as_model_input,
    explain,
    predictions_from_output,
)
from convlens.attribution.methods import get_method, list_methods
from convlens.errors import ConvlensError
from convlens.features.activations import stage_layers
from convlens.layers.borrow import borrowed_model
from convlens.models.loading import LoadedModel, as_module

DEFAULT_LAYER = "(default)"
TOP_CLASS = "top1"
INSTALL_HINT = "pip install 'convlens[notebook]' (or pip install ipywidgets)"


@dataclass
class ExplorerState:
    """What the explorer shows: ``model`` and the images (read once), the current
    ``image`` (row), ``method``, ``layer`` (`DEFAULT_LAYER`: the method's default) and
    ``target`` (`TOP_CLASS` or a class id). `choose` changes any of them and returns the
    `Explanation` to draw."""

    model: nn.Module | LoadedModel
    images: object
    methods: Sequence[str] | None = None
    image: int = 0
    method: str = "gradcam"
    layer: str = DEFAULT_LAYER
    target: str | int = TOP_CLASS
    tensor: torch.Tensor = field(init=False)
    display: object = field(init=False)
    sources: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.tensor, self.display, self.sources = _as_model_input(self.model, self.images)
        self.methods = list(self.methods or [info.name for info in list_methods()])
        for name in self.methods:
            get_method(name)
        if self.method not in self.methods:
            self.method = self.methods[0]
        self._layers: list[str] | None = None

    def layer_options(self) -> list[str]:
        """`DEFAULT_LAYER`, then one layer per stage of the network (`stage_layers`)."""
        if self._layers is None:
            self._layers = stage_layers(self.model, self.tensor[0])
        return [DEFAULT_LAYER, *self._layers]

    def uses_layer(self) -> bool:
        """Whether the current method takes a layer (the layer drop-down is off otherwise)."""
        return get_method(self.method).uses_layer

    def class_options(self, k: int = 5) -> list[tuple[str, str | int]]:
        """``(label, value)`` pairs: ``top1``, then the current image's ``k`` most probable
        classes (one forward pass of that image)."""
        module = as_module(self.model)
        with borrowed_model(module), torch.no_grad():
            output = module(self.tensor[self.image : self.image + 1])
        rows = predictions_from_output(self.model, output, k)[0]
        if rows[0]["class_id"] is None:  # a regression output: the output is the target
            return [(TOP_CLASS, TOP_CLASS)]
        named = [
            (f"{r['class_id']} {r['label']} p={r['probability']:.2f}", r["class_id"]) for r in rows
        ]
        return [(TOP_CLASS, TOP_CLASS), *named]

    def choose(self, **changes) -> Explanation:
        """Set any of ``image``, ``method``, ``layer``, ``target`` and explain the current
        choice; a layer is passed on only to methods that use one."""
        unknown = set(changes) - {"image", "method", "layer", "target"}
        if unknown:
            raise ConvlensError(f"the explorer has no choice {', '.join(sorted(unknown))}")
        for name, value in changes.items():
            setattr(self, name, value)
        if not 0 <= self.image < len(self.tensor):
            raise ConvlensError(f"image {self.image} is not one of the {len(self.tensor)} images")
        layer = self.layer if self.uses_layer() and self.layer != DEFAULT_LAYER else None
        rows = slice(self.image, self.image + 1)
        images = self._row_batch(rows)
        return explain(self.model, images, self.method, self.target, layer)

    def _row_batch(self, rows: slice):
        from convlens.data.images import ImageBatch

        if self.display is None:
            return self.tensor[rows]
        return ImageBatch(self.tensor[rows], self.display[rows], self.sources[rows])


def explorer(model: nn.Module | LoadedModel, images, methods: Sequence[str] | None = None):
    """An ipywidgets box: drop-downs for the image, method, layer (for methods that use
    one) and class, over the panel of the current choice. ``images``: anything `explain`
    takes (paths or sample names with a `LoadedModel`). Needs ipywidgets (`INSTALL_HINT`);
    `ConvlensError` naming it when it is missing."""
    try:
        import ipywidgets as widgets
    except ImportError as error:
        raise ConvlensError(f"the explorer needs ipywidgets: {INSTALL_HINT}") from error
    state = ExplorerState(model, images, methods)
    controls = {
        "image": widgets.Dropdown(
            options=[(name, i) for i, name in enumerate(state.sources)], description="image"
        ),
        "method": widgets.Dropdown(options=state.methods, value=state.method, description="method"),
        "layer": widgets.Dropdown(options=state.layer_options(), description="layer"),
        "target": widgets.Dropdown(options=state.class_options(), description="class"),
    }
    view, message = widgets.Image(format="png"), widgets.HTML()
    update = ExplorerView(state, controls, view, message)
    for name, control in controls.items():
        control.observe(lambda change, name=name: update(name, change["new"]), names="value")
    update("method", state.method)
    return widgets.VBox([widgets.HBox(list(controls.values())), message, view])


@dataclass
class ExplorerView:
    """The explorer's callback: a changed control ``name`` -> ``value`` updates the state,
    the layer drop-down's state (off for methods without a layer), the class choices (on
    a new image) and the picture; an error is shown as text instead of raised."""

    state: ExplorerState
    controls: dict
    view: object
    message: object
    busy: bool = False

    def __call__(self, name: str, value) -> None:
        if self.busy:  # a control this callback is itself changing
            return
        self.busy = True
        try:
            self._update(name, value)
        except ConvlensError as error:
            self.message.value = f"<span style='color:#b00'>{_escaped(error)}</span>"
        finally:
            self.busy = False

    def _update(self, name: str, value) -> None:
        if name == "image":
            self.state.image = value
            self.controls["target"].options = self.state.class_options()
            self.controls["target"].value = TOP_CLASS  # new choices: back to the top class
            self.state.target = TOP_CLASS
            explanation = self.state.choose()
        else:
            explanation = self.state.choose(**{name: value})
        self.controls["layer"].disabled = not self.state.uses_layer()
        self.message.value = ""
        self.view.value = explanation._repr_png_()


def _escaped(error: Exception) -> str:
    from html import escape

    return escape(str(error))
