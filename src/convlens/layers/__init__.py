"""Find layers, list them with shapes and receptive fields, capture their outputs."""

from convlens.layers.borrow import borrowed_model
from convlens.layers.capture import Capture, capture
from convlens.layers.find import (
    default_cam_layer,
    is_pickable_layer,
    named_layers,
    resolve_layer,
    spatial_outputs,
)
from convlens.layers.receptive import Field, LayerInfo, layer_table, receptive_field

__all__ = [
    "Capture",
    "Field",
    "LayerInfo",
    "borrowed_model",
    "capture",
    "default_cam_layer",
    "is_pickable_layer",
    "layer_table",
    "named_layers",
    "receptive_field",
    "resolve_layer",
    "spatial_outputs",
]
