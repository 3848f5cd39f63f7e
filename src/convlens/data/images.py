"""Read images the way users have them: paths, sample names, PIL images, arrays, tensors.

Every image becomes 8-bit RGB first (EXIF orientation applied; grayscale, palette, RGBA,
16-bit and CMYK converted), then a `Preprocess` gives the *display* pixels the model sees
and the normalised tensor. Both are kept, so maps overlay exactly what the model saw.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageOps

from convlens.data.decode import decode_file, pixels_to_uint8, unreadable_as_error
from convlens.data.samples import SAMPLES, sample_path
from convlens.errors import ImageLoadError

if TYPE_CHECKING:  # images only call a Preprocess's methods; preprocess.py imports this module
    from convlens.data.preprocess import Preprocess

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray | torch.Tensor
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
DEFAULT_MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class LoadedImage:
    """One image: ``display`` is ``uint8[H, W, 3]``, ``tensor`` is ``Tensor[3, H, W]``.

    Without a preprocess, ``display`` is the whole image and ``tensor`` its pixels in [0, 1].
    """

    source: str
    display: np.ndarray
    tensor: torch.Tensor


@dataclass(frozen=True)
class ImageBatch:
    """Images stacked for a model: ``tensor`` ``Tensor[B, 3, H, W]``, ``display``
    ``uint8[B, H, W, 3]``, one ``source`` name each, and ``errors`` (source, message) for
    every input that was skipped because it could not be read."""

    tensor: torch.Tensor
    display: np.ndarray
    sources: list[str]
    errors: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sources)


def read_rgb(
    source: ImageSource,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    reduce_for: Preprocess | None = None,
) -> Image.Image:
    """Any supported source as an 8-bit RGB PIL image (EXIF orientation applied).

    Files and ``bytes`` (an encoded PNG, JPEG, WebP, BMP, TIFF or GIF, as uploaded) are
    checked from their header before any pixel is decoded: more than ``max_pixels``
    pixels, or more than 3 bytes x ``max_pixels`` of pixels (width x height x bands x
    bytes per band; 300 MB by default) raise `ImageTooLargeError`. Any failure to decode
    one (a corrupt file, another format, a codec error) is `ImageLoadError`: the file is
    unreadable. With ``reduce_for`` (the model's `Preprocess`) a file is decoded reduced
    towards twice the size that preprocess resizes it to (`convlens.data.decode`), so one
    read holds at most about twice the byte limit and ``reduce_for.display`` of the result
    is nearly that of the full image; an image under four times that size is read exactly.
    """
    if isinstance(source, bytes):
        return _read_file(io.BytesIO(source), "<bytes>", max_pixels, reduce_for)
    if isinstance(source, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(source))
    if isinstance(source, torch.Tensor):
        tensor = source.detach().cpu()
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        return _array_to_rgb(tensor.numpy(), "tensor", channels_first=True)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, "array")
    if isinstance(source, (str, os.PathLike)):
        path = _resolve_path(source)
        return _read_file(path, str(path), max_pixels, reduce_for)
    raise ImageLoadError(
        f"cannot read an image from a {type(source).__name__}; "
        "pass a path, a sample name, a PIL image, a numpy array or a tensor"
    )


def _read_file(
    file: Path | io.BytesIO, name: str, max_pixels: int, reduce_for: Preprocess | None
) -> Image.Image:
    """Decode and convert to RGB, both inside the one decode boundary."""
    with unreadable_as_error(name):
        return _to_rgb(decode_file(file, name, max_pixels, reduce_for))


def load_image(
    source: ImageSource,
    preprocess: Preprocess | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LoadedImage:
    """Read one image and, with ``preprocess``, resize/crop/normalise it for a model (a
    file is decoded reduced towards the model's size: see `read_rgb`)."""
    rgb = read_rgb(source, max_pixels, reduce_for=preprocess)
    name = _source_name(source)
    if preprocess is None:
        display = np.asarray(rgb, dtype=np.uint8).copy()
        tensor = torch.from_numpy(display).permute(2, 0, 1).float().div(255.0)
        return LoadedImage(name, display, tensor)
    display = preprocess.display(rgb)
    return LoadedImage(name, display, preprocess.normalize(display))


def load_images(
    sources: ImageSource | Iterable[ImageSource],
    preprocess: Preprocess | None = None,
    *,
    skip_errors: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageBatch:
    """Read many images (directories expand to the images inside, sorted) into one batch.

    With ``skip_errors`` a file that cannot be read is recorded in ``ImageBatch.errors``
    and the rest are still loaded; otherwise the first bad file raises `ImageLoadError`.
    Without a fixed-size ``preprocess`` all images must share one size.
    """
    loaded: list[LoadedImage] = []
    errors: list[tuple[str, str]] = []
    for source in expand_sources(sources):
        try:
            loaded.append(load_image(source, preprocess, max_pixels))
        except ImageLoadError as error:
            if not skip_errors:
                raise
            errors.append((_source_name(source), str(error)))
    if not loaded:
        detail = f": {errors[0][1]}" if errors else ""
        raise ImageLoadError(f"no readable image among the inputs{detail}")
    sizes = {image.display.shape for image in loaded}
    if len(sizes) > 1:
        raise ImageLoadError(
            f"images have different sizes {sorted(sizes)}; pass a preprocess with a fixed "
            "size (for example the model's LoadedModel.preprocess) to batch them"
        )
    return ImageBatch(
        tensor=torch.stack([image.tensor for image in loaded]),
        display=np.stack([image.display for image in loaded]),
        sources=[image.source for image in loaded],
        errors=errors,
    )


def iter_batches(
    sources: ImageSource | Iterable[ImageSource],
    preprocess: Preprocess,
    batch_size: int = 16,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[ImageBatch]:
    """Load many images a batch at a time; unreadable files are reported in each batch's
    ``errors`` (a batch may hold only errors, with an empty tensor) and the rest go on."""
    expanded = expand_sources(sources)
    for start in range(0, len(expanded), batch_size):
        loaded, errors = [], []
        for source in expanded[start : start + batch_size]:
            try:
                loaded.append(load_image(source, preprocess, max_pixels))
            except ImageLoadError as error:
                errors.append((_source_name(source), str(error)))
        if loaded:
            yield ImageBatch(
                torch.stack([image.tensor for image in loaded]),
                np.stack([image.display for image in loaded]),
                [image.source for image in loaded],
                errors,
            )
        else:
            height, width = preprocess.height_width
            yield ImageBatch(
                torch.empty(0, 3, height, width),
                np.empty((0, height, width, 3), np.uint8),
                [],
                errors,
            )


def image_files(folder: Path) -> list[Path]:
    """Every image file below ``folder`` (recursive; hidden entries skipped), sorted: the
    one rule by which every command reads a folder."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def expand_sources(sources: ImageSource | Iterable[ImageSource]) -> list[ImageSource]:
    """Flatten sources: a directory becomes the image files below it (`image_files`)."""
    if isinstance(sources, (str, os.PathLike, bytes, Image.Image, np.ndarray)):
        sources = [sources]
    elif isinstance(sources, torch.Tensor):
        sources = list(sources) if sources.dim() == 4 else [sources]
    expanded: list[ImageSource] = []
    for source in sources:
        if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
            files = [str(path) for path in image_files(Path(source))]
            # An empty folder stays as a source, so reading it reports a clear error.
            expanded.extend(files or [source])
        else:
            expanded.append(source)
    return expanded


def _resolve_path(source: str | os.PathLike) -> Path:
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        raise ImageLoadError(
            f"{source}: folder holds no image files (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if str(source) in SAMPLES:
        return sample_path(str(source))
    raise ImageLoadError(f"{source}: no such file (sample names: {', '.join(sorted(SAMPLES))})")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited onto white."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _array_to_rgb(np.asarray(image), "image")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _array_to_rgb(array: np.ndarray, kind: str, channels_first: bool = False) -> Image.Image:
    """``[H, W]``, ``[H, W, 1|3|4]`` or ``[1|3|4, H, W]`` arrays to 8-bit RGB.

    Where both layouts fit (``[3, 4, 4]``), tensors are read channels first (the torch
    convention) and numpy arrays channels last. uint16 is scaled by /257; other integer
    types by 255 when their values fit in 8 bits, else by 65535; float arrays must hold
    values in [0, 1].
    """
    first = array.ndim == 3 and array.shape[0] in (1, 3, 4)
    last = array.ndim == 3 and array.shape[-1] in (1, 3, 4)
    if first and (channels_first or not last):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageLoadError(
            f"{kind} of shape {tuple(array.shape)} is not an image; "
            "expected [H, W], [H, W, 3|4] or [3|4, H, W]"
        )
    pixels = pixels_to_uint8(array, kind)
    image = Image.fromarray(pixels)
    return _to_rgb(image)


def _source_name(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, bytes):
        return "<bytes>"
    return f"<{type(source).__name__}>"
