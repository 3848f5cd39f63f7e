"""Decode image files: the one place where encoded bytes become pixels.

Everything Pillow or a codec raises while opening, loading or converting a file becomes
`ImageLoadError` ("unreadable file": every command skips it and goes on), and only the
formats in `ACCEPTED_FORMATS` are opened at all.

Memory bound: before any pixel is decoded, the header's width x height x bands x bytes per
band must be at most ``BYTES_PER_PIXEL_LIMIT x max_pixels`` bytes (the size of an 8-bit RGB
image at the pixel limit: 300 MB with the default 100 MP), else `ImageTooLargeError`.
Given the model's `Preprocess`, a file is then decoded reduced towards twice the size it
resizes to (JPEG at 1/2, 1/4 or 1/8 scale by the decoder; others averaged down as soon as
they are loaded), and 16- or 32-bit pixels become 8-bit a strip of rows at a time, so one
read holds at most about twice the bound.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from convlens.errors import ImageLoadError, ImageTooLargeError

if TYPE_CHECKING:  # only its resize_crop is called; preprocess.py imports images.py
    from convlens.data.preprocess import Preprocess

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
ACCEPTED_NAMES = "PNG, JPEG, WebP, BMP, TIFF, GIF"
BYTES_PER_PIXEL_LIMIT = 3
TOO_LARGE_HINT = (
    "downscale the file, or if you trust it load it from Python with "
    "convlens.load_images(..., max_pixels=N) for a larger N"
)
HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F")
STRIP_PIXELS = 1 << 20  # pixels converted to 8 bits at a time
QUOTED_CHARS = 200  # of a decoder's own message


@contextmanager
def unreadable_as_error(name: str) -> Iterator[None]:
    """Turn whatever decoding ``name`` raises into `ImageLoadError` (the file is
    unreadable and is skipped), `ImageTooLargeError` for Pillow's decompression-bomb
    guard. Wrap only opening, loading and converting a file, never model code."""
    try:
        yield
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"{name}: {_quoted(error)}; {TOO_LARGE_HINT}") from error
    except UnidentifiedImageError as error:
        raise ImageLoadError(
            f"{name}: not a readable image in an accepted format ({ACCEPTED_NAMES}); "
            "convert it to one of them or remove it"
        ) from error
    except Exception as error:  # any codec failure: OSError, SyntaxError, zlib.error, ...
        raise ImageLoadError(
            f"{name}: not a readable image ({type(error).__name__}: {_quoted(error)}); "
            "check the file or remove it"
        ) from error


def decode_file(
    file: str | Path | IO[bytes],
    name: str,
    max_pixels: int,
    reduce_for: Preprocess | None = None,
) -> Image.Image:
    """The image in ``file`` (named ``name`` in messages), loaded, EXIF orientation
    applied, 16/32-bit pixels scaled to 8 bits (``L``); other modes are kept (palette,
    alpha, CMYK: `convlens.data.images.read_rgb` makes them RGB).

    Refused before decoding (`ImageTooLargeError`): more than ``max_pixels`` pixels, or
    more than ``BYTES_PER_PIXEL_LIMIT * max_pixels`` bytes of pixels. With
    ``reduce_for``, the image is decoded reduced to `reduced_size` (JPEG by the decoder
    where it can, others as soon as loaded), never below twice the size ``reduce_for``
    resizes it to, so the model sees nearly the same pixels; an image less than four
    times that size is decoded exactly as without it. Any decoding failure is `ImageLoadError`."""
    with unreadable_as_error(name), _opened(file, max_pixels) as image:
        _check_declared_size(image, name, max_pixels)
        target = None if reduce_for is None else reduced_size(image.size, reduce_for)
        if target is not None and image.format in ("JPEG", "MPO"):
            _draft_jpeg(image, target)
        image.load()
        loaded = image.size
        ImageOps.exif_transpose(image, in_place=True)
        pixels = to_8_bit(image) if image.mode in HIGH_DEPTH_MODES else image
        if target is not None:
            pixels = _reduced(pixels, target if image.size == loaded else target[::-1])
        return pixels if pixels is not image else image.copy()


_PILLOW_LIMIT = threading.Lock()


@contextmanager
def _opened(file: str | Path | IO[bytes], max_pixels: int) -> Iterator[Image.Image]:
    """``Image.open`` of ``file`` in the accepted formats. Pillow refuses images over twice
    its own ``Image.MAX_IMAGE_PIXELS`` (about 179 MP) when it opens them, and TIFF again
    when it loads them; a ``max_pixels`` set above that is honoured by raising Pillow's
    limit for the whole block (open and load), under a lock that every decode takes to read
    the limit, so concurrent decodes neither see nor restore each other's value."""
    _PILLOW_LIMIT.acquire()
    pillow = Image.MAX_IMAGE_PIXELS
    if pillow is None or max_pixels <= 2 * pillow:
        _PILLOW_LIMIT.release()
        with Image.open(file, formats=ACCEPTED_FORMATS) as image:
            yield image
        return
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        with Image.open(file, formats=ACCEPTED_FORMATS) as image:
            yield image
    finally:
        Image.MAX_IMAGE_PIXELS = pillow
        _PILLOW_LIMIT.release()


def reduced_size(size: tuple[int, int], preprocess: Preprocess) -> tuple[int, int] | None:
    """The size to decode an image of ``size`` at for ``preprocess`` (None: its own).

    It is never below twice what ``preprocess`` resizes the image to (its resampling then
    still does most of the smoothing): ``size / factor`` for the largest integer factor
    dividing both sides (the reduced image covers exactly the original's area), else, where
    a box filter can reduce at least twice as far, ``round(size / factor)``. Either way
    `Preprocess.resize_crop` must give the same resize and crop as for the full image, in
    both orientations (an EXIF rotation is applied after decoding)."""
    needed = smallest_useful_size(size, preprocess)
    geometry = _geometry(size, preprocess)
    most = min(size[0] // max(1, 2 * needed[0]), size[1] // max(1, 2 * needed[1]))
    exact = next(
        (
            factor
            for factor in range(most, 1, -1)
            if size[0] % factor == 0 and size[1] % factor == 0
            if _geometry((size[0] // factor, size[1] // factor), preprocess) == geometry
        ),
        1,
    )
    for factor in range(most, 2 * exact - 1, -1):  # a box filter reduces twice as far
        reduced = (round(size[0] / factor), round(size[1] / factor))
        if _geometry(reduced, preprocess) == geometry:
            return reduced
    return None if exact == 1 else (size[0] // exact, size[1] // exact)


def smallest_useful_size(size: tuple[int, int], preprocess: Preprocess) -> tuple[int, int]:
    """The least ``(width, height)`` a reduced decode of an image of ``size`` may have: the
    size ``preprocess`` resizes it to, taken in both orientations (an EXIF rotation is
    applied after decoding)."""
    width, height = size
    (as_is_w, as_is_h), _ = preprocess.resize_crop((width, height))
    (turned_w, turned_h), _ = preprocess.resize_crop((height, width))
    return max(as_is_w, turned_h), max(as_is_h, turned_w)


def declared_bytes(image: Image.Image) -> int:
    """Bytes of the image's pixels as its header declares them: width x height x bands x
    bytes per band of its mode (2 for 16-bit, 4 for 32-bit integer or float)."""
    mode = ImageMode.getmode(image.mode)
    band_bytes = int(mode.typestr[-1])
    return image.width * image.height * len(mode.bands) * band_bytes


def to_8_bit(image: Image.Image) -> Image.Image:
    """A 16/32-bit single-band image (``I;16*``, ``I``, ``F``) as ``L``, a strip of rows at
    a time (no full-size wide copy): uint16 divided by 257; other integers by 1 when they
    all fit in 8 bits, else by 257 (values above 65535 or below 0 are refused); floats must
    lie in [0, 1] and are multiplied by 255."""
    kind = f"{image.mode} image"
    extremes = image.getextrema() if image.mode == "I" else None
    out = Image.new("L", image.size)
    rows = max(1, STRIP_PIXELS // max(1, image.width))
    for top in range(0, image.height, rows):
        box = (0, top, image.width, min(image.height, top + rows))
        strip = pixels_to_uint8(np.asarray(image.crop(box)), kind, extremes)
        out.paste(Image.fromarray(strip, "L"), box)
    return out


def pixels_to_uint8(
    array: np.ndarray, kind: str, extremes: tuple[float, float] | None = None
) -> np.ndarray:
    """``array`` (any integer, bool or float type) as uint8, scaled by the rules of
    `to_8_bit`; ``extremes`` (low, high) decides the integer scale for a strip of a larger
    image (default: the array's own). `ImageLoadError` for values that fit no rule."""
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        low, high = extremes or (array.min(), array.max())
        if low < 0:
            raise ImageLoadError(f"{kind} has negative integer pixels; expected unsigned values")
        if array.dtype == np.uint16:
            top = 65535  # the type's range, also for a dark 16-bit image
        elif high <= 255:
            top = 255
        elif high <= 65535:
            top = 65535
        else:
            raise ImageLoadError(
                f"{kind} has integer pixels up to {high}; expected 8- or 16-bit values"
            )
        return np.round(array.astype(np.float64) * (255.0 / top)).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageLoadError(f"{kind} contains NaN or infinite pixels")
        if array.min() < 0 or array.max() > 1:
            raise ImageLoadError(
                f"float {kind} has values in [{array.min():.3g}, {array.max():.3g}]; "
                "float images must be in [0, 1] (un-normalise first, or pass uint8)"
            )
        return np.round(array * 255.0).astype(np.uint8)
    raise ImageLoadError(f"{kind} has unsupported dtype {array.dtype}")


def _check_declared_size(image: Image.Image, name: str, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} pixels is above the limit of {max_pixels}; {TOO_LARGE_HINT}"
        )
    limit = BYTES_PER_PIXEL_LIMIT * max_pixels
    if declared_bytes(image) > limit:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} {image.mode} pixels take {declared_bytes(image):,} "
            f"bytes, above the limit of {limit:,} ({BYTES_PER_PIXEL_LIMIT} bytes x "
            f"max_pixels); {TOO_LARGE_HINT}"
        )


def _geometry(size: tuple[int, int], preprocess: Preprocess) -> tuple:
    return preprocess.resize_crop(size), preprocess.resize_crop(size[::-1])


def _draft_jpeg(image: Image.Image, target: tuple[int, int]) -> None:
    """Let the JPEG decoder scale by 1/8, 1/4 or 1/2 where the scaled image is a whole
    multiple of ``target`` (so that `_reduced` finishes with an exact reduction)."""
    for scale in (8, 4, 2):
        width, height = image.width // scale, image.height // scale
        exact = image.width % scale == 0 and image.height % scale == 0
        factor = width // target[0]
        if exact and factor >= 1 and (width, height) == (target[0] * factor, target[1] * factor):
            image.draft(None, (width, height))
            return


def _reduced(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """``image`` at ``target``: an exact integer reduction where the sizes allow, else a
    box filter (both average in premultiplied alpha)."""
    if image.size == target:
        return image
    image = _reducible(image)
    factor = image.width // target[0]
    if image.size == (target[0] * factor, target[1] * factor):
        return image.reduce(factor)
    return image.resize(target, Image.Resampling.BOX)


def _reducible(image: Image.Image) -> Image.Image:
    """``image`` in a mode `Image.reduce` averages: palette and 1-bit images become what
    ``read_rgb`` would make of them (RGB, or RGBA where the palette has transparency)."""
    if image.mode in REDUCIBLE_MODES:
        return image
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "1":
        return image.convert("L")
    return image.convert("RGBA" if "A" in image.getbands() else "RGB")


def _quoted(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= QUOTED_CHARS else text[: QUOTED_CHARS - 3] + "..."
