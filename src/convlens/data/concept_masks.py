"""Images with per-pixel concept masks: what network dissection scores channels against.

A data set of concepts gives, for each image, the preprocessed image and ``label maps``:
``LongTensor[G, H, W]``, one map per concept *group*, each pixel holding the value of the
concept it shows in that group, or -1 (none of the group's concepts). Concept ``c`` is the
pair ``(group, value)``, and its mask is ``maps[group] == value``. The maps have the
model's input size: they go through the geometry of the model's `Preprocess` (resize,
crop, pad) with nearest-neighbour sampling, so a mask lies on the pixels the model sees.

Two sources (`concept_data`):

- **Synthetic scenes**, ``scenes:N`` / ``scenes-test:N`` (seed 0, the shipped scenes model's
  training stream / seed 1, held out; N defaults to 1000). The generator knows every
  pixel's concepts (`scene_concept_maps`), 17 concepts in three groups:

  - ``shape``: the six classes of `SCENE_CLASSES`, each the visible object mask of its class
    (``label_map == k + 1``: occluded parts belong to what is on top); background is none;
  - ``fill``: the fill pattern (`FILLS`: flat, stripes, blocks, gradient) of the region on
    top at the pixel; every pixel has one (the background, clutter and occluder regions
    are filled from the same texture distribution as objects);
  - ``colour``: the hue band of the pixel's noise-free texture colour (the region's fill
    before the pixel noise) in HSV: ``grey`` when its saturation ``(max - min) / max`` is
    below 0.25 or its value ``max`` is below 0.25 (greys, near-black, near-white), else
    one of six 60-degree hue bands centred on red (0), yellow (60), green (120), cyan (180),
    blue (240) and magenta (300) degrees. Every pixel has one.

- **A user's label maps**, a folder (`LabelMapFolder`) holding ``classes.txt`` (one name
  per line: line ``i``, counted from 0, names label ``i``), ``images/`` (the images, any
  format convlens reads, sub-folders allowed) and ``labels/`` (for ``images/A/B.jpg`` the
  map ``labels/A/B.png``: one integer label per pixel, a greyscale, 16-bit or palette PNG,
  the size of its image after EXIF rotation). One group, ``label``; every label is a
  concept. A pair that cannot be read (an unreadable image or map, an RGB map, another
  size, a label that ``classes.txt`` does not name) raises `DataError` naming the file and
  the fix; iteration reports it and goes on with the other pairs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from convlens.data.images import image_files, read_rgb
from convlens.data.preprocess import Preprocess
from convlens.data.scenes import FILLS, MIN_SIZE, SCENE_CLASSES, _draw
from convlens.errors import DataError, ImageLoadError

SCENE_STREAMS = {"scenes": 0, "scenes-test": 1}
DEFAULT_SCENES = 1000
SCENE_SIZE = 64
COLOUR_BANDS = ("red", "yellow", "green", "cyan", "blue", "magenta", "grey")
GREY_SATURATION = 0.25
GREY_VALUE = 0.25
SCENE_GROUPS = ("shape", "fill", "colour")
CLASSES_FILE = "classes.txt"
LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")


@dataclass(frozen=True)
class Concept:
    """One concept: its ``name``, its ``group`` (``"shape"``, ``"fill"``, ``"colour"``,
    ``"label"``), the row ``index`` of its group's map and the ``value`` it has there."""

    name: str
    group: str
    index: int
    value: int


@dataclass(frozen=True)
class ConceptBatch:
    """``images`` ``Tensor[B, 3, H, W]`` preprocessed, ``maps`` ``LongTensor[B, G, H, W]``
    (module docstring), ``sources`` one name per row."""

    images: torch.Tensor
    maps: torch.Tensor
    sources: list[str]


@dataclass
class ConceptData:
    """A data set of images with concept maps: ``concepts`` (in group order), ``name``
    (what ``--data`` said), ``items`` the names of its pairs; `read` gives one pair."""

    name: str
    concepts: tuple[Concept, ...]
    items: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def groups(self) -> int:
        return 1 + max(c.index for c in self.concepts)

    def read(self, position: int, preprocess: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``position`` as ``(Tensor[3, H, W] preprocessed, LongTensor[G, H, W])``."""
        raise NotImplementedError

    def batches(
        self, preprocess: Preprocess, batch_size: int = 32
    ) -> Iterator[tuple[ConceptBatch | None, list[tuple[str, str]]]]:
        """``(batch, skipped)`` for each run of ``batch_size`` items in order: the readable
        ones stacked (None if none was), and ``(source, message)`` for each that was not."""
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self.items), batch_size):
            images, maps, sources, skipped = [], [], [], []
            for position in range(start, min(start + batch_size, len(self.items))):
                try:
                    image, labels = self.read(position, preprocess)
                except (DataError, ImageLoadError) as error:
                    skipped.append((self.items[position], str(error)))
                    continue
                images.append(image)
                maps.append(labels)
                sources.append(self.items[position])
            yield (_stacked(images, maps, sources) if images else None), skipped


class TensorConcepts(ConceptData):
    """Images already preprocessed, ``Tensor[N, 3, H, W]``, with their ``maps``
    ``LongTensor[N, G, H, W]`` and ``concepts`` (the model's preprocessing is not applied)."""

    def __init__(self, images: torch.Tensor, maps: torch.Tensor, concepts, name: str = "tensors"):
        if images.dim() != 4 or maps.dim() != 4 or len(images) != len(maps):
            raise DataError(
                f"images [N, 3, H, W] and maps [N, G, H, W] of equal N, got "
                f"{tuple(images.shape)} and {tuple(maps.shape)}"
            )
        concepts = tuple(concepts)
        if not concepts or max(c.index for c in concepts) >= maps.shape[1]:
            raise DataError(f"concepts must name rows of the {maps.shape[1]} maps")
        super().__init__(name, concepts, [f"{name}:{i}" for i in range(len(images))])
        self.images, self.maps = images, maps.long()

    def read(self, position: int, preprocess: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[position], self.maps[position]


class SceneConcepts(ConceptData):
    """Scenes ``0 .. count - 1`` of stream ``seed`` (``size`` px) with their shape, fill and
    colour maps (module docstring); items are named ``name:i``, the set ``label``."""

    def __init__(
        self,
        count: int,
        seed: int,
        size: int = SCENE_SIZE,
        name: str = "scenes",
        label: str | None = None,
    ):
        if count < 1:
            raise DataError(f"{name}: the count of scenes must be positive, got {count}")
        if size < MIN_SIZE:
            raise DataError(f"scenes need a size of at least {MIN_SIZE} pixels, got {size}")
        items = [f"{name}:{i}" for i in range(count)]
        super().__init__(label or f"{name}:{count}", scene_concepts(), items)
        self.seed, self.size = seed, size

    def read(self, position: int, preprocess: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, maps = scene_concept_maps(self.seed, position, self.size)
        return _through(preprocess, Image.fromarray(pixels), maps)


class LabelMapFolder(ConceptData):
    """A user's label maps (module docstring): ``folder/classes.txt``, ``folder/images/``,
    ``folder/labels/``."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        names = read_class_list(folder / CLASSES_FILE)
        images = folder / "images"
        if not images.is_dir():
            raise DataError(
                f"{folder}: no images/ folder; a label-map folder holds {CLASSES_FILE}, "
                "images/ and labels/ (one PNG per image, same relative name)"
            )
        files = image_files(images)
        if not files:
            raise DataError(f"{images}: no image files in it")
        concepts = tuple(Concept(n, "label", 0, i) for i, n in enumerate(names))
        super().__init__(str(folder), concepts, [str(f) for f in files])
        self.folder = folder

    def label_path(self, image: str | Path) -> Path:
        """The label map of ``image`` (a file under ``images/``)."""
        relative = Path(image).relative_to(self.folder / "images")
        return (self.folder / "labels" / relative).with_suffix(".png")

    def read(self, position: int, preprocess: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
        source = self.items[position]
        rgb = read_rgb(source)
        labels = read_label_map(self.label_path(source), len(self.concepts))
        if labels.shape != (rgb.size[1], rgb.size[0]):
            raise DataError(
                f"{self.label_path(source)}: the label map is {labels.shape[1]}x"
                f"{labels.shape[0]} but its image {source} is {rgb.size[0]}x{rgb.size[1]}; "
                "give every image a label map of its own size"
            )
        return _through(preprocess, rgb, labels[None])


def _stacked(images: list, maps: list, sources: list[str]) -> ConceptBatch:
    if len({tuple(image.shape) for image in images}) > 1:
        raise DataError(
            "the images have different sizes after the model's preprocessing; dissection "
            "batches them: use a preprocessing that resizes (stretch, center_crop or pad)"
        )
    return ConceptBatch(torch.stack(images), torch.stack(maps), sources)


def concept_data(spec: str | Path | ConceptData) -> ConceptData:
    """The concept data ``spec`` names: ``scenes[:N]``, ``scenes-test[:N]`` or a label-map
    folder (module docstring); a `ConceptData` as it is."""
    if isinstance(spec, ConceptData):
        return spec
    text = str(spec)
    name, _, count = text.partition(":")
    if name in SCENE_STREAMS and not Path(text).exists():
        if count and (not count.isdigit() or int(count) < 1):
            raise DataError(f"{text!r}: write {name}:N with N a positive count of scenes")
        total = int(count or DEFAULT_SCENES)
        return SceneConcepts(total, SCENE_STREAMS[name], name=name, label=f"{name}:{total}")
    if Path(text).is_dir():
        return LabelMapFolder(text)
    raise DataError(
        f"{text}: not concept data; pass scenes:N, scenes-test:N or a label-map folder "
        f"({CLASSES_FILE}, images/, labels/)"
    )


def scene_concepts() -> tuple[Concept, ...]:
    """The 17 scene concepts: six shapes, four fills, seven colour bands (module docstring)."""
    groups = (SCENE_CLASSES, FILLS, COLOUR_BANDS)
    return tuple(
        Concept(name, group, index, value)
        for index, (group, names) in enumerate(zip(SCENE_GROUPS, groups, strict=True))
        for value, name in enumerate(names)
    )


def scene_concept_maps(
    seed: int, index: int, size: int = SCENE_SIZE
) -> tuple[np.ndarray, torch.Tensor]:
    """Scene ``index`` of stream ``seed`` as ``(uint8[H, W, 3] pixels, LongTensor[3, H, W])``:
    the image `convlens.data.scenes.render_scene` gives, and its shape, fill and colour-band
    maps (values index `SCENE_CLASSES`, `FILLS`, `COLOUR_BANDS`; shape -1 on background)."""
    drawing = _draw(seed, index, size)
    scene = drawing.compose(frozenset())
    on_top = np.zeros((size, size), dtype=np.int64)
    clean = np.zeros((size, size, 3))
    for layer, (_, _, mask, texture) in enumerate(drawing.layers):
        on_top[mask] = layer
        clean[mask] = texture[mask]
    labels = np.array([label for _, label, _, _ in drawing.layers])
    fills = np.array([FILLS.index(fill) for fill in drawing.fills])
    maps = np.stack([labels[on_top] - 1, fills[on_top], colour_bands(clean)])
    pixels = (scene.image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return pixels, torch.from_numpy(maps)


def colour_bands(rgb: np.ndarray) -> np.ndarray:
    """``int64[...]``: the index in `COLOUR_BANDS` of each colour of ``float[..., 3]`` RGB in
    [0, 1] (module docstring: grey when saturation or value is below 0.25, else the
    nearest of six hues 60 degrees apart)."""
    high, low = rgb.max(-1), rgb.min(-1)
    spread = high - low
    saturation = np.where(high > 0, spread / np.maximum(high, 1e-12), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(spread, 1e-12)
    hue = np.where(
        high == r,
        ((g - b) / safe) % 6,
        np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )  # in sextants: 0 red, 1 yellow, ... 5 magenta
    band = np.round(hue).astype(np.int64) % 6
    grey = (saturation < GREY_SATURATION) | (high < GREY_VALUE)
    return np.where(grey, COLOUR_BANDS.index("grey"), band)


def read_class_list(path: Path) -> list[str]:
    """The names of ``classes.txt``: one per line, label ``i`` on line ``i`` (from 0)."""
    if not path.is_file():
        raise DataError(
            f"{path}: missing; write the class names there, one per line (line 1 names "
            "label 0, line 2 label 1, ...)"
        )
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read as UTF-8 text ({error})") from error
    while names and not names[-1]:
        names.pop()
    empty = [i for i, name in enumerate(names) if not name]
    if not names or empty:
        where = f"line {empty[0] + 1} is empty" if empty else "it names no class"
        raise DataError(f"{path}: {where}; give every label from 0 up a name, one per line")
    return names


def read_label_map(path: Path, classes: int) -> np.ndarray:
    """``int64[H, W]``: the labels of a label-map PNG, each in ``0 .. classes - 1``;
    `DataError` naming the fix otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: missing; each image under images/ needs its label map here")
    try:
        with Image.open(path) as image:
            mode = image.mode
            labels = np.asarray(image).astype(np.int64) if mode in LABEL_MODES else None
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"{path}: not a readable PNG label map ({error})") from error
    if labels is None:
        raise DataError(
            f"{path}: a label map holds one integer per pixel (a greyscale, 16-bit or "
            f"palette PNG), this one is {mode}; save the labels, not colours"
        )
    if labels.ndim != 2:
        raise DataError(f"{path}: a label map has one value per pixel, got shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= classes:
        raise DataError(
            f"{path}: label {int(labels.max())} but {CLASSES_FILE} names {classes} "
            f"labels (0..{classes - 1}); name every label that occurs"
        )
    return labels


def _through(
    preprocess: Preprocess, rgb: Image.Image, maps: np.ndarray | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The image through ``preprocess`` and its ``[G, h, w]`` maps through the same
    resize and crop (nearest sampling; -1 where padding lies outside the image)."""
    display = preprocess.display(rgb)
    maps = torch.as_tensor(np.asarray(maps), dtype=torch.long)
    return preprocess.normalize(display), _resample(maps, preprocess, display.shape[:2])


def _resample(maps: torch.Tensor, preprocess: Preprocess, out: tuple[int, int]) -> torch.Tensor:
    """``[G, h, w]`` label maps sampled at the pixel centres of the ``out`` (H, W) display."""
    height, width = maps.shape[-2:]
    if preprocess.mode == "none" or (height, width) == tuple(out):
        (scaled_w, scaled_h), (left, top) = (width, height), (0, 0)
    else:
        (scaled_w, scaled_h), (left, top) = preprocess.resize_crop((width, height))
    rows = _nearest(out[0], top, scaled_h, height)
    cols = _nearest(out[1], left, scaled_w, width)
    sampled = maps[:, rows.clamp(0)][:, :, cols.clamp(0)]
    outside = (rows < 0)[:, None] | (cols < 0)[None, :]
    return sampled.masked_fill(outside, -1)


def _nearest(count: int, offset: int, scaled: int, source: int) -> torch.Tensor:
    """For each of ``count`` output pixels, the source pixel whose centre lies nearest to
    where it lands after resizing ``source`` to ``scaled`` and shifting by ``offset``; -1
    outside the image (padding)."""
    position = torch.arange(count, dtype=torch.float64) + offset
    index = torch.floor((position + 0.5) * source / scaled).long()
    inside = (position >= 0) & (position < scaled)
    return torch.where(inside, index.clamp(0, source - 1), torch.full_like(index, -1))


__all__ = [
    "COLOUR_BANDS",
    "Concept",
    "ConceptBatch",
    "ConceptData",
    "LabelMapFolder",
    "SceneConcepts",
    "TensorConcepts",
    "colour_bands",
    "concept_data",
    "read_class_list",
    "read_label_map",
    "scene_concept_maps",
    "scene_concepts",
]
