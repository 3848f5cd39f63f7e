"""A catalogue of real photographs that installed packages ship, with their ImageNet class id
where it is known, plus a user's own folder.

Sources (each used only when its package is installed; nothing is downloaded):

- ``foolbox`` (the ``photos`` extra): 20 ImageNet validation photos, ``imagenet_NN_CLASS.jpg``
  (the class id is in the name);
- ``scikit-image``: chelsea (a tabby cat), coffee (a cup of espresso), astronaut, rocket,
  motorcycle_left, motorcycle_right;
- ``scikit-learn``: china (a temple roof), flower;
- ``matplotlib``: grace_hopper (a portrait in uniform).

Class ids of the non-ImageNet sources are the ImageNet class of what the photo shows where
one clearly applies (None otherwise). ``photo_folder(path)`` catalogues a user's folder: the
images directly in it (class unknown) or an ImageFolder tree ``root/CLASS/*.jpg`` (class
= the folder's position among the sorted class folders, as torchvision numbers them).

Nothing here knows a model: callers decide which photos a model classifies confidently.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convlens.data.images import read_rgb
from convlens.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Photo:
    """One photograph: ``name`` (``source:stem``), ``path``, ``class_id`` (ImageNet class or
    the ImageFolder index; None when unknown), ``source`` (package or ``folder``)."""

    name: str
    path: Path
    class_id: int | None
    source: str

    def load(self) -> np.ndarray:
        """The photo as ``uint8[H, W, 3]`` RGB pixels (`ImageLoadError` when the file
        cannot be read)."""
        return np.asarray(read_rgb(self.path)).copy()


# Files of non-ImageNet packages and the ImageNet class they show (None: no clear class).
_SKIMAGE = {
    "chelsea.png": 281,  # tabby cat
    "coffee.png": 967,  # espresso
    "astronaut.png": None,
    "rocket.jpg": None,
    "motorcycle_left.png": None,
    "motorcycle_right.png": None,
}
_SKLEARN = {"china.jpg": None, "flower.jpg": None}
_MATPLOTLIB = {"grace_hopper.jpg": 652}  # military uniform
_FOOLBOX_NAME = re.compile(r"imagenet_\d+_(\d+)\.jpg$")


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def foolbox_photos() -> list[Photo]:
    """The 20 ImageNet validation photos of the ``foolbox`` wheel ([] if not installed)."""
    root = _package_dir("foolbox")
    folder = None if root is None else root / "data"
    if folder is None or not folder.is_dir():
        return []
    photos = []
    for path in sorted(folder.glob("imagenet_*.jpg")):
        match = _FOOLBOX_NAME.search(path.name)
        if match:
            photos.append(Photo(f"foolbox:{path.stem}", path, int(match.group(1)), "foolbox"))
    return photos


def _listed(module: str, subfolder: str, files: dict[str, int | None], source: str):
    root = _package_dir(module)
    if root is None:
        return []
    folder = root / subfolder
    return [
        Photo(f"{source}:{Path(name).stem}", folder / name, class_id, source)
        for name, class_id in files.items()
        if (folder / name).is_file()
    ]


def package_photos() -> list[Photo]:
    """Every photo the installed packages ship (see the module docstring), in a fixed order:
    foolbox, scikit-image, scikit-learn, matplotlib."""
    return [
        *foolbox_photos(),
        *_listed("skimage.data", "", _SKIMAGE, "skimage"),
        *_listed("sklearn.datasets", "images", _SKLEARN, "sklearn"),
        *_listed("matplotlib", "mpl-data/sample_data", _MATPLOTLIB, "matplotlib"),
    ]


def photo_folder(path: str | Path) -> list[Photo]:
    """Photos of a user's folder: an ImageFolder tree (``root/CLASS/file``; class = index of
    the sorted class folder) or the image files directly in ``path`` (class unknown)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass a folder of photos or an ImageFolder root")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    photos = [
        Photo(f"folder:{folder.name}/{file.stem}", file, index, "folder")
        for index, folder in enumerate(classes)
        for file in sorted(folder.iterdir())
        if file.suffix.lower() in IMAGE_SUFFIXES
    ]
    photos += [
        Photo(f"folder:{file.stem}", file, None, "folder")
        for file in sorted(root.iterdir())
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not photos:
        raise DataError(
            f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}) directly or in class folders"
        )
    return photos


__all__ = ["Photo", "foolbox_photos", "package_photos", "photo_folder"]
