"""A ground-truth dataset that ships as code: one shape per image, with its exact mask and box.

Item ``i`` of ``SyntheticShapes(seed=s)`` is a pure function of ``(s, i)`` (its random
generator is seeded with ``numpy.random.SeedSequence([s, i])``), so any index range is a
reproducible split: the shipped model trains on ``seed=0`` and is tested on ``seed=1``.

Each image is a textured background (noise, stripes or a gradient) with ONE object of a
shape class (``SHAPES``) at a random position, scale, rotation and colour, whose colour
differs clearly from the background. The class is ``i % len(SHAPES)``, so every run of
``len(SHAPES)`` consecutive items holds each class once.

The object lies fully inside the image with a background border of at least one pixel: its
centre keeps a margin of ``extent * radius + 1`` from every edge, where ``extent`` is the
shape's farthest point from its centre in units of the radius (1 for every shape but the
square, whose corners reach ``0.8 * sqrt(2)``).

Distractors keep the task well posed: they are thin line segments, a kind of mark that is
never one of the classes, and they never touch the object nor its one-pixel border (a
placement that meets the object's mask dilated by one pixel in all 8 directions is
rejected), so the object's mask stays exact and the class is decided by the object alone.

The mask marks the pixels whose centre lies inside the shape; the object is painted with hard
edges on exactly those pixels. The box is ``(x0, y0, x1, y1)`` in pixels with ``x1``/``y1``
exclusive, tight around the mask. Pixels are quantised to multiples of 1/255, so saving an
image as PNG and reading it back is lossless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from convlens.errors import DataError
from convlens.maps import mask_box

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
# The two streams of every synthetic set (shapes and scenes): the shipped models train on
# TRAIN_SEED and are scored on TEST_SEED, which they never saw.
TRAIN_SEED, TEST_SEED = 0, 1
BACKGROUNDS = ("noise", "stripes", "gradient")
_MIN_COLOUR_DISTANCE = 0.45
_SEGMENT_HALF_WIDTH = 0.75
_SQUARE_HALF_SIDE = 0.8
# Farthest point of each shape from its centre, in units of the radius (see `_inside`).
_EXTENT = dict.fromkeys(SHAPES, 1.0) | {"square": _SQUARE_HALF_SIDE * np.sqrt(2)}


@dataclass(frozen=True)
class SyntheticSample:
    """One item: ``image`` Tensor[3, H, W] in [0, 1], ``label`` (index into ``SHAPES``),
    ``mask`` bool Tensor[H, W], ``box`` float Tensor[4] (x0, y0, x1, y1; x1/y1 exclusive),
    ``distractors`` (how many segments were drawn: 0 to 3) and ``distractor_mask``
    bool Tensor[H, W]."""

    image: torch.Tensor
    label: int
    mask: torch.Tensor
    box: torch.Tensor
    distractors: int
    distractor_mask: torch.Tensor


@dataclass(frozen=True)
class SyntheticBatch:
    """A batch of samples stacked: ``images`` Tensor[B, 3, H, W] in [0, 1], ``labels``
    Tensor[B], ``masks`` bool Tensor[B, H, W], ``boxes`` Tensor[B, 4], ``distractors``
    Tensor[B] (segment counts), ``indices`` Tensor[B] (item ids in the dataset)."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    distractors: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def display(self) -> np.ndarray:
        """The images as ``uint8[B, H, W, 3]`` pixels (exact: pixels are multiples of 1/255),
        the form `convlens.models.Preprocess.normalize` takes."""
        return (self.images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class SyntheticShapes(Sequence):
    """Indexable dataset of ``length`` items ``start .. start + length - 1`` of stream ``seed``.

    Args:
        length: number of items.
        seed: the stream; items of different seeds are independent.
        size: image side in pixels (square images).
        distractor_rate: probability that an item gets 1-3 distractor segments.
        start: index of the first item (to cut disjoint ranges from one stream).
    """

    def __init__(
        self,
        length: int = 1000,
        *,
        seed: int = 0,
        size: int = 64,
        distractor_rate: float = 0.5,
        start: int = 0,
    ) -> None:
        if length < 0 or start < 0:
            raise DataError(f"length and start must be >= 0, got {length} and {start}")
        if size < 24:
            raise DataError(
                f"size must be at least 24 pixels so shapes stay recognisable, got {size}"
            )
        if not 0.0 <= distractor_rate <= 1.0:
            raise DataError(f"distractor_rate must lie in [0, 1], got {distractor_rate}")
        self.length, self.seed, self.size = length, seed, size
        self.distractor_rate, self.start = distractor_rate, start

    @property
    def classes(self) -> tuple[str, ...]:
        return SHAPES

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> SyntheticSample:  # type: ignore[override]
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        index = index % self.length if self.length else index
        return render_sample(self.seed, self.start + index, self.size, self.distractor_rate)

    def batch(self, indices: Sequence[int] | None = None) -> SyntheticBatch:
        """Stack items ``indices`` (default: all) into a `SyntheticBatch`."""
        indices = range(self.length) if indices is None else indices
        samples = [self[i] for i in indices]
        return SyntheticBatch(
            images=torch.stack([s.image for s in samples]),
            labels=torch.tensor([s.label for s in samples]),
            masks=torch.stack([s.mask for s in samples]),
            boxes=torch.stack([s.box for s in samples]),
            distractors=torch.tensor([s.distractors for s in samples]),
            indices=torch.tensor([self.start + (i % self.length) for i in indices]),
        )


def make_batch(
    count: int, *, seed: int = 0, start: int = 0, size: int = 64, distractor_rate: float = 0.5
) -> SyntheticBatch:
    """Items ``start .. start + count - 1`` of stream ``seed`` as one `SyntheticBatch`."""
    return SyntheticShapes(
        count, seed=seed, size=size, distractor_rate=distractor_rate, start=start
    ).batch()


def render_sample(seed: int, index: int, size: int, distractor_rate: float) -> SyntheticSample:
    """Item ``index`` of stream ``seed``: background, object, distractors (see module doc)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    label = index % len(SHAPES)
    background, base = _background(rng, size)
    colour = _object_colour(rng, base)
    mask = _object_mask(rng, SHAPES[label], size)
    image = np.where(mask[..., None], colour, background)
    distractor_mask = np.zeros_like(mask)
    attempts = int(rng.integers(1, 4)) if rng.random() < distractor_rate else 0
    count, keep_out = 0, _dilate(mask)
    for _ in range(attempts):
        segment = _segment_clear_of(rng, size, keep_out)
        if segment is not None:
            image = np.where(segment[..., None], rng.uniform(0.0, 1.0, 3), image)
            distractor_mask |= segment
            count += 1
    image = np.clip(image + rng.normal(0.0, 0.02, image.shape), 0.0, 1.0)
    image = np.round(image * 255.0) / 255.0
    return SyntheticSample(
        image=torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32)),
        label=label,
        mask=torch.from_numpy(mask),
        box=mask_box(torch.from_numpy(mask)),
        distractors=count,
        distractor_mask=torch.from_numpy(distractor_mask),
    )


def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.arange(size) + 0.5
    return np.meshgrid(centres, centres)  # x varies along columns, y along rows


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``float[H, W, 3]`` texture around a base colour, and that base colour."""
    base = rng.uniform(0.15, 0.85, 3)
    other = np.clip(base + rng.uniform(-0.15, 0.15, 3), 0.0, 1.0)
    x, y = _pixel_centres(size)
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    if kind == "noise":
        coarse = rng.uniform(0.0, 1.0, (size // 8 + 1, size // 8 + 1))
        weight = np.kron(coarse, np.ones((8, 8)))[:size, :size]
    elif kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 16)
        phase = (x * np.cos(angle) + y * np.sin(angle)) / period
        weight = 0.5 + 0.5 * np.sin(2 * np.pi * phase)
    else:
        angle = rng.uniform(0, 2 * np.pi)
        ramp = x * np.cos(angle) + y * np.sin(angle)
        weight = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-9)
    texture = base + (other - base) * weight[..., None]
    return texture, (base + other) / 2


def _object_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A colour at least ``_MIN_COLOUR_DISTANCE`` (Euclidean, RGB in [0, 1]) from the
    background's mean colour; the farthest of a few draws if none is that far."""
    best = rng.uniform(0.0, 1.0, 3)
    for _ in range(20):
        if np.linalg.norm(best - background) >= _MIN_COLOUR_DISTANCE:
            break
        candidate = rng.uniform(0.0, 1.0, 3)
        if np.linalg.norm(candidate - background) > np.linalg.norm(best - background):
            best = candidate
    return best


def _object_mask(rng: np.random.Generator, shape: str, size: int) -> np.ndarray:
    """bool[H, W]: pixel centres inside ``shape`` of radius ``r`` in [0.14, 0.3] * size,
    rotated by a random angle and placed fully inside the image: the centre keeps
    ``extent * r + 1`` from every edge, so no pixel of the first or last row or column
    (centres 0.5 from the edge) is inside the shape at any rotation."""
    radius = rng.uniform(0.14, 0.30) * size
    margin = _EXTENT[shape] * radius + 1
    cx, cy = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(0, 2 * np.pi)
    x, y = _pixel_centres(size)
    dx, dy = (x - cx) / radius, (y - cy) / radius
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    mask = _inside(shape, u, v)
    if not mask.any():  # unreachable for radius >= 0.14 * 24 px, kept as a guard
        mask[int(cy), int(cx)] = True
    return mask


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """bool: points ``(u, v)`` (unit radius, object frame) inside ``shape``."""
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    if shape == "circle":
        return r <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= _SQUARE_HALF_SIDE
    if shape == "triangle":  # equilateral, circumradius 1: three half-planes
        normals = [(np.cos(a), np.sin(a)) for a in (np.pi / 2, np.pi * 7 / 6, np.pi * 11 / 6)]
        return np.all([u * nx + v * ny <= 0.5 for nx, ny in normals], axis=0)
    if shape == "star":  # five points; radius zig-zags between 1 and 0.4 with the angle
        sector = np.mod(theta, 2 * np.pi / 5) / (2 * np.pi / 5)
        return r <= 0.4 + 0.6 * np.abs(1 - 2 * sector)
    if shape == "cross":
        arm = (np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)
        return arm | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.6)
    raise DataError(f"unknown shape {shape!r}; use one of {SHAPES}")


def _dilate(mask: np.ndarray) -> np.ndarray:
    """The mask grown by one pixel in all 8 directions (edges and corners)."""
    return ndimage.binary_dilation(mask, structure=np.ones((3, 3), dtype=bool))


def _segment_clear_of(
    rng: np.random.Generator, size: int, keep_out: np.ndarray, tries: int = 10
) -> np.ndarray | None:
    """bool[H, W] of a thin segment (length 0.1-0.25 * size) that misses ``keep_out``;
    None when ``tries`` random placements all hit it."""
    x, y = _pixel_centres(size)
    for _ in range(tries):
        length = rng.uniform(0.10, 0.25) * size
        x0, y0 = rng.uniform(2, size - 2, 2)
        angle = rng.uniform(0, 2 * np.pi)
        ex, ey = np.cos(angle), np.sin(angle)
        along = np.clip((x - x0) * ex + (y - y0) * ey, 0.0, length)
        distance = np.hypot(x - (x0 + along * ex), y - (y0 + along * ey))
        segment = distance <= _SEGMENT_HALF_WIDTH
        if segment.any() and not (segment & keep_out).any():
            return segment
    return None
