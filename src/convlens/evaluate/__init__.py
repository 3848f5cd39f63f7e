"""Is the map right? Faithfulness (deletion/insertion, average drop/increase) and sanity
checks (cascading parameter randomisation). Formulas and citations: docs/metrics.md."""

from convlens.evaluate.faithfulness import (
    average_drop_increase,
    baseline_images,
    deletion_curve,
    insertion_curve,
    pixel_ranks,
)
from convlens.evaluate.sanity import (
    SanityResult,
    cascading_randomization,
    mean_defined,
    parametrised_layers,
    randomize_layer,
    spearman,
    ssim,
)

__all__ = [
    "SanityResult",
    "cascading_randomization",
    "mean_defined",
    "parametrised_layers",
    "randomize_layer",
    "spearman",
    "ssim",
    "average_drop_increase",
    "baseline_images",
    "deletion_curve",
    "insertion_curve",
    "pixel_ranks",
]
