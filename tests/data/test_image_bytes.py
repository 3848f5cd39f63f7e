"""Encoded image bytes (uploads) as a source, and the pixel limit read from the header."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from convlens.data.images import load_image, load_images, read_rgb
from convlens.data.samples import sample_path
from convlens.errors import ImageLoadError, ImageTooLargeError


def test_bytes_read_like_the_file():
    path = sample_path("coffee")
    from_bytes = load_image(path.read_bytes())
    assert np.array_equal(from_bytes.display, load_image(path).display)
    assert from_bytes.source == "<bytes>"
    assert load_images(path.read_bytes()).tensor.shape[0] == 1


def test_pixel_limit_is_checked_before_decoding():
    buffer = io.BytesIO()
    Image.new("RGB", (30, 20)).save(buffer, format="PNG")
    with pytest.raises(ImageTooLargeError, match="30x20 pixels is above the limit of 599"):
        read_rgb(buffer.getvalue(), max_pixels=599)
    assert read_rgb(buffer.getvalue(), max_pixels=600).size == (30, 20)


def test_garbage_bytes_are_an_image_load_error():
    with pytest.raises(ImageLoadError, match="not a readable image"):
        read_rgb(b"\x89PNG but not really")
