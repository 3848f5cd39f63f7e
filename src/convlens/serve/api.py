"""What the web API answers (pydantic models, so /openapi.json describes them) and the
library calls behind each answer. Each function here runs with the model lent to it."""

from __future__ import annotations

from pydantic import BaseModel, Field
from torch import nn

from convlens.attribution.explain import Explanation, explain, top_predictions
from convlens.attribution.methods import get_method, list_methods
from convlens.data.images import ImageBatch
from convlens.errors import LayerError
from convlens.features import feature_maps, filter_tiles
from convlens.layers import default_cam_layer, is_pickable_layer, layer_table
from convlens.layers.find import resolve_layer_names
from convlens.models.loading import LoadedModel
from convlens.render.features import feature_map_grid, filter_grid
from convlens.render.images import png_data_uri
from convlens.report.views import MapView, map_view
from convlens.targets import parse_target


class Health(BaseModel):
    status: str
    model: str
    version: str


class Method(BaseModel):
    name: str
    family: str
    uses_layer: bool
    slow: bool
    summary: str


class ClassName(BaseModel):
    class_id: int
    name: str


class Layer(BaseModel):
    index: int
    name: str
    type: str
    output_shape: list[int] | None
    receptive_field: list[int] | None = Field(
        description="Field size (rows, columns) in input pixels; null when not traceable."
    )
    spatial: bool = Field(description="Output is [B, C, h, w] with h * w > 1 (CAM layers).")
    pickable: bool = Field(
        description="A convolution, pooling layer, block or stage, or the default layer (not "
        "normalization, activation, identity or dropout modules): the page lists these."
    )
    filters: int | None = Field(
        description="How many filters an nn.Conv2d has (its out_channels): the layers "
        "/api/filters takes. Null for any other layer, blocks such as torchvision's "
        "Conv2dNormActivation included."
    )


class Layers(BaseModel):
    default: str | None = Field(description="The layer CAM methods use when none is given.")
    layers: list[Layer]


class Predicted(BaseModel):
    class_id: int
    label: str
    probability: float


class Prediction(BaseModel):
    source: str
    predictions: list[Predicted]
    image: str = Field(description="The image the model saw, as a PNG data URI.")


class Scale(BaseModel):
    cmap: str
    low: float = Field(description="Raw map value drawn at the colormap's start.")
    high: float = Field(description="Raw map value drawn at the colormap's end.")
    signed: bool
    bar: str = Field(description="The colour bar as a PNG data URI.")


class RatherThan(BaseModel):
    class_id: int
    class_name: str | None
    probability: float | None = Field(description="The contrasted class's own probability.")


class ExplainResult(BaseModel):
    class_id: int | None
    class_name: str | None
    title: str | None = Field(description='"A", or "A rather than B" for a contrast.')
    score: float = Field(description="The explained score (logit, or difference for contrast).")
    score_kind: str = Field(description='"logit", or "logit difference" for a contrast.')
    probability: float | None = Field(description="The explained class's own probability.")
    rather_than: RatherThan | None = Field(description="The contrasted class (or null).")
    method: str
    layer: str | None
    target: str
    seconds: float = Field(description="The method's own time.")
    total_seconds: float = Field(0.0, description="The request's time in the server.")
    overlay: str = Field(description="The map over the image, a data:image/png;base64 URI.")
    box: list[float] | None = Field(description="(x0, y0, x1, y1) pixels, x1/y1 exclusive.")
    size: list[int] = Field(description="(height, width) of the overlay in pixels.")
    scale: Scale


class Features(BaseModel):
    layer: str
    channels: list[int]
    means: list[float]
    grid: str = Field(description="Captioned grid of the channels, a PNG data URI.")


class Filters(BaseModel):
    layer: str
    count: int
    grid: str = Field(description="Captioned grid of the filters, a PNG data URI.")


class NewJob(BaseModel):
    job: str = Field(description="Send as the request's `job` field.")
    token: str = Field(description="Send as `token` to POST /api/cancel/{job}.")


class Cancelled(BaseModel):
    job: str
    cancelled: bool


def method_list() -> list[Method]:
    fields = ("name", "family", "uses_layer", "slow", "summary")
    return [Method(**{key: getattr(m, key) for key in fields}) for m in list_methods()]


def class_list(model: LoadedModel) -> list[ClassName]:
    labels = model.labels
    if labels is None:
        return []
    return [ClassName(class_id=i, name=name) for i, name in enumerate(labels)]


def layer_rows(model: LoadedModel) -> Layers:
    """The layer table on a blank image of the model's input size (run it with the model
    lent, through `ModelDesk`)."""
    import torch

    height, width = model.preprocess.height_width
    blank = torch.zeros(1, 3, height, width)
    try:
        default = default_cam_layer(model.module, blank)
    except LayerError:
        default = None
    modules = dict(model.module.named_modules())
    rows = []
    for info in layer_table(model.module, blank):
        shape = list(info.output_shape) if info.output_shape else None
        spatial = shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1
        field = list(info.field.size) if info.field is not None else None
        rows.append(
            Layer(
                index=info.index,
                name=info.name,
                type=info.type,
                output_shape=shape,
                receptive_field=field,
                spatial=spatial,
                pickable=info.name == default or is_pickable_layer(modules[info.name]),
                filters=_filter_count(modules[info.name]),
            )
        )
    return Layers(default=default, layers=rows)


def _filter_count(module: nn.Module) -> int | None:
    return module.out_channels if isinstance(module, nn.Conv2d) else None


def predict(model: LoadedModel, batch: ImageBatch, top: int) -> Prediction:
    predictions = top_predictions(model, batch.tensor, k=top)[0]
    return Prediction(
        source=batch.sources[0],
        predictions=[Predicted(**p) for p in predictions],
        image=png_data_uri(batch.display[0]),
    )


def explain_map(
    model: LoadedModel,
    batch: ImageBatch,
    method: str,
    target: str,
    contrast: str | None,
    layer: str | None,
) -> Explanation:
    """`explain` with one method and one target for a batch of one (run it with the model
    lent): one forward and whatever passes the method needs; the class, score and
    probability come from that forward pass."""
    info = get_method(method)
    if layer is not None and info.uses_layer:
        resolve_layer_names(model.module, layer)
    spec = parse_target(target, model.labels, rather_than=contrast, one_image=True)
    return explain(model, batch, method, target=spec, layer=layer)


def explain_answer(item: Explanation, target: str, contrast: str | None) -> ExplainResult:
    """The API's answer for `explain_map`'s result: overlay, box and colour scale drawn from
    the map alone (no model needed, so this runs while the model serves the next request)."""
    view = map_view(item)
    height, width = view.overlay.shape[:2]
    return ExplainResult(
        class_id=view.class_id,
        class_name=view.class_name,
        title=view.title,
        score=view.score,
        score_kind="logit" if view.rather_than_id is None else "logit difference",
        probability=view.probability,
        rather_than=_rather_than(view),
        method=item.method,
        layer=item.layer,
        target=f"{target} - {contrast}" if contrast else target,
        seconds=item.seconds,
        overlay=png_data_uri(view.overlay),
        box=list(view.box) if view.box is not None else None,
        size=[height, width],
        scale=Scale(**view.scale.record()),
    )


def _rather_than(view: MapView) -> RatherThan | None:
    if view.rather_than_id is None:
        return None
    return RatherThan(
        class_id=view.rather_than_id,
        class_name=view.rather_than_name,
        probability=view.rather_than_probability,
    )


def features(model: LoadedModel, batch: ImageBatch, layer: str | None, top: int) -> Features:
    name = layer or default_cam_layer(model.module, batch.tensor)
    result = feature_maps(model, batch.tensor[0], name, top=top)
    return Features(
        layer=result.layer,
        channels=[int(c) for c in result.channels],
        means=[float(m) for m in result.means],
        grid=png_data_uri(feature_map_grid(result)),
    )


def filters(model: LoadedModel, layer: str | None) -> Filters:
    tiles = filter_tiles(model, layer)
    grid = png_data_uri(filter_grid(tiles))
    return Filters(layer=tiles.layer, count=len(tiles.labels), grid=grid)
