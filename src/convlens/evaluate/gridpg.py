"""The grid pointing game on real photos (GridPG: Boehle et al. 2021, "Convolutional Dynamic
Alignment Networks"; Rao et al. 2022, "Towards Better Understanding Attribution Methods").

Photos that the model classifies confidently on their own (top-1 softmax >= ``confidence``),
one per class, are tiled into ``n x n`` grids (2x2 and 3x3 by default) of distinct classes at
the model's input size. For each cell, the photo's class (the model's top-1 on the photo
alone) is explained on the WHOLE grid. A class-discriminative map puts its mass in that
cell; a map that only finds objects spreads it over all of them.

- ``gridpg``: the share of the map's positive mass inside the right cell,
  ``sum_{p in cell} max(0, m_p) / sum_p max(0, m_p)`` (0 for a map with no positive mass);
  chance is ``1 / n^2``.
- ``pointing``: whether the map's maximum (`pointing_points`) lies in the right cell.

Both are averaged over all cells of all grids; ``gridpg_2x2`` / ``gridpg_3x3`` per size. The
model-free floors of `convlens.evaluate.floors` are scored alongside (they know no class, so
they sit near chance). Photos: `convlens.data.photos` (the packages' photos or a folder).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from convlens.data.photos import Photo, package_photos, photo_folder
from convlens.errors import ConvlensError, DataError
from convlens.models.loading import LoadedModel

GRID_SIZES = (2, 3)
GRIDPG_KEYS = ("gridpg", "pointing", "gridpg_2x2", "gridpg_3x3", "ms_per_image")


@dataclass(frozen=True)
class GridSet:
    """Grids ready for a model: ``tensor`` Tensor[R, 3, S, S] (one row per explained cell,
    the grid repeated), ``display`` uint8[R, S, S, 3], ``labels`` Tensor[R] (the cell's
    class), ``cells`` Tensor[R, 4] (row0, row1, col0, col1; end exclusive), ``grid_size``
    Tensor[R] (n), ``photos`` the names of each row's photo."""

    tensor: torch.Tensor
    display: np.ndarray
    labels: torch.Tensor
    cells: torch.Tensor
    grid_size: torch.Tensor
    photos: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def cell_masks(self) -> torch.Tensor:
        """bool Tensor[R, S, S]: each row's own cell."""
        side = self.tensor.shape[-1]
        masks = torch.zeros(len(self), side, side, dtype=torch.bool)
        for r, (r0, r1, c0, c1) in enumerate(self.cells.tolist()):
            masks[r, r0:r1, c0:c1] = True
        return masks


@torch.no_grad()
def confident_photos(
    model: LoadedModel, photos: Sequence[Photo], confidence: float = 0.5
) -> list[tuple[Photo, int, float, np.ndarray]]:
    """``(photo, class id, probability, display uint8[S, S, 3])`` for each photo whose top-1
    softmax probability on its own is >= ``confidence``; per class only the most confident
    photo, so every kept photo has a distinct class. Ordered by photo order."""
    from convlens.layers.borrow import borrowed_model

    displays = [model.preprocess.display(Image.fromarray(photo.load())) for photo in photos]
    if not displays:
        return []
    inputs = model.preprocess.normalize(np.stack(displays))
    with borrowed_model(model.module):
        probabilities = model.module(inputs.to(model.device)).float().softmax(1).cpu()
    best, ids = probabilities.max(1)
    keep: dict[int, int] = {}
    for index, (p, c) in enumerate(zip(best.tolist(), ids.tolist(), strict=True)):
        if p >= confidence and (c not in keep or p > best[keep[c]]):
            keep[c] = index
    return [(photos[i], int(ids[i]), float(best[i]), displays[i]) for i in sorted(keep.values())]


def cell_bounds(side: int, n: int) -> list[int]:
    """Pixel boundaries of ``n`` near-equal cells along a side: ``round(k * side / n)``."""
    return [round(k * side / n) for k in range(n + 1)]


def make_grids(
    model: LoadedModel, pool: list, n: int, count: int, seed: int = 0
) -> tuple[list[np.ndarray], list[list]]:
    """``count`` grids of ``n x n`` photos from ``pool`` (`confident_photos` entries), each
    drawn without replacement by a generator seeded with ``(seed, n)``; returns the grid
    pixels (uint8[S, S, 3] at the model's input size) and each grid's cell entries."""
    if len(pool) < n * n:
        raise DataError(
            f"a {n}x{n} grid needs {n * n} photos of distinct classes that the model "
            f"classifies confidently, found {len(pool)}; lower --confidence or add photos "
            "with --photos FOLDER (or install foolbox: pip install 'convlens[photos]')"
        )
    side = model.preprocess.height_width[0]
    bounds = cell_bounds(side, n)
    rng = np.random.default_rng([seed, n])
    grids, members = [], []
    for _ in range(count):
        chosen = [pool[i] for i in rng.choice(len(pool), size=n * n, replace=False)]
        grid = np.zeros((side, side, 3), dtype=np.uint8)
        for k, entry in enumerate(chosen):
            r0, r1 = bounds[k // n], bounds[k // n + 1]
            c0, c1 = bounds[k % n], bounds[k % n + 1]
            cell = Image.fromarray(entry[3]).resize((c1 - c0, r1 - r0), Image.BILINEAR)
            grid[r0:r1, c0:c1] = np.asarray(cell)
        grids.append(grid)
        members.append(chosen)
    return grids, members


def build_grid_set(
    model: LoadedModel,
    photos: Sequence[Photo] | None = None,
    grids_per_size: int = 4,
    sizes: Sequence[int] = GRID_SIZES,
    confidence: float = 0.5,
    seed: int = 0,
) -> GridSet:
    """`GridSet` of ``grids_per_size`` grids of each size in ``sizes`` (default photos:
    `package_photos`)."""
    height, width = model.preprocess.height_width
    if height != width:
        raise DataError(f"grids are square; {model.name} expects {height}x{width} inputs")
    pool = confident_photos(model, package_photos() if photos is None else photos, confidence)
    displays, labels, cells, grid_sizes, names = [], [], [], [], []
    for n in sizes:
        bounds = cell_bounds(height, n)
        grids, members = make_grids(model, pool, n, grids_per_size, seed)
        for grid, chosen in zip(grids, members, strict=True):
            for k, (photo, class_id, _, _) in enumerate(chosen):
                displays.append(grid)
                labels.append(class_id)
                r, c = divmod(k, n)
                cells.append([bounds[r], bounds[r + 1], bounds[c], bounds[c + 1]])
                grid_sizes.append(n)
                names.append(photo.name)
    display = np.stack(displays)
    return GridSet(
        tensor=model.preprocess.normalize(display),
        display=display,
        labels=torch.tensor(labels),
        cells=torch.tensor(cells),
        grid_size=torch.tensor(grid_sizes),
        photos=names,
    )


def gridpg_scores(maps: torch.Tensor, grids: GridSet) -> dict[str, float]:
    """``gridpg`` (positive-mass share in the right cell), ``pointing`` (maximum in the right
    cell), and ``gridpg_NxN`` per grid size, means over the rows, for maps ``Tensor[R, S, S]``."""
    from convlens.localize import pointing_points

    maps = maps.float().cpu()
    cells = grids.cell_masks()
    positive = maps.clamp(min=0)
    total = positive.flatten(1).sum(1)
    inside = (positive * cells).flatten(1).sum(1)
    share = torch.where(total > 0, inside / total.clamp(min=1e-30), torch.zeros_like(total))
    points = pointing_points(maps)
    hits = cells[torch.arange(len(maps)), points[:, 0], points[:, 1]]
    scores = {"gridpg": float(share.mean()), "pointing": float(hits.float().mean())}
    for n in sorted(set(grids.grid_size.tolist())):
        scores[f"gridpg_{n}x{n}"] = float(share[grids.grid_size == n].mean())
    return scores


def evaluate_gridpg(
    model: LoadedModel,
    methods: Sequence[str],
    grids: GridSet,
    *,
    batch_size: int = 16,
    method_options: dict[str, dict] | None = None,
    floors: bool = True,
    progress: Callable[[str], None] | None = None,
):
    """Explain every cell's class on its grid with each method (and the floors); returns a
    `convlens.evaluate.leaderboard.Leaderboard` whose scores have `GRIDPG_KEYS`.
    ``accuracy``: the share of cells whose class is among the model's top ``n^2`` on the grid."""
    from convlens.evaluate.floors import FLOORS, floor_maps
    from convlens.evaluate.ground_truth import GroundTruth
    from convlens.evaluate.leaderboard import Leaderboard, _method_options, explain_all

    truth = GroundTruth(grids.tensor, grids.display, grids.labels, [], None, grids.photos)
    side = grids.tensor.shape[-1]
    board = Leaderboard(
        model=model.name,
        images=len(grids),
        accuracy=_in_top_cells(model, grids, batch_size),
        settings={"rows": "grid cells", "grid_sizes": sorted(set(grids.grid_size.tolist()))},
    )
    for name in methods:
        try:
            options = _method_options(name, side, method_options)
            maps, seconds = explain_all(model, truth, name, options, batch_size)
        except ConvlensError as error:
            board.errors[name] = str(error)
            if progress is not None:
                progress(f"{name}: failed: {error}")
            continue
        board.scores[name] = gridpg_scores(maps, grids) | {
            "ms_per_image": 1000.0 * seconds / len(grids)
        }
        _report(progress, name, board.scores[name])
    if floors:
        pixels = torch.from_numpy(grids.display).permute(0, 3, 1, 2).float() / 255
        for name in FLOORS:
            start = time.perf_counter()
            maps = floor_maps(name, pixels)
            seconds = time.perf_counter() - start
            board.scores[name] = gridpg_scores(maps, grids) | {
                "ms_per_image": 1000.0 * seconds / len(grids)
            }
            _report(progress, name, board.scores[name])
    return board


def _report(progress, name: str, scores: dict) -> None:
    if progress is not None:
        progress(f"{name}: gridpg {scores['gridpg']:.3f}, pointing {scores['pointing']:.3f}")


@torch.no_grad()
def _in_top_cells(model: LoadedModel, grids: GridSet, batch_size: int) -> float:
    from convlens.layers.borrow import borrowed_model

    with borrowed_model(model.module):
        logits = torch.cat(
            [
                model.module(chunk.to(model.device)).float().cpu()
                for chunk in grids.tensor.split(batch_size)
            ]
        )
    hits = [
        int(label) in logits[r].topk(int(n) ** 2).indices.tolist()
        for r, (label, n) in enumerate(zip(grids.labels, grids.grid_size, strict=True))
    ]
    return float(np.mean(hits))


def grid_photos(folder: str | None) -> list[Photo] | None:
    """The photos of ``folder`` (`photo_folder`), or None for the packages' photos."""
    return None if folder is None else photo_folder(folder)
