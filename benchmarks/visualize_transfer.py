"""Class visualisations made on EfficientNet-Lite0 and classified by its siblings Lite1 and
Lite2 (do they transfer?), with the radially averaged power-spectrum slope of each picture
(`convlens.features.maco.power_spectrum_slope`) beside the photos' slope.

Classes: the first ``--classes`` distinct ImageNet classes of the photos installed
packages ship (`convlens.data.photos.package_photos`: the foolbox wheel's 20 validation
photos, then scikit-image's), so every class also has a natural photo. Each method runs at
the default settings of ``convlens visualize`` (``gradient``: 256 Fourier steps;
``maco``: `convlens.features.maco`'s defaults, recorded in the JSON), ``--chunk`` classes
per batch, one seed. With ``--chunk 1`` each picture is the one
``convlens visualize --class ID [--method maco]`` makes (same batch, same seed; the
gallery's 20-class table reads them from ``OUT``).
Pictures are rounded to 8 bits (as saved) before they are classified; each is resized
(bilinear, antialiased) to the classifier's input size. Results go to
``OUT/METHOD.json`` after every chunk (a partial run still reports what it did) and the
pictures to ``OUT/METHOD/CLASS.png``.

    python benchmarks/visualize_transfer.py --method maco --out transfer --threads 1 --chunk 1
    python benchmarks/visualize_transfer.py --method gradient --out transfer --threads 1 --chunk 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from convlens.data.photos import package_photos
from convlens.features.maco import (
    CANVAS,
    CROP_FRACTION,
    CROPS,
    DEGREES,
    LR,
    NOISE,
    SPREAD,
    STEPS,
    _square,
    maco,
    power_spectrum_slope,
)
from convlens.features.objectives import class_logit
from convlens.features.optimize import visualize
from convlens.files import write_json
from convlens.models import load_model
from convlens.render.features import to_uint8
from convlens.render.images import save_png

CLASSIFIERS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def classes_with_photos(count: int) -> list[int]:
    found: list[int] = []
    for photo in package_photos():
        if photo.class_id is not None and photo.class_id not in found:
            found.append(photo.class_id)
    return found[:count]


def top1(loaded, images: torch.Tensor) -> list[int]:
    """Top-1 class of ``images`` ``Tensor[B, 3, H, W]`` in [0, 1] at ``loaded``'s size."""
    size = loaded.preprocess.height_width
    resized = F.interpolate(images, size=size, mode="bilinear", antialias=True)
    mean = torch.tensor(loaded.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.preprocess.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return loaded.module((resized - mean) / std).argmax(1).tolist()


def photo_slope(size: int = 224) -> tuple[float, int]:
    squares = []
    for photo in package_photos():
        try:
            squares.append(_square(photo.load(), size))
        except Exception:  # noqa: BLE001 - an unreadable photo is left out
            continue
    return float(power_spectrum_slope(torch.stack(squares)).mean()), len(squares)


def maco_settings(args: argparse.Namespace) -> dict:
    """`maco`'s keyword arguments: its defaults (those of ``convlens visualize --method
    maco``) unless overridden on the command line (e.g. the defaults before 2026-12-07:
    ``--steps 64 --crops 4 --spread 0.15 --lr 0.5``)."""
    settings = {
        "steps": STEPS,
        "crops": CROPS,
        "crop_fraction": CROP_FRACTION,
        "noise": NOISE,
        "degrees": DEGREES,
        "canvas": CANVAS,
        "spread": SPREAD,
        "lr": LR,
    }
    given = {
        "steps": args.steps,
        "crops": args.crops,
        "noise": args.noise,
        "degrees": args.degrees,
        "canvas": args.canvas,
        "spread": args.spread,
        "lr": args.lr,
        "crop_fraction": None if args.crop_low is None else (args.crop_low, 1.0),
    }
    settings.update({name: value for name, value in given.items() if value is not None})
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", choices=("gradient", "maco"), required=True)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("transfer"))
    options = (("steps", int), ("crops", int), ("noise", float), ("degrees", float))
    for name, kind in (*options, ("canvas", float)):
        parser.add_argument(f"--{name}", type=kind, help=f"maco: {name} (default: maco's)")
    parser.add_argument("--crop-low", type=float, help="maco: smallest crop side (fraction)")
    parser.add_argument("--seed", type=int, default=0, help="maco: the seed (default 0)")
    parser.add_argument("--spread", type=float, help="maco: std of a crop's centre (fraction)")
    parser.add_argument("--lr", type=float, help="maco: NAdam's learning rate")
    args = parser.parse_args()
    settings = maco_settings(args)
    torch.set_num_threads(args.threads)
    maker = load_model("efficientnet_lite0")
    classifiers = {name: load_model(name) for name in CLASSIFIERS}
    classes = classes_with_photos(args.classes)
    slope, photos = photo_slope()
    record = {
        "method": args.method,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "threads": args.threads,
        "photos_slope": slope,
        "photos": photos,
        "settings": settings if args.method == "maco" else {"steps": 256},
        "seed": args.seed if args.method == "maco" else 0,
        "rows": [],
    }
    start = time.perf_counter()
    for first in range(0, len(classes), args.chunk):
        chunk = classes[first : first + args.chunk]
        objectives = [class_logit(c) for c in chunk]
        if args.method == "maco":
            result = maco(maker, objectives, **settings, seed=args.seed)
        else:
            result = visualize(maker, objectives)
        saved = torch.from_numpy(to_uint8(result.images)).permute(0, 3, 1, 2).float() / 255
        answers = {name: top1(model, saved) for name, model in classifiers.items()}
        slopes = power_spectrum_slope(saved).tolist()
        for b, class_id in enumerate(chunk):
            save_png(to_uint8(result.images[b]), args.out / args.method / f"{class_id}.png")
            record["rows"].append(
                {
                    "class": class_id,
                    "label": maker.labels[class_id],
                    "slope": slopes[b],
                    **{name: answers[name][b] for name in CLASSIFIERS},
                }
            )
        record["seconds"] = time.perf_counter() - start
        rows = record["rows"]
        record["top1"] = {
            name: sum(row[name] == row["class"] for row in rows) for name in CLASSIFIERS
        }
        record["mean_slope"] = sum(row["slope"] for row in rows) / len(rows)
        write_json(args.out / f"{args.method}.json", record)
        print(
            f"{len(rows)} classes, {record['seconds']:.0f} s: top-1 {record['top1']}, "
            f"slope {record['mean_slope']:.2f} (photos {slope:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
