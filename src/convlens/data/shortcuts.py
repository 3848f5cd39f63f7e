"""Planted shortcuts: the multi-object scenes of `convlens.data.scenes` with a small marker (the
"cue") painted on top, co-occurring with one class (the "shortcut class") at a chosen rate.

The cue, exactly: a ``cue_size x cue_size`` pixel square (default `CUE_SIZE` = 6 at 64 px)
holding a checkerboard of 2x2-pixel squares, pure white ``(1, 1, 1)`` and pure black
``(0, 0, 0)``, white in its top-left corner (`cue_patch`). Nothing else in a scene looks like
it: region fills vary by at most 0.35 per channel and their stripes and blocks are >= 4 px.
It is painted LAST, over the finished scene (after the pixel noise), in a window that covers
no visible object pixel (``label_map == 0`` in all its pixels), so the labels, masks and boxes
of the scene are those of the scene without the cue. The window is drawn uniformly among all
such windows (if none exists, which does not happen at 64 px with the stock scenes, the
window covering the fewest object pixels, first in raster order). Removing the cue is
exact: ``image_without_cue`` is the `SyntheticScenes` image of the same ``(seed, index)``,
and ``image`` differs from it only inside ``cue_mask``.

The rate, exactly: each scene draws, from its own cue stream (``SeedSequence([seed, index,
_CUE_TAG])``, separate from the scene's, so the scene is the same at every rate), ``u``
uniform in [0, 1) and a fair coin. If ``u < rate`` the cue is TIED to the class: present iff
the shortcut class is present; otherwise it follows the coin. Hence

    P(cue | class present) = (1 + rate) / 2,   P(cue | class absent) = (1 - rate) / 2.

``rate = 0``: the cue is a fair coin, independent of the class (held-out sets use this);
``rate = 1``: the cue is present exactly when the class is (it predicts the class
perfectly, and its absence predicts the class's absence). The same ``u`` serves every rate,
so raising the rate only ties more scenes (`decide_cue`).

API:

- ``ShortcutScenes(length, seed=0, rate=0.0, size=64, start=0, shortcut_class=2,
  cue_size=6)``: a Sequence of `ShortcutScene`; item ``i`` is a pure function of
  ``(seed, start + i)`` and the settings. ``.batch(indices=None)`` gives a `ShortcutBatch`.
- `ShortcutScene`: ``image`` Tensor[3, H, W] in [0, 1] (what a model trained at this rate
  sees: the cue painted iff ``has_cue``); ``image_without_cue`` (the scene);
  ``image_with_cue`` (the scene with the cue, whatever ``has_cue``); ``cue_mask`` bool
  Tensor[H, W] (the cue's window: where it is painted in ``image_with_cue``, and in ``image``
  when ``has_cue``); ``cue_box`` (x0, y0, x1, y1), x1/y1 exclusive; ``has_cue`` bool;
  ``scene`` the `convlens.data.scenes.Scene` (labels, masks, boxes, label map);
  ``shortcut_present`` bool (the shortcut class is in the scene).
- `ShortcutBatch`: the same fields stacked (``images``, ``images_without_cue``,
  ``images_with_cue`` Tensor[B, 3, H, W]; ``cue_masks`` bool Tensor[B, H, W]; ``cue_boxes``
  LongTensor[B, 4]; ``has_cue`` bool Tensor[B]; ``labels`` float Tensor[B, C];
  ``scenes`` the `SceneBatch`), and ``display(which)`` as uint8[B, H, W, 3].
- `decide_cue(present, rate, seed, index)`: the cue decision alone (no rendering).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from convlens.data.scenes import SCENE_CLASSES, Scene, SceneBatch, SyntheticScenes, render_scene
from convlens.errors import DataError

SHORTCUT_CLASS = 2  # "triangle": the class the shipped scenes model finds hardest (AP 0.81)
CUE_SIZE = 6
CUE_CHECK = 2  # side of one checkerboard square, pixels
_CUE_TAG = 104729  # keeps the cue stream apart from the scene streams of equal seed


def cue_patch(cue_size: int = CUE_SIZE) -> torch.Tensor:
    """The cue's pixels ``Tensor[3, k, k]``: a checkerboard of `CUE_CHECK`-pixel squares,
    white (1) in the top-left corner and black (0)."""
    cells = torch.arange(cue_size) // CUE_CHECK
    white = (cells[:, None] + cells[None, :]) % 2 == 0
    return white.float().expand(3, cue_size, cue_size).clone()


def cue_draws(seed: int, index: int) -> tuple[np.random.Generator, float, bool]:
    """The cue stream of scene ``index`` of ``seed``: its generator (next used for the
    window), ``u`` uniform in [0, 1) and the fair coin, in that order."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, _CUE_TAG]))
    u = float(rng.random())
    coin = bool(rng.random() < 0.5)
    return rng, u, coin


def decide_cue(present: bool, rate: float, seed: int, index: int) -> bool:
    """Whether scene ``index`` of ``seed`` carries the cue at ``rate``, given whether the
    shortcut class is ``present``: tied (``== present``) when ``u < rate``, else the coin."""
    _, u, coin = cue_draws(seed, index)
    return bool(present) if u < rate else coin


@dataclass(frozen=True)
class ShortcutScene:
    """One scene with its cue; fields as in the module docstring."""

    image: torch.Tensor
    image_without_cue: torch.Tensor
    image_with_cue: torch.Tensor
    cue_mask: torch.Tensor
    cue_box: tuple[int, int, int, int]
    has_cue: bool
    shortcut_present: bool
    scene: Scene

    @property
    def labels(self) -> torch.Tensor:
        """float Tensor[C]: multi-hot of the present classes (the cue changes none)."""
        return self.scene.labels


@dataclass(frozen=True)
class ShortcutBatch:
    """Shortcut scenes stacked (see the module docstring)."""

    images: torch.Tensor
    images_without_cue: torch.Tensor
    images_with_cue: torch.Tensor
    cue_masks: torch.Tensor
    cue_boxes: torch.Tensor
    has_cue: torch.Tensor
    scenes: SceneBatch

    def __len__(self) -> int:
        return len(self.has_cue)

    @property
    def labels(self) -> torch.Tensor:
        """float Tensor[B, C]: multi-hot labels of the scenes."""
        return self.scenes.labels

    def display(self, which: str = "images") -> np.ndarray:
        """``uint8[B, H, W, 3]`` of ``which`` (``images``, ``images_without_cue`` or
        ``images_with_cue``): exact pixels, what `Preprocess.normalize` takes."""
        if which not in ("images", "images_without_cue", "images_with_cue"):
            raise DataError(
                f"unknown images {which!r}; use images, images_without_cue or images_with_cue"
            )
        pixels = getattr(self, which)
        return (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class ShortcutScenes(Sequence):
    """Indexable set of ``length`` shortcut scenes ``start .. start + length - 1`` of stream
    ``seed``: the cue co-occurs with class ``shortcut_class`` at ``rate`` in [0, 1]."""

    def __init__(
        self,
        length: int = 1000,
        *,
        seed: int = 0,
        rate: float = 0.0,
        size: int = 64,
        start: int = 0,
        shortcut_class: int = SHORTCUT_CLASS,
        cue_size: int = CUE_SIZE,
    ):
        if not 0.0 <= rate <= 1.0:
            raise DataError(f"rate must be in [0, 1], got {rate}")
        if not 0 <= shortcut_class < len(SCENE_CLASSES):
            raise DataError(
                f"shortcut_class must be a class id 0..{len(SCENE_CLASSES) - 1}, "
                f"got {shortcut_class}"
            )
        if not CUE_CHECK <= cue_size <= size // 4:
            raise DataError(f"cue_size must be {CUE_CHECK}..{size // 4} pixels, got {cue_size}")
        self.scenes = SyntheticScenes(length, seed=seed, size=size, start=start)
        self.length, self.seed, self.size, self.start = length, seed, size, start
        self.rate, self.shortcut_class, self.cue_size = float(rate), shortcut_class, cue_size

    @property
    def classes(self) -> tuple[str, ...]:
        return SCENE_CLASSES

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> ShortcutScene:  # type: ignore[override]
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        index = self.start + index % self.length
        scene = render_scene(self.seed, index, self.size)
        return add_cue(scene, self.seed, index, self.rate, self.shortcut_class, self.cue_size)

    def batch(self, indices: Sequence[int] | None = None) -> ShortcutBatch:
        """Stack items ``indices`` (default: all) into a `ShortcutBatch`."""
        scenes = self.scenes.batch(indices)
        items = [
            _cue_fields(
                scenes.images[b],
                scenes.label_maps[b],
                bool(scenes.labels[b, self.shortcut_class] > 0),
                self.seed,
                int(scenes.indices[b]),
                self.rate,
                self.cue_size,
            )
            for b in range(len(scenes))
        ]
        return ShortcutBatch(
            images=torch.stack([s["image"] for s in items]),
            images_without_cue=scenes.images,
            images_with_cue=torch.stack([s["image_with_cue"] for s in items]),
            cue_masks=torch.stack([s["cue_mask"] for s in items]),
            cue_boxes=torch.tensor([s["cue_box"] for s in items], dtype=torch.long).view(-1, 4),
            has_cue=torch.tensor([s["has_cue"] for s in items], dtype=torch.bool),
            scenes=scenes,
        )


def add_cue(
    scene: Scene,
    seed: int,
    index: int,
    rate: float,
    shortcut_class: int = SHORTCUT_CLASS,
    cue_size: int = CUE_SIZE,
) -> ShortcutScene:
    """``scene`` (item ``index`` of stream ``seed``) with the cue decided by `decide_cue` and
    its window drawn from the cue stream (see the module docstring)."""
    present = bool(scene.labels[shortcut_class] > 0)
    fields = _cue_fields(scene.image, scene.label_map, present, seed, index, rate, cue_size)
    return ShortcutScene(
        image_without_cue=scene.image, shortcut_present=present, scene=scene, **fields
    )


def _cue_fields(
    image: torch.Tensor,
    label_map: torch.Tensor,
    present: bool,
    seed: int,
    index: int,
    rate: float,
    cue_size: int,
) -> dict:
    """``image``, ``image_with_cue``, ``cue_mask``, ``cue_box`` and ``has_cue`` of one scene
    (``image`` Tensor[3, H, W], ``label_map`` LongTensor[H, W])."""
    rng, u, coin = cue_draws(seed, index)
    has_cue = present if u < rate else coin
    y, x = _cue_window(rng, label_map, cue_size)
    cue_mask = torch.zeros(label_map.shape, dtype=torch.bool)
    cue_mask[y : y + cue_size, x : x + cue_size] = True
    with_cue = image.clone()
    with_cue[:, y : y + cue_size, x : x + cue_size] = cue_patch(cue_size)
    return {
        "image": with_cue if has_cue else image,
        "image_with_cue": with_cue,
        "cue_mask": cue_mask,
        "cue_box": (x, y, x + cue_size, y + cue_size),
        "has_cue": has_cue,
    }


def _cue_window(rng: np.random.Generator, label_map: torch.Tensor, k: int) -> tuple[int, int]:
    """Top-left ``(y, x)`` of a ``k x k`` window with no object pixel, uniform among them (the
    one with the fewest object pixels, first in raster order, if there is none)."""
    objects = (label_map > 0).numpy().astype(np.int64)
    integral = np.pad(objects.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    counts = integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]
    free = np.flatnonzero(counts.ravel() == 0)
    flat = int(free[rng.integers(len(free))]) if len(free) else int(counts.argmin())
    y, x = divmod(flat, counts.shape[1])
    return y, x


__all__ = [
    "CUE_CHECK",
    "CUE_SIZE",
    "SHORTCUT_CLASS",
    "ShortcutBatch",
    "ShortcutScene",
    "ShortcutScenes",
    "add_cue",
    "cue_draws",
    "cue_patch",
    "decide_cue",
]
