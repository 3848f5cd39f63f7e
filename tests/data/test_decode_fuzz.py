"""Seeded fuzzing of the decoder: every mutated file of every accepted format either reads
as an image or raises the one "unreadable file" error (`ImageLoadError`); nothing else
escapes. Decode only, 16x16 sources, so the whole set takes a few seconds."""

from __future__ import annotations

import io
import random
import warnings

import numpy as np
import pytest
from PIL import Image

from convlens.data.decode import ACCEPTED_FORMATS
from convlens.data.images import read_rgb
from convlens.errors import ImageLoadError

MUTATIONS_PER_FORMAT = 200  # x 6 formats = 1,200 files
FOREIGN_FORMATS = ("DDS", "ICO", "PPM", "TGA", "PCX", "SGI", "QOI")  # Pillow reads them
SAVE_OPTIONS = {"TIFF": {"compression": "tiff_deflate"}, "WEBP": {"quality": 80}}


def valid_file(fmt: str, seed: int) -> bytes:
    """A tiny valid file of ``fmt``: 16x16 noise in a mode the format commonly holds."""
    rng = np.random.default_rng(seed)
    mode = {"GIF": "P", "BMP": "RGB", "JPEG": "RGB", "PPM": "RGB", "PCX": "RGB"}.get(fmt, "RGBA")
    pixels = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA")
    image = image.convert(mode) if mode != "RGBA" else image
    buffer = io.BytesIO()
    image.save(buffer, fmt, **SAVE_OPTIONS.get(fmt, {}))
    return buffer.getvalue()


def mutated(data: bytes, others: list[bytes], rng: random.Random) -> bytes:
    """One random damage: bit flips, inserted or deleted bytes, truncation, another
    format's header spliced on, or random bytes behind the valid magic number."""
    data = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(data))
            data[position] ^= 1 << rng.randrange(8)
    elif kind == 1:
        position = rng.randrange(len(data))
        data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 2:
        position = rng.randrange(len(data))
        del data[position : position + rng.randint(1, 16)]
    elif kind == 3:
        data = data[: rng.randrange(1, len(data))]
    elif kind == 4:
        other = rng.choice(others)
        cut = rng.randint(4, 64)
        data = bytearray(other[:cut]) + data[cut:]
    else:
        data = data[:8] + bytearray(rng.randbytes(rng.randint(0, 512)))
    return bytes(data)


@pytest.mark.parametrize("fmt", ACCEPTED_FORMATS)
def test_every_mutated_file_reads_or_is_an_unreadable_file(fmt):
    rng = random.Random(f"convlens-fuzz-{fmt}")
    sources = [valid_file(fmt, seed) for seed in range(4)]
    others = [valid_file(other, 0) for other in ACCEPTED_FORMATS + FOREIGN_FORMATS if other != fmt]
    outcomes = {"read": 0, "unreadable": 0}
    for _ in range(MUTATIONS_PER_FORMAT):
        data = mutated(rng.choice(sources), others, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about some damage; not the point
            try:
                image = read_rgb(data)
            except ImageLoadError:
                outcomes["unreadable"] += 1
                continue
        assert image.mode == "RGB" and min(image.size) >= 1
        outcomes["read"] += 1
    assert sum(outcomes.values()) == MUTATIONS_PER_FORMAT
    assert outcomes["unreadable"] > 0  # the damage really reached the decoder
