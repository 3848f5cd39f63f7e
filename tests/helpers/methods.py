"""Option sets that keep the slow attribution methods small in tests, by method name:
``SMALL`` for 8 x 8 inputs, ``FEW_SAMPLES`` for 24 x 24 ones. A test adds its own special
cases with ``SMALL | {...}``."""

from __future__ import annotations

# Each image cut into about 4 superpixels and a few samples, masks or steps of each.
SMALL: dict[str, dict[str, object]] = {
    "occlusion": {"patch": 3, "stride": 2},
    "smoothgrad": {"n_samples": 3},
    "integrated_gradients": {"n_steps": 4},
    "rise": {"n_masks": 6, "cells": 4},
    "extremal_perturbation": {"steps": 2, "stride": 4},
    "superpixel_ablation": {"n_segments": 4, "compactness": 100.0},
    "kernel_shap": {"n_samples": 6, "n_segments": 4, "compactness": 100.0},
    "lime": {"n_samples": 6, "n_segments": 4, "compactness": 100.0},
}

# Few samples and steps on 24 x 24 inputs, enough for a map to compare across dtypes and
# devices: tolerances there are about the arithmetic, not the estimates.
FEW_SAMPLES: dict[str, dict[str, object]] = {
    "occlusion": {"patch": 8, "stride": 4},
    "smoothgrad": {"n_samples": 4},
    "integrated_gradients": {"n_steps": 8},
    "rise": {"n_masks": 16, "cells": 4},
    "extremal_perturbation": {"steps": 3, "stride": 4},
    "superpixel_ablation": {"n_segments": 9, "compactness": 100.0},
    "kernel_shap": {"n_samples": 12, "n_segments": 9, "compactness": 100.0},
    "lime": {"n_samples": 12, "n_segments": 9, "compactness": 100.0},
}
