"""convlens: see what a convolutional network learned and why it made a decision.

The public names below are loaded on first use (PEP 562), so ``import convlens.localize``
or ``convlens --help`` does not pay for torch models, image I/O or attribution code it
does not touch.
"""

# ruff: noqa: F401  (the TYPE_CHECKING block names the public API for type checkers)

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_PUBLIC = {
    "ConvlensError": "convlens.errors",
    "DataError": "convlens.errors",
    "DEFAULT_MODEL": "convlens.package",
    "DeviceError": "convlens.errors",
    "DiskFullError": "convlens.errors",
    "ImageLoadError": "convlens.errors",
    "LayerError": "convlens.errors",
    "MethodError": "convlens.errors",
    "MetricError": "convlens.errors",
    "ModelLoadError": "convlens.errors",
    "OutputExistsError": "convlens.errors",
    "TargetError": "convlens.errors",
    "Explanation": "convlens.attribution.explain",
    "explain": "convlens.attribution.explain",
    "explain_pair": "convlens.attribution.pair",
    "explorer": "convlens.report.explorer",
    "list_methods": "convlens.attribution.methods",
    "concept_relevance": "convlens.attribution.lrp",
    "normalize_maps": "convlens.maps",
    "ImageBatch": "convlens.data.images",
    "LoadedImage": "convlens.data.images",
    "load_image": "convlens.data.images",
    "load_images": "convlens.data.images",
    "Preprocess": "convlens.data.preprocess",
    "sample_names": "convlens.data.samples",
    "ShortcutScenes": "convlens.data.shortcuts",
    "sample_path": "convlens.data.samples",
    "capture": "convlens.layers.capture",
    "Composite": "convlens.layers.relevance",
    "Rule": "convlens.layers.relevance_rules",
    "default_cam_layer": "convlens.layers.find",
    "resolve_layer": "convlens.layers.find",
    "layer_table": "convlens.layers.receptive",
    "receptive_field": "convlens.layers.receptive",
    "LoadedModel": "convlens.models.loading",
    "load_model": "convlens.models",
    "resolve_device": "convlens.models.devices",
    "top_activating": "convlens.scan.topk",
    "embed": "convlens.scan.embed",
    "attribute_dataset": "convlens.scan.attribute",
    "load_attributions": "convlens.scan.attribute",
    "tcav": "convlens.concepts.tcav",
    "craft": "convlens.concepts.craft",
    "concept_maps": "convlens.concepts.craft",
    "spray": "convlens.concepts.spray",
    "dissect": "convlens.concepts.dissect",
    "ablate_layers": "convlens.analysis.ablation",
    "cam_crops": "convlens.analysis.camcrop",
    "epoch_files": "convlens.analysis.evolution",
    "feature_evolution": "convlens.analysis.evolution",
    "invariance_curves": "convlens.analysis.invariance",
    "Targets": "convlens.targets",
    "contrast": "convlens.targets",
    "region": "convlens.targets",
    "similar_to": "convlens.targets",
    "Detection": "convlens.detections",
    "detection": "convlens.detections",
    "resolve_targets": "convlens.targets",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read from the installed metadata on first use
        from convlens.package import version

        globals()[name] = version()
        return globals()[name]
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'convlens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` loads these
    from convlens.analysis.ablation import ablate_layers
    from convlens.analysis.camcrop import cam_crops
    from convlens.analysis.evolution import epoch_files, feature_evolution
    from convlens.analysis.invariance import invariance_curves
    from convlens.attribution.explain import Explanation, explain
    from convlens.attribution.lrp import concept_relevance
    from convlens.attribution.methods import list_methods
    from convlens.attribution.pair import explain_pair
    from convlens.concepts.craft import concept_maps, craft
    from convlens.concepts.dissect import dissect
    from convlens.concepts.spray import spray
    from convlens.concepts.tcav import tcav
    from convlens.data.images import ImageBatch, LoadedImage, load_image, load_images
    from convlens.data.preprocess import Preprocess
    from convlens.data.samples import sample_names, sample_path
    from convlens.data.shortcuts import ShortcutScenes
    from convlens.detections import Detection, detection
    from convlens.errors import (
        ConvlensError,
        DataError,
        DeviceError,
        DiskFullError,
        ImageLoadError,
        LayerError,
        MethodError,
        MetricError,
        ModelLoadError,
        OutputExistsError,
        TargetError,
    )
    from convlens.layers.capture import capture
    from convlens.layers.find import default_cam_layer, resolve_layer
    from convlens.layers.receptive import layer_table, receptive_field
    from convlens.layers.relevance import Composite
    from convlens.layers.relevance_rules import Rule
    from convlens.maps import normalize_maps
    from convlens.models import load_model
    from convlens.models.devices import resolve_device
    from convlens.models.loading import LoadedModel
    from convlens.package import DEFAULT_MODEL
    from convlens.report.explorer import explorer
    from convlens.scan.attribute import attribute_dataset, load_attributions
    from convlens.scan.embed import embed
    from convlens.scan.topk import top_activating
    from convlens.targets import Targets, contrast, region, resolve_targets, similar_to
