"""Make the WSOL table and the training-analysis figures of docs/weak-supervision.md.

Train the models first (the commands are in docs/weak-supervision.md), then::

    nice -n 10 python docs/make_weak_supervision.py --models /tmp/wsol --images 300
    OMP_NUM_THREADS=1 nice -n 10 python docs/make_weak_supervision.py \
        --evolution /tmp/analysis/evolution --analysis

``--evolution RUN`` draws the feature evolution of a ``convlens train --keep-epochs`` folder
(the shapes backbone's three ReLU stages, 3 channels each, 200 held-out shapes);
``--analysis`` runs ``convlens ablate``, ``invariance`` and ``camcrop`` on the embedded model
and the package photos. Figures go to docs/images/weak-supervision/; tables are printed.

Each model ``DIR/HEAD/model.pt`` is scored by `convlens.evaluate.evaluate_methods` on items
``0 .. images-1`` of the held-out stream ``SyntheticShapes(seed=1)`` with its own head's
map and Grad-CAM (CAM too for the CAM head); the model-free floors once. Deletion/insertion
curves use 8 steps and the randomisation check 2 images (they are not in the table).
Prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from convlens.data.synthetic import SyntheticShapes
from convlens.evaluate.benchmark import evaluate_methods
from convlens.models import load_model

HEAD_METHODS = {"cam": ["cam", "gradcam"], "nin": ["nin", "gradcam"], "acol": ["acol", "gradcam"]}
HEAD_METHODS["scouter"] = ["scouter", "gradcam"]


FIGURES = Path(__file__).resolve().parent / "images" / "weak-supervision"
EVOLUTION_LAYERS = [f"backbone.module.features.{i}" for i in (2, 9, 16)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="Folder of the four trained heads.")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--evolution", type=Path, help="A --keep-epochs training folder.")
    parser.add_argument("--analysis", action="store_true", help="Ablation, invariance, crops.")
    parser.add_argument(
        "--runner-up", action="store_true", help="Top-1 vs runner-up maps of the --models heads."
    )
    args = parser.parse_args()
    if args.models is not None and not args.runner_up:
        wsol_table(args.models, args.images)
    if args.runner_up:
        runner_up_table(args.models, args.images)
    if args.evolution is not None:
        layers = [part for layer in EVOLUTION_LAYERS for part in ("--layer", layer)]
        run_cli(
            ["evolution", "--model", str(args.evolution), *layers, "--data", "shapes-test:200"]
            + ["--count", "3", "--dpi", "90", "-o", str(FIGURES / "evolution.png")]
        )
    if args.analysis:
        run_cli(
            ["ablate", "--data", "photos", "--layer", "blocks.*.*", "--layer", "conv_head"]
            + ["--dpi", "100", "-o", str(FIGURES / "ablation.png")]
        )
        run_cli(
            ["invariance", "--data", "photos", "--limit", "8", "--dpi", "80"]
            + ["-o", str(FIGURES / "invariance.png")]
        )
        run_cli(["camcrop", "--data", "photos"])
        shapes_layers = [f"features.{i}" for i in (2, 6, 7, 9, 13, 14, 16)]
        run_cli(
            ["ablate", "-m", "synthetic-shapes", "--data", "shapes-test:300", "--mode", "identity"]
            + [part for layer in shapes_layers for part in ("--layer", layer)]
            + ["--tune-epochs", "1", "--tune-data", "shapes:2000", "--dpi", "100"]
            + ["-o", str(FIGURES / "ablation-shapes.png")]
        )


def run_cli(argv: list[str]) -> None:
    """Run ``convlens ARGV`` (its tables go to stdout), timed; stop on failure."""
    from convlens.cli import main as convlens

    print(f"$ convlens {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    code = convlens(argv + ["--force"] if "-o" in argv else argv)
    print(f"({time.perf_counter() - start:.0f} s wall)\n", flush=True)
    if code:
        raise SystemExit(code)


RUNNER_UP_MODELS = {
    "cam": "cam",
    "nin": "nin",
    "scouter": "scouter",
    "scouter-neg": "scouter",
}


def runner_up_table(models: Path, images: int) -> None:
    """Per head (``models/HEAD/model.pt``; ``scouter-neg`` is SCOUTER-): on ``images``
    held-out shapes, the head's map of the top-1 class A and of the runner-up class B:
    their Spearman correlation (1: the same map for both classes; lower: class-specific),
    the pointing game (maximum inside the object mask, 0 px tolerance) and the share of
    each min-max normalised map's mass inside the object (the mask's area share is the
    floor a flat map gets)."""
    import torch

    from convlens.attribution.explain import explain
    from convlens.evaluate.sanity import mean_defined, spearman
    from convlens.localize.metrics import pointing_game
    from convlens.maps import normalize_maps

    batch = SyntheticShapes(images, seed=1).batch()
    masks = batch.masks
    rows = [
        "| head | accuracy | Spearman(A, B) | pointing A | pointing B | mass in object A "
        "| mass in object B |",
        "|---|---|---|---|---|---|---|",
    ]
    for head, method in RUNNER_UP_MODELS.items():
        loaded = load_model(str(models / head / "model.pt"))
        inputs = loaded.preprocess.normalize(batch.display)
        with torch.no_grad():
            logits = loaded.module(inputs)
        top = logits.topk(2, dim=1).indices
        maps = [explain(loaded, inputs, method, target=top[:, k]).maps for k in (0, 1)]
        correlation, undefined = mean_defined(spearman(maps[0], maps[1]))
        pointing = [float(pointing_game(m, masks, tolerance=0).float().mean()) for m in maps]
        mass = [_mass_inside(normalize_maps(m), masks) for m in maps]
        accuracy = float((top[:, 0] == batch.labels).float().mean())
        rows.append(
            f"| {head} | {accuracy:.3f} | {correlation:.3f} ({undefined} undefined) | "
            f"{pointing[0]:.3f} | {pointing[1]:.3f} | {mass[0]:.3f} | {mass[1]:.3f} |"
        )
    area = float(masks.float().mean())
    rows.append(f"| (flat map) | | | | | {area:.3f} | {area:.3f} |")
    print("\n".join(rows))


def _mass_inside(maps, masks) -> float:
    """Mean over images of ``sum(map * mask) / sum(map)`` (maps in [0, 1])."""
    total = maps.flatten(1).sum(1).clamp_min(1e-12)
    return float(((maps * masks).flatten(1).sum(1) / total).mean())


def wsol_table(models: Path, images: int) -> None:
    """The WSOL table of the four heads ``models/HEAD/model.pt``, on ``images`` held-out
    shapes."""
    data = SyntheticShapes(images, seed=1)
    rows = ["| head | accuracy | map | MaxBoxAccV2 | MaxBoxAcc (V1) | mask IoU | train s |"]
    rows.append("|---|---|---|---|---|---|---|")
    floors = None
    for head, methods in HEAD_METHODS.items():
        path = models / head / "model.pt"
        record = json.loads((models / head / "record.json").read_text())
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
