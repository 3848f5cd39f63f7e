"""Make the explain panels shown in docs/gallery.md and the README: the exact commands below
(each one's JSON record is removed afterwards, only the pictures are kept).

    python docs/make_panels.py docs/images/panels

The ViT panel uses timm's vit_tiny_patch16_224 with random weights (--random-weights): no
pretrained ViT is available offline, so it shows the patch-grid layout, not what a
trained ViT attends to.
"""

from __future__ import annotations

import sys
from pathlib import Path

from convlens.cli import main as convlens

COMMANDS = {
    "cat": ["explain", "cat", "--method", "gradcam,layercam,guided_backprop,occlusion"],
    "cat_contrast": [
        "explain",
        "cat",
        "--method",
        "gradcam,saliency",
        "--target",
        "tabby-Egyptian cat",
    ],
    "cat_espresso": ["explain", "cat", "--method", "gradcam", "--target", "espresso"],
    "cat_top3": ["explain", "cat", "--method", "gradcam", "--target", "top3", "--scale", "shared"],
    "coffee": ["explain", "coffee", "--method", "gradcam,integrated_gradients,deconvnet"],
    "vit": [
        "explain",
        "cat",
        "-m",
        "timm:vit_tiny_patch16_224",
        "--random-weights",
        "--method",
        "gradcam,eigencam,saliency",
    ],
}


def make_panels(folder: Path) -> list[Path]:
    written = []
    for name, argv in COMMANDS.items():
        out = folder / name
        print("convlens", " ".join(argv), "--out", out, flush=True)
        if convlens([*argv, "--out", str(out)]) != 0:
            raise SystemExit(f"'convlens {' '.join(argv)}' failed")
        for record in out.glob("*.json"):
            record.unlink()
        written.extend(sorted(out.glob("*.png")))
    matrix = folder / "filters_conv_pw.png"
    if convlens(["filters", "--layer", "blocks.1.0.conv_pw", "--force", "-o", str(matrix)]):
        raise SystemExit("convlens filters failed")
    return [*written, matrix]


if __name__ == "__main__":
    for path in make_panels(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images/panels")):
        print(path)
