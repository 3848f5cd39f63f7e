"""The CRAFT atlas page (``convlens concepts``): one self-contained ``index.html`` with the
concepts ranked by importance, each with its best crops and its map on a few images.
Pictures are drawn by `convlens.render` and inlined as PNG data URIs (`convlens.report.page`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from convlens.concepts.craft import CraftResult, crop_images
from convlens.files import write_text
from convlens.render.images import image_grid, overlay
from convlens.report.page import Section, anchor_id, figure, page_html, paragraph, table

TILE = 96


def _display(pixels: torch.Tensor) -> np.ndarray:
    """``[0, 1]`` ``Tensor[N, 3, H, W]`` to ``uint8[N, TILE, TILE, 3]`` (bilinear)."""
    resized = torch.nn.functional.interpolate(
        pixels.float(), size=(TILE, TILE), mode="bilinear", align_corners=False
    )
    return (resized.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def best_crop_tiles(result: CraftResult, pixels: torch.Tensor, concept: int) -> np.ndarray:
    """``uint8`` grid of concept ``concept``'s best crops of ``pixels`` (the images CRAFT ran
    on, ``[0, 1]`` ``Tensor[N, 3, H, W]``), each titled with its coefficient."""
    rows = result.best[concept]
    crops = crop_images(pixels, result.crop_rows[rows], result.boxes[rows])
    titles = [f"{float(result.coefficients[r, concept]):.3g}" for r in rows]
    return image_grid(list(_display(crops)), titles, columns=min(len(rows), 8))


def map_tiles(pixels: torch.Tensor, maps: torch.Tensor, names: list[str]) -> np.ndarray:
    """``uint8`` grid of one concept's maps (``Tensor[n, H, W]``, non-negative) over
    ``pixels`` (``[0, 1]`` ``Tensor[n, 3, H, W]``), all on one scale: 0 to the largest value
    of the ``n`` maps, so a concept absent from an image stays dark there."""
    top = float(maps.max())
    unit = maps / top if top > 0 else torch.zeros_like(maps)
    images = _display(pixels)
    tiles = [overlay(image, values, alpha=0.5) for image, values in zip(images, unit, strict=True)]
    return image_grid(tiles, [Path(n).name for n in names], columns=min(len(tiles), 8))


def concepts_page(
    result: CraftResult,
    pixels: torch.Tensor,
    shown: torch.Tensor,
    maps: torch.Tensor,
    shown_sources: list[str],
    model_name: str,
) -> str:
    """The atlas page's HTML.

    Args:
        result: the `CraftResult`.
        pixels: the images CRAFT ran on, ``[0, 1]`` ``Tensor[N, 3, H, W]`` (for the crops).
        shown: the images the maps are drawn on, ``[0, 1]`` ``Tensor[n, 3, H, W]``.
        maps: ``Tensor[n, k, H, W]``, `convlens.concepts.craft.concept_maps` of ``shown``.
        shown_sources: a name per shown image.
        model_name: the model's name for the title line.
    """
    what = "Sobol total index" if result.importance_method == "sobol" else "logit drop"
    rows = []
    for concept in range(result.k):
        first = result.best[concept][0]
        rows.append(
            [
                concept,
                float(result.importance[concept]),
                result.sources[int(result.crop_rows[first])],
            ]
        )
    intro = Section("Concepts", "concepts")
    intro.blocks += [
        paragraph(
            f"CRAFT (Fel et al. 2023) of class {result.class_name} at layer {result.layer}: "
            f"{result.k} concepts from {len(result.boxes)} random crops of "
            f"{len(result.sources)} images (relative reconstruction error "
            f"{result.error:.3f}), ranked by importance ({what})."
        ),
        table(["concept", f"importance ({what})", "best crop from"], rows),
    ]
    sections = [intro]
    for concept in range(result.k):
        section = Section(
            f"Concept {concept}", anchor_id("concept", str(concept)), level=3, blocks=[]
        )
        section.blocks.append(
            figure(
                best_crop_tiles(result, pixels, concept),
                f"concept {concept}: its {len(result.best[concept])} best crops (highest "
                "coefficient, shown above each)",
                wide=True,
            )
        )
        section.blocks.append(
            figure(
                map_tiles(shown, maps[:, concept], shown_sources),
                f"concept {concept}: its map (NNLS coefficient at each position of "
                f"{result.layer}, upsampled) on {len(shown_sources)} images, one scale "
                f"from 0 to {float(maps[:, concept].max()):.3g}",
                wide=True,
            )
        )
        sections.append(section)
    title = f"Concepts of {result.class_name} at {result.layer}"
    meta = f"model {model_name}; importance {result.importance_method}"
    return page_html(title, meta, sections)


def write_concepts_atlas(folder: str | Path, page: str) -> Path:
    """``folder/index.html`` holding ``page`` (written whole)."""
    return write_text(Path(folder) / "index.html", page)
