"""Make the WSOL table of docs/weak-supervision.md from four trained head models.

Train them first (the commands are in docs/weak-supervision.md), then::

    nice -n 10 python docs/make_weak_supervision.py --models /tmp/wsol --images 300

Each model ``DIR/HEAD/model.pt`` is scored by `convlens.evaluate.evaluate_methods` on items
``0 .. images-1`` of the held-out stream ``SyntheticShapes(seed=1)`` with its own head's
map and Grad-CAM (CAM too for the CAM head); the model-free floors once. Deletion/insertion
curves use 8 steps and the randomisation check 2 images (they are not in the table).
Prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from convlens.data.synthetic import SyntheticShapes
from convlens.evaluate.benchmark import evaluate_methods
from convlens.models import load_model

HEAD_METHODS = {"cam": ["cam", "gradcam"], "nin": ["nin", "gradcam"], "acol": ["acol", "gradcam"]}
HEAD_METHODS["scouter"] = ["scouter", "gradcam"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    data = SyntheticShapes(args.images, seed=1)
    rows = ["| head | accuracy | map | MaxBoxAccV2 | MaxBoxAcc (V1) | mask IoU | train s |"]
    rows.append("|---|---|---|---|---|---|---|")
    floors = None
    for head, methods in HEAD_METHODS.items():
        path = args.models / head / "model.pt"
        record = json.loads((args.models / head / "record.json").read_text())
        board = evaluate_methods(
            load_model(str(path)),
            data,
            methods,
            limit=None,
            curve_steps=8,
            sanity_images=2,
            floors=floors is None,
        )
        floors = floors or {k: v for k, v in board.scores.items() if k.startswith("floor:")}
        for method in methods:
            if method in board.errors:
                rows.append(f"| {head} | | {method} | failed: {board.errors[method]} | | | |")
                continue
            score = board.scores[method]
            rows.append(
                f"| {head} | {board.accuracy:.3f} | {method} | {score['maxboxacc_v2']:.3f} | "
                f"{score['maxboxacc']:.3f} | {score['mask_iou']:.3f} | "
                f"{record['train_seconds']:.0f} |"
            )
    for name, score in floors.items():
        rows.append(
            f"| (no model) | | {name} | {score['maxboxacc_v2']:.3f} | {score['maxboxacc']:.3f} | "
            f"{score['mask_iou']:.3f} | |"
        )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
