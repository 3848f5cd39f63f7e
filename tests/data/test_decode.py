"""The decode boundary: accepted formats only, every decoder failure is the one "unreadable
file" error, the memory bound is checked from the header, and reduced decoding changes
nothing for small images and almost nothing for large ones."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageFilter

from convlens.data.decode import ACCEPTED_FORMATS, reduced_size
from convlens.data.images import load_image, load_images, read_rgb
from convlens.data.preprocess import Preprocess
from convlens.errors import ImageLoadError, ImageTooLargeError


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    """``image`` as a ``fmt`` file. PNG at zlib level 1 unless asked (lossless at any level:
    the pixels read back are the same; level 6 took 5 times longer on the large scenes), and
    an RGB image for GIF given its palette by the fast octree (Pillow's default median cut
    took a second for a 1021 x 767 scene); the tests compare decodings of one file."""
    if fmt == "PNG":
        options.setdefault("compress_level", 1)
    if fmt == "GIF" and image.mode == "RGB":
        image = image.quantize(method=Image.Quantize.FASTOCTREE)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def dds_bytes() -> bytes:
    return encoded(Image.new("RGB", (8, 8), (9, 9, 9)), "DDS")


def png_header(width: int, height: int, depth: int, colour: int, body: bytes = b"") -> bytes:
    """A PNG declaring ``width x height`` at ``depth`` bits, colour type ``colour``, with
    ``body`` as its only (compressed) data: the header costs nothing to read."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(body))
        + chunk(b"IEND", b"")
    )


def scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth picture with edges: gradients, a saw-tooth and blurred noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 97 * 2.6], -1)
    pixels = np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1.5))


def test_dds_named_png_is_an_unreadable_file_naming_the_accepted_formats(tmp_path):
    Image.new("RGB", (8, 8), (10, 10, 10)).save(tmp_path / "a_good.png")
    (tmp_path / "b_bad.png").write_bytes(dds_bytes())
    with pytest.raises(ImageLoadError, match=r"b_bad\.png.*PNG, JPEG, WebP, BMP, TIFF, GIF"):
        read_rgb(tmp_path / "b_bad.png")
    batch = load_images(tmp_path, skip_errors=True)
    assert [source.rsplit("/", 1)[-1] for source in batch.sources] == ["a_good.png"]
    assert [source.rsplit("/", 1)[-1] for source, _ in batch.errors] == ["b_bad.png"]


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA", "DDS"])
def test_formats_outside_the_list_are_refused(fmt):
    with pytest.raises(ImageLoadError, match="accepted format"):
        read_rgb(encoded(Image.new("RGB", (8, 8)), fmt))


@pytest.mark.parametrize("fmt", ACCEPTED_FORMATS)
def test_every_accepted_format_reads(fmt):
    image = read_rgb(encoded(Image.new("RGB", (8, 6), (200, 100, 50)), fmt))
    assert image.mode == "RGB" and image.size == (8, 6)


@pytest.mark.parametrize(
    "raised",
    [
        NotImplementedError("unknown pixel format"),
        struct.error("unpack requires a buffer"),
        zlib.error("invalid distance"),
        EOFError(),
        MemoryError(),
        ValueError("bad tile"),
        SyntaxError("broken"),
        KeyError("tag"),
    ],
)
def test_whatever_the_decoder_raises_is_an_unreadable_file(monkeypatch, raised):
    def failing_load(self):
        raise raised

    monkeypatch.setattr(ImageFile.ImageFile, "load", failing_load)
    data = encoded(Image.new("RGB", (8, 8)), "PNG")
    with pytest.raises(ImageLoadError, match=f"not a readable image \\({type(raised).__name__}"):
        read_rgb(data)


def test_header_declaring_too_many_bytes_is_refused_before_decoding():
    # 9000 x 9000 16-bit RGBA: under the 100 MP pixel limit, 324 MB of pixels as Pillow
    # holds them (4 bytes each); the file has no pixel data, so a decode would fail
    # differently (truncated), and a refusal from the header is the only way to this error
    with pytest.raises(ImageTooLargeError, match=r"9000x9000 RGBA .* above the limit"):
        read_rgb(png_header(9000, 9000, 16, 6), reduce_for=Preprocess())
    # the bound scales with max_pixels: 3 bytes per allowed pixel
    small = png_header(20, 10, 16, 6, b"\0" * (10 * (1 + 20 * 8)))
    with pytest.raises(ImageTooLargeError, match="800 bytes, above the limit of 600"):
        read_rgb(small, max_pixels=200)
    assert read_rgb(small, max_pixels=267).size == (20, 10)


def test_max_pixels_above_pillows_own_guard_is_honoured():
    # 14200 x 14200 (201.6 MP): past Pillow's decompression-bomb error (2 x MAX_IMAGE_PIXELS,
    # about 179 MP). Header only: allowed, the open gets as far as the missing pixel data.
    header = png_header(14200, 14200, 1, 0)
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLargeError):
        read_rgb(header)  # the default limit (100 MP)
    with pytest.raises(ImageLoadError, match="not a readable image") as refused:
        read_rgb(header, max_pixels=500_000_000)
    assert not isinstance(refused.value, ImageTooLargeError)
    assert Image.MAX_IMAGE_PIXELS == limit  # Pillow's own setting is left as it was


@pytest.mark.parametrize("fmt", ACCEPTED_FORMATS)
def test_pillows_guard_is_raised_for_the_open_and_the_load(fmt, monkeypatch):
    # Pillow's guard scaled down (error above 2 x 1000 pixels) to keep the image small;
    # TIFF checks it again when it loads, after the open
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    picture = encoded(Image.new("RGB", (60, 50), (10, 20, 30)), fmt)
    with pytest.raises(ImageTooLargeError):
        read_rgb(picture, max_pixels=2000)  # within Pillow's guard, below the image
    assert read_rgb(picture, max_pixels=10_000).size == (60, 50)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_large_16_bit_png_is_decoded_reduced_to_8_bit():
    width, height = 2048, 1536
    rows = np.tile((np.arange(width) * 32).astype(">u2"), (height, 1))  # a 16-bit ramp
    body = b"".join(b"\0" + row.tobytes() for row in rows)
    image = read_rgb(png_header(width, height, 16, 0, body), reduce_for=Preprocess(size=64))
    assert max(image.size) <= 512 and min(image.size) >= 2 * 73  # 73: 64 / crop_pct
    ramp = np.asarray(image)[0, :, 0].astype(int)
    expected = np.round(np.arange(width) * 32 / 257).reshape(-1, width // image.width).mean(1)
    assert np.abs(ramp - expected).max() <= 1


@pytest.mark.parametrize("size", [(300, 400), (511, 700), (1021, 767), (16, 16), (2000, 30)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
def test_images_below_four_times_the_model_size_give_identical_tensors(size, fmt):
    preprocess = Preprocess()  # resizes the shorter side to 256
    data = encoded(scene(*size), fmt)
    unreduced = read_rgb(data)
    expected = preprocess.normalize(preprocess.display(unreduced))
    assert reduced_size(size, preprocess) is None
    assert torch_equal(load_image(data, preprocess).tensor, expected)


@pytest.mark.parametrize(
    ("size", "preprocess"),
    [
        ((1024, 768), Preprocess(size=64)),
        ((1024, 768), Preprocess(size=64, mode="pad")),
        ((1024, 768), Preprocess(size=(48, 32), mode="stretch")),
        ((1001, 751), Preprocess(size=64)),  # no common divisor: the box filter
        ((768, 1024), Preprocess(size=(64, 48))),
    ],
)
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_large_images_are_decoded_reduced_and_give_nearly_the_same_tensor(size, preprocess, fmt):
    data = encoded(scene(*size), fmt)
    reduced = read_rgb(data, reduce_for=preprocess)
    assert reduced.width * reduced.height * 4 <= size[0] * size[1]  # really reduced
    full = preprocess.display(read_rgb(data)).astype(int)
    difference = np.abs(preprocess.display(reduced).astype(int) - full)
    assert difference.mean() <= 1.5 and np.percentile(difference, 99) <= 12
    tensor = load_image(data, preprocess).tensor
    assert tensor.shape == (3, *preprocess.height_width)
    assert np.allclose(
        tensor.numpy(), preprocess.normalize(full.astype(np.uint8)).numpy(), atol=0.6
    )


def test_reduction_keeps_exif_orientation_and_palette_transparency():
    preprocess = Preprocess(size=32)
    pixels = np.zeros((400, 600, 3), np.uint8)
    pixels[:, :150] = 255  # white band on the left
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the band at the top
    shown = read_rgb(encoded(image, "JPEG", exif=exif, quality=95), reduce_for=preprocess)
    assert shown.width < shown.height < 400
    top, bottom = np.asarray(shown)[:10].mean(), np.asarray(shown)[-10:].mean()
    assert top > 200 and bottom < 50
    palette = Image.new("P", (640, 640), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(0, (0, 0, 320, 640))
    data = encoded(palette, "GIF", transparency=0)
    reduced = np.asarray(read_rgb(data, reduce_for=preprocess))
    assert reduced.shape[1] < 640
    assert reduced[:, 0].tolist() == [[255, 255, 255]] * len(reduced)  # transparent: white
    assert reduced[:, -1].tolist() == [[255, 0, 0]] * len(reduced)


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())
