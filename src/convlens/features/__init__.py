"""What the network learned: filters, feature maps, activation masks, unit projections,
activation maximisation and Gram matrices. Nothing here draws; see `convlens.render.features`."""

from convlens.features.accentuate import accentuate
from convlens.features.activations import FeatureMaps, feature_maps, layer_mean_maps, stage_layers
from convlens.features.filters import FilterTiles, conv_weights, filter_tiles
from convlens.features.gram import gram_matrix
from convlens.features.maco import maco
from convlens.features.masks import ActivationMask, activation_mask
from convlens.features.objectives import Objective
from convlens.features.optimize import Visualization, visualize
from convlens.features.projection import UnitProjection, project_unit

__all__ = [
    "ActivationMask",
    "FeatureMaps",
    "FilterTiles",
    "Objective",
    "UnitProjection",
    "Visualization",
    "accentuate",
    "activation_mask",
    "conv_weights",
    "feature_maps",
    "filter_tiles",
    "gram_matrix",
    "layer_mean_maps",
    "maco",
    "project_unit",
    "stage_layers",
    "visualize",
]
