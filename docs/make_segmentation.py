"""Train and compare the segmentation models of docs/segmentation.md, and draw its figures.

    python docs/make_segmentation.py train   --runs RUNS   # the models (minutes each)
    python docs/make_segmentation.py figures --runs RUNS   # scores, timings, pictures

``train`` writes, under RUNS: ``supervised-{nearest,bilinear,transposed}/model.pt`` (true
masks), ``classifier.pt`` (a multi-label `ShapesNet` for the CAMs, trained on the same
scenes' class labels only), ``cam-bilinear/model.pt`` (its CAM pseudo-masks) and, with
``--only cam-scenes-bilinear``, ``cam-scenes-bilinear/model.pt`` (CAM pseudo-masks of the
shipped ``synthetic-scenes`` model), each with its training record (seconds, threads, load
average). It uses the library functions behind ``convlens train segmentation`` with
the same defaults. ``figures`` scores every
model on held-out scenes, times inference, writes docs/images/segmentation/*.png and prints
the tables of docs/segmentation.md as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from convlens.data.scenes import SCENE_CLASSES
from convlens.localize import ConfusionMatrix
from convlens.models.scenes import scenes_record
from convlens.models.segmentation import save_segmentation_model
from convlens.models.shapes import ShapesNet, shapes_preprocess
from convlens.render.images import colorize, image_grid, overlay_map, save_png
from convlens.render.scans import label_colours
from convlens.train import segmentation as seg
from convlens.train.loop import train_classifier

TRAIN, TEST, EPOCHS = 2000, 300, 8
PSEUDO = {"threshold": 0.3, "refine_steps": 10}
IMAGES = Path(__file__).resolve().parent / "images" / "segmentation"


def train_all(runs: Path, only: list[str]) -> None:
    """Train the runs named in ``only`` (default: all), in that order."""
    runs.mkdir(parents=True, exist_ok=True)
    data = seg.scene_tensors(TRAIN, seg.TRAIN_SEED)
    names = only or [f"supervised-{u}" for u in ("bilinear", "nearest", "transposed")]
    names += [] if only else ["cam-bilinear"]
    for name in names:
        if name in ("cam-bilinear", "cam-scenes-bilinear"):
            classifier, classifier_record = (
                _classifier(runs, data) if name == "cam-bilinear" else _scenes_classifier()
            )
            pseudo, pseudo_record = _pseudo_masks(classifier, data)
            settings = {"labels": "cam", **PSEUDO, **pseudo_record, "classifier": classifier_record}
            _train_one(runs / name, data.inputs, pseudo, "bilinear", settings)
        else:
            upsample = name.removeprefix("supervised-")
            _train_one(runs / name, data.inputs, data.label_maps, upsample, {"labels": "masks"})


def _train_one(folder: Path, inputs, label_maps, upsample: str, settings: dict) -> None:
    model = seg.new_segmentation_model(upsample=upsample)
    log = seg.train_segmentation(
        model,
        inputs,
        label_maps,
        epochs=EPOCHS,
        checkpoint=folder / "checkpoint.pt",
        resume=True,
        progress=False,
        on_epoch=lambda e, loss, acc: print(
            f"{folder.name} epoch {e + 1}: {loss:.4f} {acc:.4f}", flush=True
        ),
    )
    record = seg.run_record(log, train_items=len(inputs), epochs=EPOCHS, **model.config, **settings)
    save_segmentation_model(
        model, folder / "model.pt", seg.SEGMENTATION_CLASSES, shapes_preprocess(), record
    )
    print(f"{folder.name}: {log.seconds:.0f} s", flush=True)


def _classifier(runs: Path, data) -> tuple[ShapesNet, dict]:
    path = runs / "classifier.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        model = ShapesNet(len(SCENE_CLASSES))
        model.load_state_dict(saved["state_dict"])
        return model.eval(), saved["record"]
    torch.manual_seed(0)
    model = ShapesNet(len(SCENE_CLASSES))
    log = train_classifier(model, data.inputs, data.labels, epochs=12, multilabel=True)
    held_out = seg.scene_tensors(TEST, seg.TEST_SEED)
    with torch.no_grad():
        decided = (model(held_out.inputs) > 0) == (held_out.labels > 0.5)
    record = {
        "train_seconds": log.seconds,
        "epochs": 12,
        "threads": torch.get_num_threads(),
        "test_label_accuracy": float(decided.float().mean()),
        "test_exact_match": float(decided.all(1).float().mean()),
    }
    torch.save({"state_dict": model.state_dict(), "record": record}, path)
    print(f"classifier: {record}", flush=True)
    return model, record


def _scenes_classifier() -> tuple[ShapesNet, dict]:
    """The shipped multi-label benchmark model (``synthetic-scenes``, trained on 12000 scenes'
    class labels) as the CAM source instead of the small classifier above."""
    from convlens.models import load_model

    loaded = load_model("synthetic-scenes")
    record = {k: v for k, v in scenes_record().items() if k != "per_class_ap"}
    return loaded.module, {"model": "synthetic-scenes", **record}


def _pseudo_masks(classifier, data) -> tuple[torch.Tensor, dict]:
    start = time.perf_counter()
    masks = seg.cam_pseudo_masks(classifier, data.inputs, data.labels, data.images, **PSEUDO)
    seconds = time.perf_counter() - start
    quality = ConfusionMatrix(len(seg.SEGMENTATION_CLASSES)).update(masks, data.label_maps)
    unrefined = seg.cam_pseudo_masks(
        classifier, data.inputs, data.labels, threshold=PSEUDO["threshold"]
    )
    plain = ConfusionMatrix(len(seg.SEGMENTATION_CLASSES)).update(unrefined, data.label_maps)
    record = {
        "pseudo_mask_seconds": seconds,
        "pseudo_mask_scores": _short(quality.scores()),
        "pseudo_mask_scores_unrefined": _short(plain.scores()),
    }
    print(f"pseudo-masks: {record}", flush=True)
    return masks, record


def _short(scores: dict) -> dict:
    return {
        k: round(v, 4)
        for k, v in scores.items()
        if k in ("mean_iou", "pixel_accuracy", "fw_iou", "boundary_f1")
    }


MODELS = [
    "supervised-nearest",
    "supervised-bilinear",
    "supervised-transposed",
    "cam-bilinear",
    "cam-scenes-bilinear",
]
SCALE = 3  # 64 px tiles drawn at 192 px (nearest, so pixels stay visible)


def figures(runs: Path, images: Path) -> None:
    """Score every model on the held-out scenes, time inference, draw the figures."""
    from convlens.models import load_model

    images.mkdir(parents=True, exist_ok=True)
    held_out = seg.scene_tensors(TEST, seg.TEST_SEED)
    num_classes = len(seg.SEGMENTATION_CLASSES)
    background = torch.zeros_like(held_out.label_maps)
    results = {
        "floor:all-background": _short(
            ConfusionMatrix(num_classes).update(background, held_out.label_maps).scores()
        )
    }
    models = {}
    for name in [m for m in MODELS if (runs / m / "model.pt").is_file()]:
        loaded = load_model(str(runs / name / "model.pt"))
        models[name] = loaded.module
        record = torch.load(runs / name / "model.pt", weights_only=True)["record"]
        scores = seg.segmentation_report(
            loaded.module, held_out.inputs, held_out.label_maps, num_classes
        )
        results[name] = (
            _short(scores)
            | {
                "per_class_iou": [round(v, 3) for v in scores["per_class_iou"]],
                "train_seconds": round(record["train_seconds"], 1),
                "threads": record["threads"],
                "load_average_1min": record["load_average_1min"],
                "inference_ms_per_image": _inference_ms(loaded.module, held_out.inputs[:64]),
                "cpu_seconds_per_step": _step_cpu_seconds(record["upsample"], held_out),
            }
            | {
                k: record[k]
                for k in (
                    "pseudo_mask_scores",
                    "pseudo_mask_scores_unrefined",
                    "pseudo_mask_seconds",
                    "classifier",
                )
                if k in record
            }
        )
    print(json.dumps(results, indent=2))
    (images / "results.json").write_text(json.dumps(results, indent=2))
    _prediction_figure(models, held_out, images / "predictions.png")
    _upsampling_figure(models, held_out, images / "upsampling.png")
    if (runs / "classifier.pt").is_file():
        _pseudo_mask_figure(runs, images / "pseudo_masks.png")
    _gradcam_figure(runs, held_out, images / "gradcam.png")


@torch.no_grad()
def _inference_ms(model, inputs, repeats: int = 7) -> float:
    """Median milliseconds per image of a forward pass on ``inputs`` (one batch)."""
    model(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(inputs)
        times.append(time.perf_counter() - start)
    return round(1000 * sorted(times)[repeats // 2] / len(inputs), 3)


def _step_cpu_seconds(upsample: str, held_out, steps: int = 6) -> float:
    """Median process CPU seconds of one training step (batch 32, forward, backward, AdamW)
    of a fresh model: with the step count (TRAIN / 32 * EPOCHS = 504), an estimate of the
    training time on an idle core that a loaded machine's wall clock cannot give."""
    model = seg.new_segmentation_model(upsample=upsample).train()
    optimizer = torch.optim.AdamW(model.parameters(), 4e-3)
    inputs, truth = held_out.inputs[:32], held_out.label_maps[:32]
    times = []
    for _ in range(steps + 1):
        start = time.process_time()
        loss = torch.nn.functional.cross_entropy(model(inputs), truth)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.process_time() - start)
    return round(sorted(times[1:])[steps // 2], 4)


def _big(image) -> np.ndarray:
    return np.asarray(image).repeat(SCALE, 0).repeat(SCALE, 1)


def _labels_rgb(label_map: torch.Tensor) -> np.ndarray:
    colours = np.vstack([[40, 40, 40], label_colours(len(SCENE_CLASSES))])
    return colours[label_map.numpy()].astype(np.uint8)


SHOWN = [0, 3, 5, 8, 11]  # held-out scenes drawn (fixed, chosen before looking at results)


@torch.no_grad()
def _prediction_figure(models, held_out, path: Path) -> None:
    tiles, titles = [], []
    for index in SHOWN:
        tiles += [_big(held_out.display[index]), _big(_labels_rgb(held_out.label_maps[index]))]
        titles += [f"held-out scene {index}", "true label map"]
        for name, model in models.items():
            pred = model.eval()(held_out.inputs[index : index + 1]).argmax(1)[0]
            tiles.append(_big(_labels_rgb(pred)))
            titles.append(name)
    save_png(image_grid(tiles, titles, columns=2 + len(models)), path)


@torch.no_grad()
def _upsampling_figure(models, held_out, path: Path) -> None:
    """The probability of the true class of one object, per upsampling, and its outline."""
    index = SHOWN[0]
    cls = int(held_out.label_maps[index].flatten().bincount()[1:].argmax()) + 1
    tiles = [_big(held_out.display[index])]
    titles = [f"scene {index}: {seg.SEGMENTATION_CLASSES[cls]}"]
    for name in MODELS[:3]:
        probability = models[name](held_out.inputs[index : index + 1]).softmax(1)[0, cls]
        tiles.append(_big(colorize(probability.numpy(), "viridis")))
        titles.append(f"{name.split('-')[1]}: p({seg.SEGMENTATION_CLASSES[cls]})")
    save_png(image_grid(tiles, titles, columns=4), path)


def _pseudo_mask_figure(runs: Path, path: Path) -> None:
    data = seg.scene_tensors(len(SHOWN), seg.TRAIN_SEED)
    classifier, _ = _classifier(runs, None)
    plain = seg.cam_pseudo_masks(
        classifier, data.inputs, data.labels, threshold=PSEUDO["threshold"]
    )
    refined = seg.cam_pseudo_masks(classifier, data.inputs, data.labels, data.images, **PSEUDO)
    tiles, titles = [], []
    for index in range(len(SHOWN)):
        tiles += [
            _big(data.display[index]),
            _big(_labels_rgb(data.label_maps[index])),
            _big(_labels_rgb(plain[index])),
            _big(_labels_rgb(refined[index])),
        ]
        titles += [
            f"training scene {index}",
            "true label map",
            "CAM pseudo-mask",
            "+ colour refinement",
        ]
    save_png(image_grid(tiles, titles, columns=4), path)


def _gradcam_figure(runs: Path, held_out, path: Path) -> None:
    """Segmentation Grad-CAM of the supervised bilinear model: each present class over its
    predicted mask, and the first class over a box around one object."""
    from convlens import explain, load_model, region

    loaded = load_model(str(runs / "supervised-bilinear" / "model.pt"))
    tiles, titles = [], []
    for index in SHOWN[:3]:
        image = held_out.inputs[index : index + 1]
        with torch.no_grad():
            pred = loaded.module(image).argmax(1)[0]
        tiles += [_big(held_out.display[index]), _big(_labels_rgb(pred))]
        titles += [f"held-out scene {index}", "predicted label map"]
        areas = pred.flatten().bincount(minlength=len(seg.SEGMENTATION_CLASSES))[1:]
        present = [int(c) + 1 for c in areas.argsort(descending=True)[:2] if areas[c] > 0]
        for cls in present:
            maps = explain(loaded, image, "gradcam", target=region(cls)).maps[0]
            tiles.append(_big(overlay_map(held_out.display[index], maps)))
            titles.append(f"Grad-CAM {seg.SEGMENTATION_CLASSES[cls]} (its mask)")
        if present:
            x0, y0, x1, y1 = _mask_box(pred == present[0])
            maps = explain(
                loaded, image, "gradcam", target=region(present[0], box=(x0, y0, x1, y1))
            ).maps[0]
            tiles.append(_big(overlay_map(held_out.display[index], maps)))
            titles.append(f"{seg.SEGMENTATION_CLASSES[present[0]]} over box {x0},{y0},{x1},{y1}")
        while len(tiles) % 5:
            tiles.append(np.full_like(tiles[0], 255))
            titles.append("")
    save_png(image_grid(tiles, titles, columns=5), path)


def _mask_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = mask.nonzero(as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("train", "figures"))
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.stage == "train":
        train_all(args.runs, args.only)
    else:
        figures(args.runs, IMAGES)


if __name__ == "__main__":
    main()
