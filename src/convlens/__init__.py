"""convlens: see what a convolutional network learned and why it made a decision."""

from convlens.attribution import Explanation, explain, list_methods, normalize_maps
from convlens.data.images import ImageBatch, LoadedImage, load_image, load_images
from convlens.data.samples import sample_names, sample_path
from convlens.errors import (
    ConvlensError,
    ImageLoadError,
    LayerError,
    MethodError,
    ModelLoadError,
    TargetError,
)
from convlens.layers import capture, default_cam_layer, layer_table, receptive_field, resolve_layer
from convlens.models import LoadedModel, Preprocess, load_model
from convlens.targets import Targets, contrast, resolve_targets

__version__ = "0.1.0"

__all__ = [
    "ConvlensError",
    "Explanation",
    "ImageBatch",
    "ImageLoadError",
    "LayerError",
    "LoadedImage",
    "LoadedModel",
    "MethodError",
    "ModelLoadError",
    "Preprocess",
    "TargetError",
    "Targets",
    "capture",
    "contrast",
    "default_cam_layer",
    "explain",
    "layer_table",
    "list_methods",
    "load_image",
    "load_images",
    "load_model",
    "normalize_maps",
    "receptive_field",
    "resolve_layer",
    "resolve_targets",
    "sample_names",
    "sample_path",
]
