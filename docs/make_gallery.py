"""Make the pictures of docs/gallery.md: ``python docs/make_gallery.py FOLDER``.

Every view on the default model and the ``cat`` sample. The pictures that have a command
are made by running that very command (the one in the gallery's section header), so the
gallery and the command line cannot drift apart; the others come from the Python API.
Finally the class visualisation is re-read from its 8-bit PNG and classified
(``convlens predict``), which prints its top 5.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from convlens.errors import ConvlensError

LAYER = "blocks.4"  # 14x14 x 112 channels: deep enough to be specific, still spatial
CLASS_NAME = "goldfish"
CLASS_STEPS = (128, 512)  # the top-5 check (128) and the picture to look at (512)


def class_picture(steps: int) -> str:
    return f"class_{CLASS_NAME}_{steps}.png"


def command_pictures() -> list[tuple[str, list[str]]]:
    """``(file, argv)`` of each picture a `convlens` command makes, as documented."""
    return [
        ("filters.png", ["filters"]),
        ("feature_maps.png", ["features", "cat", "--layer", LAYER, "--top", "24"]),
        ("layer_means.png", ["features", "cat", "--all-layers"]),
    ] + [
        (class_picture(steps), ["visualize", "--class", CLASS_NAME, "--steps", str(steps)])
        for steps in CLASS_STEPS
    ]


def _run(argv: list[str]) -> None:
    from convlens.cli import main

    if main(argv) != 0:
        raise ConvlensError(f"'convlens {' '.join(argv)}' failed (see above)")


def api_pictures(folder: Path) -> list[Path]:
    """The mask + projections panel and the Gram heat map (no command of their own)."""
    from convlens.data.images import load_images
    from convlens.features.activations import feature_maps
    from convlens.features.gram import gram_matrix
    from convlens.features.masks import activation_mask
    from convlens.features.projection import project_unit
    from convlens.models import load_model
    from convlens.render import features as draw
    from convlens.render.images import image_grid, save_png

    loaded = load_model()
    batch = load_images(["cat"], preprocess=loaded.preprocess)
    image, display = batch.tensor[0], batch.display[0]
    top_channel = int(feature_maps(loaded, image, LAYER, top=1).channels[0])
    mask = activation_mask(loaded, image, LAYER, top_channel, quantile=0.8)
    panel = [display, draw.mask_overlay(display, mask.mask)]
    titles = ["cat", f"{LAYER}:{top_channel} top 20%"]
    for rule in ("deconvnet", "guided"):
        unit = project_unit(loaded, image, LAYER, top_channel, rule=rule)
        panel.append(draw.projection_image(unit.projection))
        titles.append(f"{rule}, its max unit")
    written = [save_png(image_grid(panel, titles, 4), folder / "mask_projection.png")]
    gram = gram_matrix(loaded, image[None], "blocks.2")[0]
    written.append(save_png(draw.gram_heatmap(gram), folder / "gram.png"))
    return written


def make_gallery(folder: Path) -> list[Path]:
    """Write every gallery PNG into ``folder`` and classify the class visualisations;
    returns the paths."""
    written = []
    for name, argv in command_pictures():
        _run([*argv, "--out", str(folder / name)])
        written.append(folder / name)
    written += api_pictures(folder)
    for steps in CLASS_STEPS:
        _run(["predict", str(folder / class_picture(steps))])
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    for path in make_gallery(args.folder):
        print(path)


if __name__ == "__main__":
    main()
