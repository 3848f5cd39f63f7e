"""Make the pictures of docs/gallery.md: ``python -m convlens.features.gallery FOLDER``.

Every view on the default model and the ``cat`` sample; the class visualisation uses
``--steps`` gradient-ascent steps (default 128, seed 0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from convlens.data.images import load_images
from convlens.features import optimize
from convlens.features.filters import filter_tiles
from convlens.features.gram import gram_matrix
from convlens.features.maps import feature_maps, layer_mean_maps
from convlens.features.masks import activation_mask
from convlens.features.projection import project_unit
from convlens.models import load_model
from convlens.render import features as draw
from convlens.render.images import image_grid, save_png

LAYER = "blocks.4"  # 14x14 x 112 channels: deep enough to be specific, still spatial


def make_gallery(folder: Path, steps: int = 128, class_name: str = "goldfish") -> list[Path]:
    """Write every gallery PNG into ``folder``; returns the paths."""
    loaded = load_model()
    batch = load_images(["cat"], preprocess=loaded.preprocess)
    image, display = batch.tensor[0], batch.display[0]
    written = [save_png(draw.filter_grid(filter_tiles(loaded)), folder / "filters.png")]
    maps = feature_maps(loaded, image, LAYER, top=24)
    written.append(save_png(draw.feature_map_grid(maps), folder / "feature_maps.png"))
    means = layer_mean_maps(loaded, image, [f"blocks.{i}" for i in range(7)] + ["conv_head"])
    written.append(save_png(draw.layer_means_grid(means), folder / "layer_means.png"))
    top_channel = int(maps.channels[0])
    mask = activation_mask(loaded, image, LAYER, top_channel, quantile=0.8)
    panel = [display, draw.mask_overlay(display, mask.mask)]
    titles = ["cat", f"{LAYER}:{top_channel} top 20%"]
    for rule in ("deconvnet", "guided"):
        unit = project_unit(loaded, image, LAYER, top_channel, rule=rule)
        panel.append(draw.projection_image(unit.projection))
        titles.append(f"{rule}, its max unit")
    written.append(save_png(image_grid(panel, titles, 4), folder / "mask_projection.png"))
    gram = gram_matrix(loaded, image[None], "blocks.2")[0]
    written.append(save_png(draw.gram_heatmap(gram), folder / "gram.png"))
    class_id = loaded.labels.index(class_name)
    result = optimize.render(loaded, optimize.class_logit(class_id), steps=steps, seed=0)
    written.append(save_png(draw.to_uint8(result.images[0]), folder / f"class_{class_name}.png"))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--steps", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    for path in make_gallery(args.folder, args.steps):
        print(path)


if __name__ == "__main__":
    main()
