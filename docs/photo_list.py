"""Print the paths of the real colour photos that installed packages ship, one per line
(the ``.txt`` form `convlens scan` and `convlens embed` read): scikit-image's photos,
scikit-learn's two, and the 20 ImageNet validation photos in the ``foolbox`` wheel (named
``imagenet_NN_CLASS.jpg``). Packages that are not installed are skipped.

Run: ``python docs/photo_list.py > photos.txt``
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
    "camera.png",
    "coins.png",
    "moon.png",
    "brick.png",
    "grass.png",
    "gravel.png",
)


def package_folder(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return None if spec is None or spec.origin is None else Path(spec.origin).parent


def photo_paths() -> list[Path]:
    paths: list[Path] = []
    if (skimage := package_folder("skimage")) is not None:
        paths += [skimage / "data" / name for name in SKIMAGE_PHOTOS]
    if (sklearn := package_folder("sklearn")) is not None:
        paths += sorted((sklearn / "datasets" / "images").glob("*.jpg"))
    if (foolbox := package_folder("foolbox")) is not None:
        paths += sorted((foolbox / "data").glob("imagenet_*.jpg"))
    return [path for path in paths if path.is_file()]


if __name__ == "__main__":
    for path in photo_paths():
        print(path)
