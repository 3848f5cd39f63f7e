"""Load models by name or path; the embedded default; preprocessing; labels."""

from convlens.models.labels import imagenet_labels
from convlens.models.loading import (
    DEFAULT_MODEL,
    MODEL_SOURCES,
    LoadedModel,
    as_module,
    load_model,
)
from convlens.models.preprocess import IMAGENET_PREPROCESS, Preprocess

__all__ = [
    "DEFAULT_MODEL",
    "IMAGENET_PREPROCESS",
    "MODEL_SOURCES",
    "LoadedModel",
    "Preprocess",
    "as_module",
    "imagenet_labels",
    "load_model",
]
