"""The grid pointing game on real photos (GridPG: Boehle et al. 2021, "Convolutional Dynamic
Alignment Networks"; Rao et al. 2022, "Towards Better Understanding Attribution Methods").

Photos that the model classifies confidently on their own (top-1 softmax >= ``confidence``),
one per class, are tiled into ``n x n`` grids (2x2 and 3x3 by default) of distinct classes.
``scale="full"`` (the default) keeps every cell at the model's input size ``S`` (a 2x2 grid
is ``2S`` pixels, 448 for a 224-pixel model; 3x3 is ``3S``), so the model sees each photo as
it saw it alone; ``scale="shrunk"`` squeezes the grid into ``S`` pixels (cells of 112 and 75
pixels at 224), the setting of earlier convlens releases. For each cell, the photo's class
(the model's top-1 on the photo alone) is explained on the WHOLE grid. A
class-discriminative map puts its mass in that cell; a map that only finds objects spreads
it over all of them. Full-size grids need a model that accepts larger inputs (global
pooling before the head, as the embedded EfficientNet-Lite0).

- ``gridpg``: the share of the map's positive mass inside the right cell,
  ``sum_{p in cell} max(0, m_p) / sum_p max(0, m_p)`` (0 for a map with no positive mass);
  chance is ``1 / n^2``.
- ``pointing``: whether the map's maximum (`pointing_points`) lies in the right cell.

Both are averaged over all cells of all grids; ``gridpg_2x2`` / ``gridpg_3x3`` per size. The
model-free floors of `convlens.evaluate.floors` are scored alongside (they know no class, so
they sit near chance). Photos: `convlens.data.photos` (the packages' photos or a folder).

- ``difull``: the DiFull control (Rao et al. 2022, "Towards Better Understanding Attribution
  Methods", CVPR): the same grids explained on a *disconnected* copy of the model
  (`disconnected_model`), in which every cell goes through the network's feature extractor
  alone and gets its own classification head, so the output for cell ``k`` cannot depend on
  any other cell. The cell's class is explained on the head of its cell, and ``difull`` is
  the share of positive mass inside the cell: any mass outside is, by construction, not
  what the output used (leakage of the method, not of the model). Scored on the smallest
  grid size (2x2 by default); None for a method that cannot run on the disconnected model
  (CAM needs a plain GAP + linear head).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from convlens.data.photos import Photo, package_photos, photo_folder
from convlens.errors import ConvlensError, DataError
from convlens.models.loading import LoadedModel

GRID_SIZES = (2, 3)
GRID_SCALES = ("full", "shrunk")
GRIDPG_KEYS = ("gridpg", "pointing", "gridpg_2x2", "gridpg_3x3", "difull", "ms_per_image")


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

    def cell_index(self) -> torch.Tensor:
        """Tensor[R]: each row's cell, ``row * n + column`` (the order of `make_grids`)."""
        side = self.tensor.shape[-1]
        n = self.grid_size
        return (self.cells[:, 0] * n + side // 2) // side * n + (
            self.cells[:, 2] * n + side // 2
        ) // side

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


def grid_side(model: LoadedModel, n: int, scale: str = "full") -> int:
    """Pixels of an ``n x n`` grid: ``n * S`` for ``scale="full"`` (cells at the model's
    input size ``S``), ``S`` for ``"shrunk"``."""
    if scale not in GRID_SCALES:
        raise DataError(f"unknown grid scale {scale!r}; use one of {', '.join(GRID_SCALES)}")
    side = model.preprocess.height_width[0]
    return n * side if scale == "full" else side


def make_grids(
    model: LoadedModel, pool: list, n: int, count: int, seed: int = 0, scale: str = "full"
) -> tuple[list[np.ndarray], list[list]]:
    """``count`` grids of ``n x n`` photos from ``pool`` (`confident_photos` entries), each
    drawn without replacement by a generator seeded with ``(seed, n)``; returns the grid
    pixels (uint8[G, G, 3], ``G = grid_side(model, n, scale)``) and each grid's cell
    entries."""
    if len(pool) < n * n:
        raise DataError(
            f"a {n}x{n} grid needs {n * n} photos of distinct classes that the model "
            f"classifies confidently, found {len(pool)}; lower --confidence or add photos "
            "with --photos FOLDER (or install foolbox: pip install 'convlens[photos]')"
        )
    side = grid_side(model, n, scale)
    bounds = cell_bounds(side, n)
    rng = np.random.default_rng([seed, n])
    grids, members = [], []
    for _ in range(count):
        chosen = [pool[i] for i in rng.choice(len(pool), size=n * n, replace=False)]
        grid = np.zeros((side, side, 3), dtype=np.uint8)
        for k, entry in enumerate(chosen):
            r0, r1 = bounds[k // n], bounds[k // n + 1]
            c0, c1 = bounds[k % n], bounds[k % n + 1]
            cell = entry[3]
            if cell.shape[:2] != (r1 - r0, c1 - c0):
                resized = Image.fromarray(cell).resize((c1 - c0, r1 - r0), Image.BILINEAR)
                cell = np.asarray(resized)
            grid[r0:r1, c0:c1] = cell
        grids.append(grid)
        members.append(chosen)
    return grids, members


def build_grid_sets(
    model: LoadedModel,
    photos: Sequence[Photo] | None = None,
    grids_per_size: int = 2,
    sizes: Sequence[int] = GRID_SIZES,
    confidence: float = 0.5,
    seed: int = 0,
    scale: str = "full",
) -> list[GridSet]:
    """One `GridSet` per size in ``sizes``, each of ``grids_per_size`` grids (default photos:
    `package_photos`); ``scale``: see `grid_side`."""
    height, width = model.preprocess.height_width
    if height != width:
        raise DataError(f"grids are square; {model.name} expects {height}x{width} inputs")
    pool = confident_photos(model, package_photos() if photos is None else photos, confidence)
    sets = []
    for n in sizes:
        bounds = cell_bounds(grid_side(model, n, scale), n)
        grids, members = make_grids(model, pool, n, grids_per_size, seed, scale)
        displays, labels, cells, names = [], [], [], []
        for grid, chosen in zip(grids, members, strict=True):
            for k, (photo, class_id, _, _) in enumerate(chosen):
                displays.append(grid)
                labels.append(class_id)
                r, c = divmod(k, n)
                cells.append([bounds[r], bounds[r + 1], bounds[c], bounds[c + 1]])
                names.append(photo.name)
        display = np.stack(displays)
        sets.append(
            GridSet(
                tensor=model.preprocess.normalize(display),
                display=display,
                labels=torch.tensor(labels),
                cells=torch.tensor(cells),
                grid_size=torch.full((len(labels),), n),
                photos=names,
            )
        )
    return sets


def cell_scores(maps: torch.Tensor, grids: GridSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``grids``, for maps ``Tensor[R, G, G]``: the share of the map's positive
    mass inside the row's cell (``Tensor[R]`` in [0, 1]; 0 for a map with no positive
    mass) and whether its maximum lies there (bool ``Tensor[R]``)."""
    from convlens.localize import pointing_points

    maps = maps.float().cpu()
    cells = grids.cell_masks()
    positive = maps.clamp(min=0)
    total = positive.flatten(1).sum(1)
    inside = (positive * cells).flatten(1).sum(1)
    share = torch.where(total > 0, inside / total.clamp(min=1e-30), torch.zeros_like(total))
    points = pointing_points(maps)
    hits = cells[torch.arange(len(maps)), points[:, 0], points[:, 1]]
    return share, hits


def gridpg_scores(
    maps: torch.Tensor | Sequence[torch.Tensor], grids: GridSet | Sequence[GridSet]
) -> dict[str, float]:
    """``gridpg`` (positive-mass share in the right cell), ``pointing`` (maximum in the right
    cell), and ``gridpg_NxN`` per grid size, means over all rows, for maps ``Tensor[R, G, G]``
    of one `GridSet`, or one such tensor per set of a list (`build_grid_sets`)."""
    if isinstance(grids, GridSet):
        maps, grids = [maps], [grids]
    scored = [cell_scores(m, g) for m, g in zip(maps, grids, strict=True)]
    share = torch.cat([s for s, _ in scored])
    hits = torch.cat([h for _, h in scored])
    size = torch.cat([g.grid_size for g in grids])
    scores = {"gridpg": float(share.mean()), "pointing": float(hits.float().mean())}
    for n in sorted(set(size.tolist())):
        scores[f"gridpg_{n}x{n}"] = float(share[size == n].mean())
    return scores


class Disconnected(nn.Module):
    """DiFull's disconnected model (Rao et al. 2022) around a network with a feature extractor
    and a head (timm's ``forward_features`` / ``forward_head``).

    Input: a grid ``Tensor[B, C, n*s, n*s]`` of ``n x n`` cells of ``s`` pixels. Each cell is
    cut out and passed through ``network.forward_features`` alone; the cells' feature maps
    are tiled back into one grid-shaped map (the output of the ``grid_features`` module,
    ``Tensor[B, K, n*h, n*w]``, the layer the CAM methods read) and every cell's part goes
    through ``network.forward_head`` alone. Output ``Tensor[B, n*n*classes]``: cell ``k``'s
    logits at ``k * classes .. (k + 1) * classes - 1``. No output depends on pixels outside
    its cell, so a map of one output that puts mass outside its cell leaks."""

    def __init__(self, network: nn.Module, n: int) -> None:
        super().__init__()
        if not (hasattr(network, "forward_features") and hasattr(network, "forward_head")):
            raise ConvlensError(
                f"DiFull splits the model into a feature extractor and a head, and "
                f"{type(network).__name__} has no forward_features/forward_head methods "
                "(timm's convention); add them, or run gridpg with difull=False"
            )
        self.network = network
        self.n = n
        self.grid_features = nn.Identity()

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = grid.shape
        n = self.n
        if height % n or width % n:
            raise DataError(f"a {n}x{n} DiFull grid needs a side divisible by {n}, got {height}")
        cells = grid.reshape(batch, channels, n, height // n, n, width // n)
        cells = cells.permute(0, 2, 4, 1, 3, 5).reshape(
            batch * n * n, channels, *cells.shape[-3::2]
        )
        features = self.network.forward_features(cells)
        k, h, w = features.shape[1:]
        tiled = features.reshape(batch, n, n, k, h, w).permute(0, 3, 1, 4, 2, 5)
        tiled = self.grid_features(tiled.reshape(batch, k, n * h, n * w))
        parts = tiled.reshape(batch, k, n, h, n, w).permute(0, 2, 4, 1, 3, 5)
        logits = self.network.forward_head(parts.reshape(batch * n * n, k, h, w))
        return logits.reshape(batch, -1)


def difull_scores(
    model: LoadedModel,
    method: str,
    grids: GridSet,
    options: dict,
    batch_size: int = 16,
) -> float | None:
    """DiFull (see the module docstring) of ``method`` on ``grids`` (one grid size): the mean
    share of positive mass inside the explained cell, the cell's class explained on its own
    head of `Disconnected`; None when the method cannot run on that model."""
    from convlens.attribution import get_method
    from convlens.evaluate.ground_truth import GroundTruth
    from convlens.evaluate.leaderboard import explain_all

    n = int(grids.grid_size[0])
    disconnected = LoadedModel(
        Disconnected(model.module, n), f"difull({model.name})", model.preprocess
    )
    from convlens.layers.borrow import borrowed_model

    cell = grids.tensor.shape[-1] // n
    with torch.no_grad(), borrowed_model(model.module):
        classes = model.module(grids.tensor[:1, :, :cell, :cell].to(model.device)).shape[1]
    targets = grids.cell_index() * classes + grids.labels
    truth = GroundTruth(grids.tensor, grids.display, targets, [], None, grids.photos)
    if get_method(method).uses_layer:
        options = options | {"layer": "grid_features"}
    try:
        maps, _ = explain_all(disconnected, truth, method, options, batch_size)
    except (ConvlensError, RuntimeError):
        # CAM needs a plain GAP + linear head; a method that reads every inner layer's output
        # (FullGrad) meets the cells' batch of B * n^2 rows there and cannot combine it
        return None
    share, _ = cell_scores(maps, grids)
    return float(share.mean())


def evaluate_gridpg(
    model: LoadedModel,
    methods: Sequence[str],
    grids: Sequence[GridSet],
    *,
    batch_size: int = 16,
    method_options: dict[str, dict] | None = None,
    floors: bool = True,
    difull: bool = True,
    progress: Callable[[str], None] | None = None,
):
    """Explain every cell's class on its grid with each method (and the floors); returns a
    `convlens.evaluate.leaderboard.Leaderboard` whose scores have `GRIDPG_KEYS`.
    ``grids``: one `GridSet` per grid size (`build_grid_sets`). ``difull``: also score the
    DiFull control on the first set (None where the model has no feature/head split).
    ``accuracy``: the share of cells whose class is among the model's top ``n^2`` on the grid."""
    from convlens.evaluate.floors import FLOORS, floor_maps
    from convlens.evaluate.ground_truth import GroundTruth
    from convlens.evaluate.leaderboard import Leaderboard, explain_all

    grids = [grids] if isinstance(grids, GridSet) else list(grids)
    rows = sum(len(g) for g in grids)
    hits = torch.cat([_in_top_cells(model, g, batch_size) for g in grids])
    board = Leaderboard(
        model=model.name,
        images=rows,
        accuracy=float(hits.float().mean()),
        settings={
            "rows": "grid cells",
            "grid_sizes": [int(g.grid_size[0]) for g in grids],
            "grid_sides": [int(g.tensor.shape[-1]) for g in grids],
            "in_top_cells": {
                f"{int(g.grid_size[0])}x{int(g.grid_size[0])}": float(h.float().mean())
                for g, h in zip(grids, hits.split([len(g) for g in grids]), strict=True)
            },
        },
    )
    can_difull = difull and hasattr(model.module, "forward_features")
    for name in methods:
        maps, seconds = [], 0.0
        try:
            for g in grids:
                options = _grid_options(model, name, g.tensor.shape[-1], method_options)
                truth = GroundTruth(g.tensor, g.display, g.labels, [], None, g.photos)
                m, s = explain_all(model, truth, name, options, batch_size)
                maps.append(m)
                seconds += s
        except ConvlensError as error:
            board.errors[name] = str(error)
            if progress is not None:
                progress(f"{name}: failed: {error}")
            continue
        board.scores[name] = gridpg_scores(maps, grids) | {
            "difull": _difull(model, name, grids[0], method_options, batch_size)
            if can_difull
            else None,
            "ms_per_image": 1000.0 * seconds / rows,
        }
        _report(progress, name, board.scores[name])
    if floors:
        for name in FLOORS:
            start = time.perf_counter()
            maps = [
                floor_maps(name, torch.from_numpy(g.display).permute(0, 3, 1, 2).float() / 255)
                for g in grids
            ]
            seconds = time.perf_counter() - start
            board.scores[name] = gridpg_scores(maps, grids) | {
                "difull": None,
                "ms_per_image": 1000.0 * seconds / rows,
            }
            _report(progress, name, board.scores[name])
    return board


def _grid_options(model: LoadedModel, name: str, side: int, method_options) -> dict:
    """The leaderboard's options for ``name`` on a grid of ``side`` pixels
    (`leaderboard.GRID_OPTIONS`); a table layer the model lacks is left out (the method's
    own default layer then), a layer in ``method_options`` is always kept."""
    from convlens.evaluate.leaderboard import GRID_OPTIONS, _method_options

    options = _method_options(name, side, method_options, GRID_OPTIONS)
    own = (method_options or {}).get(name, {})
    if "layer" in options and "layer" not in own:
        if options["layer"] not in dict(model.module.named_modules()):
            options.pop("layer")
    return options


def _difull(model, name, grids, method_options, batch_size) -> float | None:
    """DiFull of ``name``, None for a method whose options name a layer inside the feature
    extractor (it runs per cell there: no grid-shaped map to read)."""
    options = _grid_options(model, name, grids.tensor.shape[-1], method_options)
    if "layer" in options:
        return None
    return difull_scores(model, name, grids, options, batch_size)


def _report(progress, name: str, scores: dict) -> None:
    if progress is not None:
        difull = "" if scores["difull"] is None else f", difull {scores['difull']:.3f}"
        progress(
            f"{name}: gridpg {scores['gridpg']:.3f}, pointing {scores['pointing']:.3f}{difull}"
        )


@torch.no_grad()
def _in_top_cells(model: LoadedModel, grids: GridSet, batch_size: int) -> torch.Tensor:
    """bool Tensor[R]: whether each row's class is among the model's top ``n^2`` on its grid."""
    from convlens.attribution.common import SharedRows
    from convlens.layers.borrow import borrowed_model

    shared = SharedRows.of(grids.tensor)  # the cells of a grid share its one forward pass
    with borrowed_model(model.module):
        logits = torch.cat(
            [
                model.module(chunk.to(model.device)).float().cpu()
                for chunk in grids.tensor[shared.first].split(batch_size)
            ]
        )[shared.group]
    return torch.tensor(
        [
            int(label) in logits[r].topk(int(n) ** 2).indices.tolist()
            for r, (label, n) in enumerate(zip(grids.labels, grids.grid_size, strict=True))
        ]
    )


def grid_photos(folder: str | None) -> list[Photo] | None:
    """The photos of ``folder`` (`photo_folder`), or None for the packages' photos."""
    return None if folder is None else photo_folder(folder)
