"""Multi-object synthetic scenes ("shapes-multi"): 1-4 shapes of distinct classes per image,
with an exact per-pixel class label map, per-class masks and boxes, and multi-hot labels.

The single-object set (`convlens.data.synthetic`, "shapes") paints one flat-coloured object on
a low-contrast background, so a map that merely finds colour contrast or edges localises it.
Here nothing but the shape separates an object from its surroundings:

- every region of a scene -- the background mosaic, the clutter, each object, the occluder --
  is filled from ONE texture distribution (`_fill`: two colours, a pattern out of
  ``FILLS``, pixel noise), drawn independently per region, so colour, texture and edge
  statistics are the same inside objects and outside them;
- the background is a mosaic of 1-3 regions split by straight lines, plus 1-3 clutter
  ellipses (aspect 2-3.5, never a class), so region boundaries and closed outlines occur
  outside objects too;
- objects overlap each other partially (a later object is on top) and 0-1 occluding bar is
  drawn over them; every object keeps at least ``MIN_VISIBLE`` of its own pixels visible.

Each region's fill is redrawn (up to 30 times) until its mean colour lies at least
``_MIN_FILL_DISTANCE`` (Euclidean, RGB in [0, 1]) from the mean colour of every region drawn
before it. The rule is the same for background, clutter, objects and occluder, so no region
kind gets a colour the others do not.

API (the names the segmentation and evaluation code use):

- ``SCENE_CLASSES``: the class names, the same six shapes as `synthetic.SHAPES`; class ``k``
  has label ``k + 1`` in label maps (0 is background).
- ``SyntheticScenes(length, seed=0, size=64, start=0)``: a Sequence of `Scene`; item ``i``
  is a pure function of ``(seed, start + i)`` (``numpy.random.SeedSequence([seed, index])``
  with a tag so it never equals the single-object stream), so any index range is a
  reproducible split. The shipped multi-label model trains on ``seed=0`` and is tested on
  ``seed=1``. ``.batch(indices=None)`` stacks items into a `SceneBatch`.
- ``make_scenes(count, seed=0, start=0, size=64)``: the same as one `SceneBatch`.
- `Scene`: ``image`` float Tensor[3, H, W] in [0, 1] (multiples of 1/255, PNG-exact);
  ``label_map`` LongTensor[H, W] (0 background, ``k + 1`` where class ``k`` is the visible top
  layer: occluded pixels belong to whatever is on top); ``classes`` LongTensor[K] (the present
  classes in drawing order, bottom first, distinct, 1 <= K <= 4); ``masks`` bool Tensor[K, H, W]
  (``label_map == classes[j] + 1``, never empty); ``boxes`` float Tensor[K, 4] (tight around
  each visible mask, ``(x0, y0, x1, y1)``, x1/y1 exclusive, a box may enclose several
  fragments of one occluded object); ``labels`` float Tensor[C] multi-hot of the present
  classes; ``silhouettes`` bool Tensor[K, H, W] each object's whole shape before anything was
  drawn over it (``masks`` are the visible parts: ``masks <= silhouettes``).
- `SceneBatch`: ``images`` Tensor[B, 3, H, W]; ``label_maps`` LongTensor[B, H, W];
  ``labels`` float Tensor[B, C] multi-hot; ``masks`` bool Tensor[B, C, H, W] indexed by CLASS
  (``masks[b, k] == (label_maps[b] == k + 1)``, all False for an absent class); ``boxes``
  Tensor[B, C, 4] indexed by class (zeros for an absent class: test ``labels[b, k] > 0``);
  ``indices`` LongTensor[B]; ``.present`` bool Tensor[B, C]; ``.display`` uint8[B, H, W, 3].

Counterfactual scenes (leave elements out). A scene is drawn once, in the order above, from
its one random stream; every painted region is recorded with its own mask and texture, and
the final pixel noise is recorded too. The image is then composed from the records, so it
can be composed again with any subset of the elements left out: where a left-out element
was on top, the element below it shows (or the background), and every other pixel is equal,
noise included. Nothing is re-drawn for a variant: the geometry, textures and placement
decisions of the full scene are kept (a left-out element's draws still happened, so the
elements above it do not move).

- ``scene_elements(seed, index, size)``: the list of `SceneElement` of a scene, bottom
  first (the order ``leave_out`` indices refer to): ``kind`` ``"background"`` (a mosaic
  half-plane), ``"clutter"`` (an ellipse), ``"object"`` (``class_id`` its class) or
  ``"occluder"`` (the bar); ``mask`` bool Tensor[H, W] the region as drawn, ``visible``
  bool Tensor[H, W] the pixels where it is on top in the full scene. The first mosaic
  region covers the whole image with nothing below it: it is the canvas, not an element.
- ``render_scene(seed, index, size, leave_out=())``: the `Scene` with the elements whose
  indices are in ``leave_out`` left out (``classes``, ``masks``, ``boxes``, ``labels`` and
  ``silhouettes`` then describe the objects that remain; K may be 0). With
  ``leave_out=()`` it is exactly the scene that ``SyntheticScenes`` gives.
- ``scene_variants(seed, index, size, leave_outs)``: one `Scene` per entry of
  ``leave_outs`` from a single draw; ``leave_one_out(seed, index, size)``: the elements and
  the scenes with nothing, then each element alone, left out (what the counterfactual
  benchmark uses).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from convlens.data.synthetic import _EXTENT, SHAPES, _inside, _pixel_centres
from convlens.errors import DataError
from convlens.maps import mask_box

SCENE_CLASSES = SHAPES
FILLS = ("flat", "stripes", "blocks", "gradient")
MAX_OBJECTS = 4
MIN_VISIBLE = 0.6
MIN_SIZE = 32
_STREAM_TAG = 7919  # keeps scene streams apart from the single-object streams of equal seed
_MIN_FILL_DISTANCE = 0.3
_MAX_OBJECT_OVERLAP = 0.3


@dataclass(frozen=True)
class Scene:
    """One scene; fields as in the module docstring (K present classes)."""

    image: torch.Tensor
    label_map: torch.Tensor
    classes: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    silhouettes: torch.Tensor


@dataclass(frozen=True)
class SceneBatch:
    """Scenes stacked, per-class fields indexed by class id (see the module docstring)."""

    images: torch.Tensor
    label_maps: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def present(self) -> torch.Tensor:
        """bool Tensor[B, C]: which classes each scene holds."""
        return self.labels > 0

    @property
    def display(self) -> np.ndarray:
        """The images as exact ``uint8[B, H, W, 3]`` pixels (what `Preprocess.normalize` takes)."""
        return (self.images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class SyntheticScenes(Sequence):
    """Indexable set of ``length`` scenes ``start .. start + length - 1`` of stream ``seed``,
    ``size x size`` pixels (``size >= 32``)."""

    def __init__(self, length: int = 1000, *, seed: int = 0, size: int = 64, start: int = 0):
        if length < 0 or start < 0:
            raise DataError(f"length and start must be >= 0, got {length} and {start}")
        if size < MIN_SIZE:
            raise DataError(f"size must be at least {MIN_SIZE} pixels for 4 shapes, got {size}")
        self.length, self.seed, self.size, self.start = length, seed, size, start

    @property
    def classes(self) -> tuple[str, ...]:
        return SCENE_CLASSES

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Scene:  # type: ignore[override]
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        return render_scene(self.seed, self.start + index % self.length, self.size)

    def batch(self, indices: Sequence[int] | None = None) -> SceneBatch:
        """Stack items ``indices`` (default: all) into a `SceneBatch`."""
        indices = list(range(self.length) if indices is None else indices)
        scenes = [self[i] for i in indices]
        count, size = len(SCENE_CLASSES), self.size
        masks = torch.zeros(len(scenes), count, size, size, dtype=torch.bool)
        boxes = torch.zeros(len(scenes), count, 4)
        for b, scene in enumerate(scenes):
            masks[b, scene.classes] = scene.masks
            boxes[b, scene.classes] = scene.boxes
        return SceneBatch(
            images=torch.stack([s.image for s in scenes]),
            label_maps=torch.stack([s.label_map for s in scenes]),
            labels=torch.stack([s.labels for s in scenes]),
            masks=masks,
            boxes=boxes,
            indices=torch.tensor([self.start + i % self.length for i in indices]),
        )


def make_scenes(count: int, *, seed: int = 0, start: int = 0, size: int = 64) -> SceneBatch:
    """Scenes ``start .. start + count - 1`` of stream ``seed`` as one `SceneBatch`."""
    return SyntheticScenes(count, seed=seed, size=size, start=start).batch()


ELEMENT_KINDS = ("background", "clutter", "object", "occluder")


@dataclass(frozen=True)
class SceneElement:
    """One element of a scene (see the module docstring): ``kind`` (one of
    `ELEMENT_KINDS`), ``class_id`` (the class of an object, None for other kinds), ``mask``
    bool Tensor[H, W] (the region as drawn) and ``visible`` bool Tensor[H, W] (where it is
    on top in the full scene; ``visible <= mask``, possibly empty)."""

    kind: str
    class_id: int | None
    mask: torch.Tensor
    visible: torch.Tensor


def render_scene(seed: int, index: int, size: int, leave_out: Collection[int] = ()) -> Scene:
    """Scene ``index`` of stream ``seed`` (see the module docstring for the recipe), with
    the elements ``leave_out`` (indices into `scene_elements`) left out."""
    return scene_variants(seed, index, size, [leave_out])[0]


def scene_variants(
    seed: int, index: int, size: int, leave_outs: Sequence[Collection[int]]
) -> list[Scene]:
    """``[render_scene(seed, index, size, leave_out) for leave_out in leave_outs]``,
    drawing the scene once."""
    drawing = _draw(seed, index, size)
    return [drawing.compose(_check_leave_out(leave_out, drawing)) for leave_out in leave_outs]


def scene_elements(seed: int, index: int, size: int) -> list[SceneElement]:
    """The elements of scene ``index`` of stream ``seed``, bottom first (the canvas, the
    whole-image first background region, is not one: nothing lies below it)."""
    return _elements(_draw(seed, index, size))


def leave_one_out(seed: int, index: int, size: int) -> tuple[list[SceneElement], list[Scene]]:
    """``(elements, scenes)`` from one draw: `scene_elements` and ``1 + len(elements)``
    scenes, the full one first, then the scene without element 0, without element 1, ..."""
    drawing = _draw(seed, index, size)
    layers = range(1, len(drawing.layers))
    scenes = [drawing.compose(frozenset(skipped)) for skipped in [()] + [(k,) for k in layers]]
    return _elements(drawing), scenes


def _elements(drawing: _Drawing) -> list[SceneElement]:
    on_top = np.zeros((drawing.size, drawing.size), dtype=np.int64)  # top layer per pixel
    for layer, (_, _, mask, _) in enumerate(drawing.layers):
        on_top[mask] = layer
    return [
        SceneElement(
            kind=kind,
            class_id=label - 1 if kind == "object" else None,
            mask=torch.from_numpy(mask.copy()),
            visible=torch.from_numpy(on_top == layer),
        )
        for layer, (kind, label, mask, _) in enumerate(drawing.layers)
        if layer > 0
    ]


def _draw(seed: int, index: int, size: int) -> _Drawing:
    """Every random draw of scene ``index`` of stream ``seed``, in the one order of the
    recipe (so the full scene is the same as before elements could be left out)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, _STREAM_TAG]))
    painter = _Painter(rng, size)
    painter.mosaic(int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(1, 4))):
        painter.paint(_ellipse_mask(rng, size), label=0, kind="clutter")
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    classes = [int(c) for c in rng.choice(len(SCENE_CLASSES), size=count, replace=False)]
    painter.place_objects(classes)
    if rng.random() < 0.5:
        painter.occlude()
    noise = rng.normal(0.0, 0.02, painter.image.shape)
    return _Drawing(painter.layers, noise, size, tuple(painter.fills))


def _check_leave_out(leave_out: Collection[int], drawing: _Drawing) -> frozenset[int]:
    elements = len(drawing.layers) - 1
    chosen = set()
    for item in leave_out:
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            raise DataError(f"leave_out takes element indices (ints), got {item!r}")
        if not 0 <= int(item) < elements:
            raise DataError(
                f"element {item} does not exist: this scene has {elements} elements "
                f"(0..{elements - 1}; see scene_elements)"
            )
        chosen.add(int(item) + 1)  # layer 0 is the canvas
    return frozenset(chosen)


@dataclass(frozen=True)
class _Drawing:
    """The recorded layers ``(kind, label, mask bool[H, W], texture float[H, W, 3])`` bottom
    first (layer 0 the canvas), the pixel noise float[H, W, 3] of one scene and each
    layer's fill pattern (one of ``FILLS``, in the order of ``layers``)."""

    layers: list[tuple[str, int, np.ndarray, np.ndarray]]
    noise: np.ndarray
    size: int
    fills: tuple[str, ...] = ()

    def compose(self, skipped: frozenset[int]) -> Scene:
        """The scene without the layers ``skipped`` (never 0), painted bottom to top."""
        image = np.zeros((self.size, self.size, 3))
        labels = np.zeros((self.size, self.size), dtype=np.int64)
        classes, silhouettes = [], []
        for layer, (kind, label, mask, texture) in enumerate(self.layers):
            if layer in skipped:
                continue
            image = np.where(mask[..., None], texture, image)
            labels = np.where(mask, label, labels)
            if kind == "object":
                classes.append(label - 1)
                silhouettes.append(mask)
        noisy = image + self.noise
        image = np.round(np.clip(noisy, 0.0, 1.0) * 255.0) / 255.0
        label_map = torch.from_numpy(labels)
        empty = torch.zeros(0, self.size, self.size, dtype=torch.bool)
        masks = torch.stack([label_map == k + 1 for k in classes]) if classes else empty
        scene_labels = torch.zeros(len(SCENE_CLASSES))
        scene_labels[classes] = 1.0
        return Scene(
            image=torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32)),
            label_map=label_map,
            classes=torch.tensor(classes, dtype=torch.long),
            masks=masks,
            boxes=torch.stack([mask_box(m) for m in masks]) if classes else torch.zeros(0, 4),
            labels=scene_labels,
            silhouettes=torch.from_numpy(np.stack(silhouettes)) if classes else empty,
        )


class _Painter:
    """Paints regions bottom to top into an image and a label map (painter's algorithm),
    recording each region (`_Drawing.layers`)."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.rng, self.size = rng, size
        self.image = np.zeros((size, size, 3))
        self.labels = np.zeros((size, size), dtype=np.int64)
        self.means: list[np.ndarray] = []
        self.objects: list[tuple[int, np.ndarray]] = []  # (label, silhouette) bottom first
        self.layers: list[tuple[str, int, np.ndarray, np.ndarray]] = []
        self.fills: list[str] = []  # each layer's fill pattern

    def paint(self, mask: np.ndarray, label: int, kind: str) -> None:
        texture, fill = self._distinct_fill()
        self.fills.append(fill)
        self.image = np.where(mask[..., None], texture, self.image)
        self.labels = np.where(mask, label, self.labels)
        self.layers.append((kind, label, mask, texture))

    def mosaic(self, regions: int) -> None:
        """Background: the whole image, then ``regions - 1`` half-planes painted over it."""
        self.paint(np.ones((self.size, self.size), dtype=bool), label=0, kind="canvas")
        x, y = _pixel_centres(self.size)
        for _ in range(regions - 1):
            angle = self.rng.uniform(0, 2 * np.pi)
            offset = self.rng.uniform(0.25, 0.75, 2) * self.size
            side = (x - offset[0]) * np.cos(angle) + (y - offset[1]) * np.sin(angle) > 0
            self.paint(side, label=0, kind="background")

    def place_objects(self, classes: list[int]) -> None:
        """Each class's silhouette placed so it overlaps the earlier ones by at most
        ``_MAX_OBJECT_OVERLAP`` of its area and leaves each earlier object at least
        ``MIN_VISIBLE`` of its pixels; painted on top (the last of 50 tries if none fits)."""
        for k in classes:
            for _ in range(50):
                candidate = _shape_mask(self.rng, SCENE_CLASSES[k], self.size)
                covered = np.zeros_like(candidate)
                for _, earlier in self.objects:
                    covered |= earlier
                overlap = (candidate & covered).sum() / candidate.sum()
                if overlap <= _MAX_OBJECT_OVERLAP and self._keeps_visible(candidate):
                    break
            self.paint(candidate, label=k + 1, kind="object")
            self.objects.append((k + 1, candidate))

    def occlude(self) -> None:
        """One bar (0.05-0.09 * size wide) drawn over the scene, kept only where every
        object stays at least ``MIN_VISIBLE`` visible (no bar after 20 tries)."""
        for _ in range(20):
            bar = _bar_mask(self.rng, self.size)
            if self._keeps_visible(bar):
                self.paint(bar, label=0, kind="occluder")
                return

    def _keeps_visible(self, cover: np.ndarray) -> bool:
        """Would every object keep ``MIN_VISIBLE`` of its silhouette visible under ``cover``?"""
        return all(
            ((self.labels == label) & ~cover).sum() >= MIN_VISIBLE * silhouette.sum()
            for label, silhouette in self.objects
        )

    def _distinct_fill(self) -> tuple[np.ndarray, str]:
        """A texture whose mean colour is far from every region painted so far, and its
        pattern."""
        texture, fill = _fill(self.rng, self.size)
        for _ in range(30):
            mean = texture.mean(axis=(0, 1))
            if all(np.linalg.norm(mean - m) >= _MIN_FILL_DISTANCE for m in self.means):
                break
            texture, fill = _fill(self.rng, self.size)
        self.means.append(texture.mean(axis=(0, 1)))
        return texture, fill


def _fill(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """``(float[H, W, 3], pattern)``: one draw of the texture distribution every region uses: colour
    ``a`` uniform in the RGB cube, ``b = a +- 0.35`` per channel (clipped), mixed by a pattern
    (flat, stripes of period 5-14 px, 4-8 px blocks, or a linear gradient)."""
    a = rng.uniform(0.0, 1.0, 3)
    b = np.clip(a + rng.uniform(-0.35, 0.35, 3), 0.0, 1.0)
    x, y = _pixel_centres(size)
    kind = FILLS[int(rng.integers(len(FILLS)))]
    if kind == "flat":
        weight = np.zeros((size, size))
    elif kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(5, 14)
        weight = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
    elif kind == "blocks":
        cell = int(rng.integers(4, 9))
        coarse = rng.uniform(0.0, 1.0, (size // cell + 1, size // cell + 1))
        weight = np.kron(coarse, np.ones((cell, cell)))[:size, :size]
    else:
        angle = rng.uniform(0, 2 * np.pi)
        ramp = x * np.cos(angle) + y * np.sin(angle)
        weight = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-9)
    return a + (b - a) * weight[..., None], kind


def _rotated_frame(rng, size: int, cx: float, cy: float, radius: float):
    """Pixel centres in the frame of a randomly rotated object at ``(cx, cy)``, unit radius."""
    angle = rng.uniform(0, 2 * np.pi)
    x, y = _pixel_centres(size)
    dx, dy = (x - cx) / radius, (y - cy) / radius
    return dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)


def _shape_mask(rng: np.random.Generator, shape: str, size: int) -> np.ndarray:
    """bool[H, W]: ``shape`` of radius 0.12-0.22 * size, rotated, fully inside the image."""
    radius = rng.uniform(0.12, 0.22) * size
    margin = _EXTENT[shape] * radius + 1
    cx, cy = rng.uniform(margin, size - margin, 2)
    mask = _inside(shape, *_rotated_frame(rng, size, cx, cy, radius))
    if not mask.any():  # unreachable for size >= 32, kept as a guard
        mask[int(cy), int(cx)] = True
    return mask


def _ellipse_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """bool[H, W]: a clutter ellipse (semi-axes 0.12-0.25 * size and 2-3.5 times less)."""
    long_axis = rng.uniform(0.12, 0.25) * size
    cx, cy = rng.uniform(0, size, 2)
    u, v = _rotated_frame(rng, size, cx, cy, long_axis)
    return u**2 + (v * rng.uniform(2.0, 3.5)) ** 2 <= 1.0


def _bar_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """bool[H, W]: an occluding bar 0.05-0.09 * size wide and 0.35-0.7 * size long."""
    half_width = rng.uniform(0.025, 0.045) * size
    half_length = rng.uniform(0.175, 0.35) * size
    cx, cy = rng.uniform(0.2, 0.8, 2) * size
    u, v = _rotated_frame(rng, size, cx, cy, 1.0)
    return (np.abs(u) <= half_length) & (np.abs(v) <= half_width)


__all__ = [
    "ELEMENT_KINDS",
    "FILLS",
    "MAX_OBJECTS",
    "MIN_VISIBLE",
    "SCENE_CLASSES",
    "Scene",
    "SceneBatch",
    "SceneElement",
    "SyntheticScenes",
    "leave_one_out",
    "make_scenes",
    "render_scene",
    "scene_elements",
    "scene_variants",
]
