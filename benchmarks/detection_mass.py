"""Where the maps of one detection lie: positive mass inside the explained detection's box
against the box's area share (the floor), for several methods on the shipped
``synthetic-detector`` and held-out scenes (seed 1). The numbers of docs/detection.md.

Run: ``python benchmarks/detection_mass.py [--count 100] [--drise-count 30]`` (one CPU
thread). D-RISE runs ``n_masks`` forward passes per scene, so it gets fewer scenes.
"""

from __future__ import annotations

import argparse

import torch

from convlens.evaluate.detection import detection_mass
from convlens.models.detector import load_detector_model

CASES = (
    ("gradcam", "neck", {}),
    ("gradcam", "backbone.16", {}),
    ("eigencam", "neck", {}),
    ("saliency", None, {}),
    ("integrated_gradients", None, {"n_steps": 16}),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--drise-count", type=int, default=30)
    parser.add_argument("--n-masks", type=int, default=500)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    model = load_detector_model()
    cases = [(m, layer, options, arguments.count) for m, layer, options in CASES]
    cases.append(("drise", None, {"n_masks": arguments.n_masks}, arguments.drise_count))
    print(
        "| method | layer | scenes | mass in box | area share (floor) | margin | wins "
        "| centre floor |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for method, layer, options, count in cases:
        found = detection_mass(model, count, method, layer, **options)
        print(
            f"| {method} | {layer or '-'} | {count} | {found['mean_mass']:.3f} | "
            f"{found['mean_area']:.3f} | {found['margin']:+.3f} | {found['wins']:.2f} | "
            f"{found['mean_center']:.3f} |"
        )


if __name__ == "__main__":
    main()
