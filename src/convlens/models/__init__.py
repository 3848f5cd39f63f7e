"""Load models by name or path (a registry of named sources), labels, the embedded models.

Each named model registers itself with `register_model_source` when its module is
imported; this package imports every built-in one, so a name works as soon as
``convlens.models`` is imported."""

from convlens.data.preprocess import IMAGENET_PREPROCESS, Preprocess
from convlens.models import (  # noqa: F401  (register their names and file formats)
    detector,
    efficientnet_lite,
    heads,
    scenes,
    segmentation,
    shapes,
    shortcuts,
)
from convlens.models.devices import model_device, model_input, resolve_device
from convlens.models.labels import imagenet_labels
from convlens.models.loading import (
    DEFAULT_MODEL,
    LoadedModel,
    ModelSource,
    as_module,
    load_model,
    model_sources,
    register_model_source,
)

__all__ = [
    "DEFAULT_MODEL",
    "IMAGENET_PREPROCESS",
    "LoadedModel",
    "ModelSource",
    "Preprocess",
    "as_module",
    "imagenet_labels",
    "load_model",
    "model_device",
    "model_input",
    "model_sources",
    "register_model_source",
    "resolve_device",
]
