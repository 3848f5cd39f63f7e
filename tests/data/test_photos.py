"""The catalogue of photos shipped by installed packages, and a user's folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convlens.data.photos import foolbox_photos, package_photos, photo_folder
from convlens.errors import DataError


def test_package_photos_exist_load_and_carry_class_ids():
    photos = package_photos()
    assert len({p.name for p in photos}) == len(photos)
    assert all(p.path.is_file() for p in photos)
    names = {p.name for p in photos}
    assert {"skimage:chelsea", "sklearn:china", "matplotlib:grace_hopper"} <= names
    chelsea = next(p for p in photos if p.name == "skimage:chelsea")
    assert chelsea.class_id == 281
    pixels = chelsea.load()
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3


def test_foolbox_photos_take_their_class_from_the_file_name():
    pytest.importorskip("foolbox")
    photos = foolbox_photos()
    assert len(photos) == 20
    for photo in photos:
        assert photo.path.stem.endswith(f"_{photo.class_id}")
        assert 0 <= photo.class_id < 1000


def test_photo_folder_reads_an_image_folder_and_loose_files(tmp_path):
    for folder in ("b_dog", "a_cat"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / folder / "x.png")
    Image.new("L", (4, 4)).save(tmp_path / "loose.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    photos = {p.name: p for p in photo_folder(tmp_path)}
    assert photos["folder:a_cat/x"].class_id == 0 and photos["folder:b_dog/x"].class_id == 1
    assert photos["folder:loose"].class_id is None
    assert photos["folder:loose"].load().shape == (4, 4, 3)
    assert len(photos) == 3
    with pytest.raises(DataError, match="no images"):
        photo_folder(_empty(tmp_path))
    with pytest.raises(DataError, match="not a folder"):
        photo_folder(tmp_path / "missing")


def _empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder
