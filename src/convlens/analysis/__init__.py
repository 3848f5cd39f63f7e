"""Training analysis after Zeiler & Fergus (2014): how a network's features form during
training (`feature_evolution`), which layers matter (`ablate_layers`), what it is invariant
to (`invariance_curves`), and the CAM paper's crop-to-the-box use (`cam_crops`).

Computation only; `convlens.render.analysis` draws the figures.
"""

from convlens.analysis.ablation import AblationResult, FineTune, ablate_layers, ablated
from convlens.analysis.camcrop import CamCrops, cam_crops, crop_to_box
from convlens.analysis.data import LabelledImages, labelled_images
from convlens.analysis.evolution import FeatureEvolution, epoch_files, feature_evolution
from convlens.analysis.invariance import TRANSFORMS, InvarianceCurves, invariance_curves, transform

__all__ = [
    "TRANSFORMS",
    "AblationResult",
    "CamCrops",
    "FeatureEvolution",
    "FineTune",
    "InvarianceCurves",
    "LabelledImages",
    "ablate_layers",
    "ablated",
    "cam_crops",
    "crop_to_box",
    "epoch_files",
    "feature_evolution",
    "invariance_curves",
    "labelled_images",
    "transform",
]
