"""Make the pictures of docs/gallery.md: ``python docs/make_gallery.py FOLDER``, and the
20-class table (``--classes FOLDER [--transfer TRANSFER]``).

Every view on the default model and the ``cat`` sample. The pictures that have a command
are made by running that very command (the one in the gallery's section header), so the
gallery and the command line cannot drift apart; the others come from the Python API.
Finally the class visualisation is re-read from its 8-bit PNG and classified
(``convlens predict``), which prints its top 5.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from convlens.errors import ConvlensError

LAYER = "blocks.4"  # 14x14 x 112 channels: deep enough to be specific, still spatial
CLASS_NAME = "goldfish"
CLASS_STEPS = (128, 512)  # the top-5 check (128) and the picture to look at (512)
COLUMNS = ("fourier", "maco", "accentuate")  # the class table's made columns


def class_picture(steps: int) -> str:
    return f"class_{CLASS_NAME}_{steps}.png"


def command_pictures() -> list[tuple[str, list[str]]]:
    """``(file, argv)`` of each picture a `convlens` command makes, as documented."""
    return [
        ("filters.png", ["filters"]),
        ("feature_maps.png", ["features", "cat", "--layer", LAYER, "--top", "24"]),
        ("layer_means.png", ["features", "cat", "--all-layers"]),
    ] + [
        (class_picture(steps), ["visualize", "--class", CLASS_NAME, "--steps", str(steps)])
        for steps in CLASS_STEPS
    ]


def _run(argv: list[str]) -> None:
    from convlens.cli import main

    if main(argv) != 0:
        raise ConvlensError(f"'convlens {' '.join(argv)}' failed (see above)")


def api_pictures(folder: Path) -> list[Path]:
    """The mask + projections panel and the Gram heat map (no command of their own)."""
    from convlens.data.images import load_images
    from convlens.features.activations import feature_maps
    from convlens.features.gram import gram_matrix
    from convlens.features.masks import activation_mask
    from convlens.features.projection import project_unit
    from convlens.models import load_model
    from convlens.render import features as draw
    from convlens.render.images import image_grid, save_png

    loaded = load_model()
    batch = load_images(["cat"], preprocess=loaded.preprocess)
    image, display = batch.tensor[0], batch.display[0]
    top_channel = int(feature_maps(loaded, image, LAYER, top=1).channels[0])
    mask = activation_mask(loaded, image, LAYER, top_channel, quantile=0.8)
    panel = [display, draw.mask_overlay(display, mask.mask)]
    titles = ["cat", f"{LAYER}:{top_channel} top 20%"]
    for rule in ("deconvnet", "guided"):
        unit = project_unit(loaded, image, LAYER, top_channel, rule=rule)
        panel.append(draw.projection_image(unit.projection))
        titles.append(f"{rule}, its max unit")
    written = [save_png(image_grid(panel, titles, 4), folder / "mask_projection.png")]
    gram = gram_matrix(loaded, image[None], "blocks.2")[0]
    written.append(save_png(draw.gram_heatmap(gram), folder / "gram.png"))
    return written


def class_photos(count: int = 20) -> list[tuple[int, Path]]:
    """The classes of `benchmarks/visualize_transfer.py` (the first ``count`` distinct
    ImageNet classes of the installed photos) with the first photo of each."""
    from convlens.data.photos import package_photos

    found: dict[int, Path] = {}
    for photo in package_photos():
        if photo.class_id is not None and photo.class_id not in found:
            found[photo.class_id] = photo.path
    return list(found.items())[:count]


def class_commands(class_id: int, photo: Path) -> dict[str, list[str]]:
    """``column -> argv`` of the three pictures of one class (each at its defaults)."""
    return {
        "fourier": ["visualize", "--class", str(class_id)],
        "maco": ["visualize", "--class", str(class_id), "--method", "maco"],
        "accentuate": [
            *("visualize", "--class", str(class_id), "--method", "accentuate"),
            *("--image", str(photo)),
        ],
    }


def _run_json(argv: list[str]) -> dict:
    """Run ``convlens ARGV --json`` in this process and return its record."""
    import contextlib
    import io
    import json

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        _run([*argv, "--json"])
    return json.loads(printed.getvalue())


def _tile(pixels, side: int):
    """``uint8[H, W, 3]`` -> its centre square as ``uint8[side, side, 3]`` (antialiased)."""
    import numpy as np
    from PIL import Image

    height, width = pixels.shape[:2]
    top, left = (height - min(height, width)) // 2, (width - min(height, width)) // 2
    pixels = pixels[top : top + min(height, width), left : left + min(height, width)]
    image = Image.fromarray(np.ascontiguousarray(pixels)).resize(
        (side, side), Image.Resampling.LANCZOS
    )
    return np.asarray(image)


def class_table(
    folder: Path, transfer: Path | None, columns: Sequence[str] = COLUMNS, side: int = 128
) -> list[Path]:
    """Per class: the photo, the Fourier and MACO class visualisations and the photo
    accentuated towards its class, as ``side``-px JPEG tiles ``folder/CLASS-COLUMN.jpg``,
    and ``folder/records.json`` (each command's JSON record). Fourier and MACO pictures are
    read from ``transfer/gradient/CLASS.png`` and ``transfer/maco/CLASS.png`` when given
    (`benchmarks/visualize_transfer.py --chunk 1` makes the very picture of the command),
    otherwise made by the command. Only ``columns`` are (re)made; records already in
    ``records.json`` are kept."""
    import json
    import tempfile

    import numpy as np
    from PIL import Image

    from convlens.data.images import read_rgb
    from convlens.files import write_json

    record_file = folder / "records.json"
    records = json.loads(record_file.read_text()) if record_file.is_file() else {}
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        for class_id, photo in class_photos():
            commands = class_commands(class_id, photo)
            tiles = {"photo": _tile(np.asarray(read_rgb(photo)), side)}
            for column, argv in commands.items():
                if column not in columns:
                    continue
                saved = None
                if transfer is not None and column != "accentuate":
                    method = "gradient" if column == "fourier" else column
                    saved = transfer / method / f"{class_id}.png"
                if saved is not None and saved.is_file():
                    picture = np.asarray(read_rgb(saved))
                else:
                    out = Path(scratch) / f"{class_id}-{column}.png"
                    records[f"{class_id}-{column}"] = _run_json([*argv, "--out", str(out)])
                    picture = np.asarray(read_rgb(out))
                    # the CLI draws photo | result (accentuate), picture | importance | ...
                    picture = picture[:, -picture.shape[0] :] if column == "accentuate" else picture
                    picture = picture[:, : picture.shape[0]]
                tiles[column] = _tile(picture, side)
            for column, pixels in tiles.items():
                path = folder / f"{class_id}-{column}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path, quality=85)
                written.append(path)
            write_json(record_file, records, force=True)
    return [*written, record_file]


def _shell(argv: list[str]) -> str:
    """``convlens ARGV`` as documented: a foolbox photo's path as ``$FOOLBOX/NAME``, the
    scikit-image cat as the sample name ``cat``."""
    words = []
    for word in argv:
        if word.endswith("chelsea.png"):
            word = "cat"
        elif "/foolbox/data/" in word:
            word = "$FOOLBOX/" + Path(word).name
        words.append(word)
    return "convlens " + " ".join(words)


def class_table_markdown(transfer: Path, folder: str = "images/classes") -> str:
    """The gallery's 20-class table (tiles in ``folder``, relative to docs/) with each
    picture's Lite0/Lite1/Lite2 top-1 from ``transfer/gradient.json`` and
    ``transfer/maco.json``, then every command in a block."""
    import json

    from convlens.models.labels import imagenet_labels

    labels = imagenet_labels()
    answers = {}
    for method in ("gradient", "maco"):
        record = json.loads((transfer / f"{method}.json").read_text())
        answers[method] = {row["class"]: row for row in record["rows"]}
    names = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")

    def verdict(method: str, class_id: int) -> str:
        row = answers[method][class_id]
        marks = ["yes" if row[name] == class_id else f"no ({labels[row[name]]})" for name in names]
        return "Lite0/1/2 top-1: " + ", ".join(marks)

    lines = [
        "| class | photo | Fourier | MACO | accentuation |",
        "|---|---|---|---|---|",
    ]
    commands = []
    for class_id, photo in class_photos():
        label = answers["maco"][class_id]["label"]
        tiles = [f"![{column}]({folder}/{class_id}-{column}.jpg)" for column in ("photo",)]
        cells = [f"{class_id} {label}", tiles[0]]
        for column, method in (("fourier", "gradient"), ("maco", "maco")):
            cell = f"![{column}]({folder}/{class_id}-{column}.jpg)<br>{verdict(method, class_id)}"
            cells.append(cell)
        cells.append(f"![accentuation]({folder}/{class_id}-accentuate.jpg)")
        lines.append("| " + " | ".join(cells) + " |")
        commands += [_shell(argv) for argv in class_commands(class_id, photo).values()]
    return "\n".join([*lines, "", "```bash", *commands, "```"])


DIVERSITY = ["visualize", "--channel", "blocks.5:0", "--diversity", "4", "--steps", "128"]


def diverse_facets(folder: Path, side: int = 128) -> Path:
    """Run `DIVERSITY` (one unit, four pictures pushed apart, one per row) and save its
    pictures side by side as ``side``-px tiles in ``folder/diverse.jpg``."""
    import tempfile

    import numpy as np
    from PIL import Image

    from convlens.data.images import read_rgb

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "diverse.png"
        _run([*DIVERSITY, "--out", str(out)])
        rows = np.asarray(read_rgb(out))
    width, count = rows.shape[1], int(DIVERSITY[DIVERSITY.index("--diversity") + 1])
    pictures = [rows[k * (width + 4) : k * (width + 4) + width] for k in range(count)]
    gap = np.full((side, 4, 3), 255, np.uint8)
    strip = [part for picture in pictures for part in (_tile(picture, side), gap)][:-1]
    path = folder / "diverse.jpg"
    Image.fromarray(np.concatenate(strip, axis=1)).save(path, quality=85)
    return path


def make_gallery(folder: Path) -> list[Path]:
    """Write every gallery PNG into ``folder`` and classify the class visualisations;
    returns the paths."""
    written = []
    for name, argv in command_pictures():
        _run([*argv, "--out", str(folder / name)])
        written.append(folder / name)
    written += api_pictures(folder)
    for steps in CLASS_STEPS:
        _run(["predict", str(folder / class_picture(steps))])
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument(
        "--classes", action="store_true", help="make the 20-class table into FOLDER instead"
    )
    parser.add_argument(
        "--transfer",
        type=Path,
        help="with --classes: the --out folder of benchmarks/visualize_transfer.py --chunk 1",
    )
    parser.add_argument(
        "--columns",
        default=",".join(COLUMNS),
        help="with --classes: the columns to make (and diversity: the diverse facets)",
    )
    args = parser.parse_args()
    if args.classes:
        columns = args.columns.split(",")
        made = class_table(args.folder, args.transfer, columns)
        if "diversity" in columns:
            made.append(diverse_facets(args.folder))
        if args.transfer is not None:
            print(class_table_markdown(args.transfer))
    else:
        made = make_gallery(args.folder)
    for path in made:
        print(path)


if __name__ == "__main__":
    main()
