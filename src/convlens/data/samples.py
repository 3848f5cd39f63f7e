"""Sample photographs shipped by scikit-image, addressable by a short name.

`convlens predict cat` reads scikit-image's ``chelsea.png``; ``sample_path("coffee")`` gives
the file path. The files are part of the scikit-image wheel, so they work offline.
"""

from __future__ import annotations

from pathlib import Path

SAMPLES: dict[str, str] = {
    "cat": "chelsea.png",
    "coffee": "coffee.png",
    "astronaut": "astronaut.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
    "horse": "horse.png",
    "coins": "coins.png",
}


def sample_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def sample_names() -> list[str]:
    """Names accepted wherever an image path is (``cat``, ``coffee``, ...)."""
    return sorted(SAMPLES)


def sample_path(name: str) -> Path:
    """Path of a bundled sample photo by short name (see `SAMPLES`) or file name."""
    file_name = SAMPLES.get(name, name)
    path = sample_dir() / file_name
    if not path.is_file():
        from convlens.errors import ImageLoadError

        raise ImageLoadError(
            f"no sample photo named {name!r}; choose one of {', '.join(sample_names())}"
        )
    return path
