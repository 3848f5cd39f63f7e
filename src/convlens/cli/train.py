"""``convlens train``: train a model and write ``OUT/model.pt`` (loadable with ``--model``),
``OUT/checkpoint.pt`` (for ``--resume``) and ``OUT/record.json``.

Each task is one function in `_TASKS`; ``--task segmentation`` trains the DeepLabv3+-style
`SegmentationNet` on the multi-object scenes, from true masks or CAM pseudo-masks. A task
reads the options it needs from `TrainOptions` (add fields there for new tasks' options).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from convlens.cli.app import DeviceOption, JsonOption, _echo_json, app


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``convlens train`` was given (each task reads what it needs)."""

    out: str
    train: int
    test: int
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    resume: bool
    threads: int
    width: int
    output_stride: int
    upsample: str
    labels: str
    classifier: str
    threshold: float
    refine_steps: int
    head: str | None = None
    data: str = "synthetic"
    backbone: str = "synthetic-shapes"
    layer: str = "features"
    freeze_backbone: bool = False
    limit: int | None = None
    checkpoint_every: int = 1
    head_options: tuple[str, ...] = ()
    random_backbone: bool = False
    keep_epochs: bool = False


@app.command("train")
def train_command(
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for model.pt and records.")],
    task: Annotated[
        str | None, typer.Option("--task", help="segmentation (or give --head).")
    ] = None,
    head: Annotated[
        str | None,
        typer.Option("--head", help="Train a classifier head: cam, nin, acol or scouter."),
    ] = None,
    data: Annotated[
        str, typer.Option("--data", help="--head data: synthetic or an ImageFolder tree.")
    ] = "synthetic",
    backbone: Annotated[
        str, typer.Option("--backbone", help="--head backbone: a model name or file.")
    ] = "synthetic-shapes",
    layer: Annotated[
        str, typer.Option("--layer", help="--head: the backbone layer the head sits on.")
    ] = "features",
    freeze_backbone: Annotated[
        bool, typer.Option("--freeze-backbone", help="--head: train the head only.")
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", help="--head: train on the first N items.")
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", help="Write the checkpoint every E epochs.")
    ] = 1,
    keep_epochs: Annotated[
        bool,
        typer.Option(
            "--keep-epochs",
            help="--head: also keep OUT/epochs/epoch-NNN.pt (a loadable model) at the start "
            "and at every checkpoint, for 'convlens evolution'.",
        ),
    ] = False,
    random_backbone: Annotated[
        bool,
        typer.Option("--random-backbone", help="--head: start the backbone from random weights."),
    ] = False,
    head_option: Annotated[
        list[str] | None,
        typer.Option(
            "--head-option",
            help="KEY=VALUE for the head (repeatable): acol delta=0.6; scouter sign=-1 "
            "(SCOUTER-), area_weight=1, dim=32, iterations=3.",
        ),
    ] = None,
    train: Annotated[int, typer.Option("--train", help="Training images (seed 0).")] = 2000,
    test: Annotated[int, typer.Option("--test", help="Held-out images (seed 1).")] = 300,
    epochs: Annotated[int, typer.Option("--epochs")] = 8,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    learning_rate: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 4e-3,
    seed: Annotated[int, typer.Option("--seed", help="Initialisation/shuffle seed.")] = 0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt if present.")
    ] = False,
    threads: Annotated[int, typer.Option("--threads", help="torch CPU threads.")] = 2,
    width: Annotated[int, typer.Option("--width", help="Backbone width.")] = 16,
    output_stride: Annotated[int, typer.Option("--output-stride", help="8 (atrous) or 16.")] = 16,
    upsample: Annotated[
        str, typer.Option("--upsample", help="nearest, bilinear or transposed.")
    ] = "bilinear",
    labels: Annotated[
        str, typer.Option("--labels", help="masks (true masks) or cam (CAM pseudo-masks).")
    ] = "masks",
    classifier: Annotated[
        str, typer.Option("--classifier", help="GAP classifier for --labels cam.")
    ] = "synthetic-scenes",
    threshold: Annotated[
        float, typer.Option("--threshold", help="CAM fraction of its max that is object.")
    ] = 0.3,
    refine_steps: Annotated[
        int, typer.Option("--refine-steps", help="Colour-affinity refinement rounds (0: off).")
    ] = 10,
    as_json: JsonOption = False,
    device: DeviceOption = "cpu",
) -> None:
    """Train a model; print its held-out scores and where it was written (on the CPU:
    --device takes cpu only for now).

    Examples: convlens train --task segmentation --out seg --upsample bilinear;
    convlens train --head acol --data synthetic --epochs 4 --out acol
    """
    if device.strip().lower() != "cpu":  # the option checked it exists; training is CPU-only
        from convlens.errors import DeviceError
        from convlens.models.devices import resolve_device

        if resolve_device(device).type != "cpu":
            raise DeviceError(
                f"convlens train runs on the CPU only for now; use --device cpu, not {device!r}"
            )
    if (task is None) == (head is None):
        raise typer.BadParameter(
            "give --task segmentation or --head cam|nin|acol|scouter (one of them)",
            param_hint="--task/--head",
        )
    if task is not None and task not in _TASKS:
        raise typer.BadParameter(
            f"unknown task {task!r}; use one of: {', '.join(_TASKS)}", param_hint="--task"
        )
    options = TrainOptions(
        out,
        train,
        test,
        epochs,
        batch_size,
        learning_rate,
        seed,
        resume,
        threads,
        width,
        output_stride,
        upsample,
        labels,
        classifier,
        threshold,
        refine_steps,
        head=head,
        data=data,
        backbone=backbone,
        layer=layer,
        freeze_backbone=freeze_backbone,
        limit=limit,
        checkpoint_every=checkpoint_every,
        head_options=tuple(head_option or ()),
        random_backbone=random_backbone,
        keep_epochs=keep_epochs,
    )
    record = _train_head(options) if head is not None else _TASKS[task](options)
    if as_json:
        _echo_json(record)


def _train_segmentation(options: TrainOptions) -> dict:
    import json
    from pathlib import Path

    import torch

    from convlens.data.synthetic import TEST_SEED, TRAIN_SEED
    from convlens.errors import DataError
    from convlens.models import load_model
    from convlens.models.segmentation import UPSAMPLING, save_segmentation_model
    from convlens.models.shapes import shapes_preprocess
    from convlens.train import segmentation as seg

    if options.labels not in ("masks", "cam"):
        raise DataError(f"--labels must be 'masks' or 'cam', got {options.labels!r}")
    if options.upsample not in UPSAMPLING:
        raise DataError(f"--upsample must be one of {', '.join(UPSAMPLING)}")
    if min(options.train, options.test, options.threads) < 1:
        raise DataError("--train, --test and --threads must be >= 1")
    torch.set_num_threads(options.threads)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    data = seg.scene_tensors(options.train, TRAIN_SEED)
    truth = data.label_maps
    settings = {"labels": options.labels}
    if options.labels == "cam":
        classifier = load_model(options.classifier)
        truth = seg.cam_pseudo_masks(
            classifier.module,
            classifier.preprocess.normalize(data.display),
            data.labels,
            data.images,
            threshold=options.threshold,
            refine_steps=options.refine_steps,
        )
        quality = seg.ConfusionMatrix(len(seg.SEGMENTATION_CLASSES)).update(truth, data.label_maps)
        settings |= {
            "classifier": options.classifier,
            "threshold": options.threshold,
            "refine_steps": options.refine_steps,
            "pseudo_mask_scores": quality.scores(),
        }
    model = seg.new_segmentation_model(
        options.width, options.output_stride, options.upsample, options.seed
    )
    log = seg.train_segmentation(
        model,
        data.inputs,
        truth,
        **_loop_settings(options, out, "train pixel accuracy"),
    )
    held_out = seg.scene_tensors(options.test, TEST_SEED)
    scores = seg.segmentation_report(
        model, held_out.inputs, held_out.label_maps, len(seg.SEGMENTATION_CLASSES)
    )
    record = seg.run_record(
        log,
        task="segmentation",
        train_items=options.train,
        test_items=options.test,
        epochs=options.epochs,
        batch_size=options.batch_size,
        seed=options.seed,
        **model.config,
        **settings,
    ) | {"test_scores": scores}
    path = save_segmentation_model(
        model, out / "model.pt", seg.SEGMENTATION_CLASSES, shapes_preprocess(), record
    )
    (out / "record.json").write_text(json.dumps(record, indent=2))
    typer.echo(
        f"held-out mIoU {scores['mean_iou']:.3f}, pixel accuracy {scores['pixel_accuracy']:.3f} "
        f"({options.test} scenes, seed {TEST_SEED}); trained in {log.seconds:.0f} s; "
        f"wrote {path}",
        err=True,
    )
    return record


def _train_head(options: TrainOptions) -> dict:
    """``--head``: a localising head on a backbone, trained on the synthetic shapes
    (``--limit`` items, default --train; --test held out) or an ImageFolder tree."""
    import json
    from pathlib import Path

    import torch

    from convlens.errors import DataError
    from convlens.models import load_model
    from convlens.models.heads import HEADS, save_head_model
    from convlens.train import heads

    if options.head not in HEADS:
        raise DataError(f"unknown head {options.head!r}; use one of: {', '.join(HEADS)}")
    if options.limit is not None and options.limit < 1:
        raise DataError(f"--limit must be >= 1, got {options.limit}")
    if min(options.test, options.threads) < 1:
        raise DataError("--test and --threads must be >= 1")
    torch.set_num_threads(options.threads)
    backbone = load_model(options.backbone, pretrained=not options.random_backbone)
    if options.data == "synthetic":
        data = heads.synthetic_data(
            backbone.preprocess, options.limit or options.train, options.test
        )
    else:
        data = heads.folder_data(options.data, backbone.preprocess, options.limit, options.seed)
    model = heads.build_head_model(
        options.head,
        backbone,
        options.layer,
        len(data.classes),
        freeze_backbone=options.freeze_backbone,
        seed=options.seed,
        **_head_options(options.head_options),
    )
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "data": options.data,
        "backbone": options.backbone,
        "random_backbone": options.random_backbone,
        "layer": options.layer,
        "freeze_backbone": options.freeze_backbone,
        "epochs": options.epochs,
        "batch_size": options.batch_size,
        "learning_rate": options.learning_rate,
        "seed": options.seed,
    }

    def save(path: Path, record: dict) -> Path:
        return save_head_model(
            model,
            path,
            backbone=options.backbone,
            layer=options.layer,
            classes=data.classes,
            preprocess=backbone.preprocess,
            record=record,
        )

    loop = _loop_settings(options, out, "train accuracy")
    if options.keep_epochs:
        loop["on_epoch"] = _keeping_epochs(options, out, save, settings, loop["on_epoch"])
    log = heads.train_head(model, data, **loop)
    record = heads.head_record(log, model, data, **settings)
    path = save(out / "model.pt", record)
    (out / "record.json").write_text(json.dumps(record, indent=2))
    typer.echo(
        f"held-out accuracy {record['test_accuracy']:.3f} ({record['test_items']} images); "
        f"trained in {log.seconds:.0f} s; wrote {path}",
        err=True,
    )
    return record


def _loop_settings(options: TrainOptions, out, measure: str) -> dict:
    """The training-loop keywords of ``--segmentation`` and ``--head``: ``options``' epochs,
    batch size, learning rate, seed, resume and checkpoint interval, ``out/checkpoint.pt``, a
    progress bar and a per-epoch line ``loss ..., <measure> ...`` on stderr."""
    return {
        "epochs": options.epochs,
        "batch_size": options.batch_size,
        "learning_rate": options.learning_rate,
        "seed": options.seed,
        "checkpoint": out / "checkpoint.pt",
        "resume": options.resume,
        "progress": True,
        "checkpoint_every": options.checkpoint_every,
        "on_epoch": lambda e, loss, acc: typer.echo(
            f"epoch {e + 1}/{options.epochs}: loss {loss:.4f}, {measure} {acc:.4f}",
            err=True,
        ),
    }


def _keeping_epochs(options: TrainOptions, out, save, settings: dict, report):
    """``--keep-epochs``: write ``out/epochs/epoch-000.pt`` now (the initial weights, unless
    resuming over it) and an ``on_epoch`` that writes ``epoch-NNN.pt`` whenever the loop
    writes its checkpoint (every ``--checkpoint-every`` epochs and after the last), each a
    model file with ``settings`` and ``epochs_done`` in its record."""
    first = out / "epochs" / "epoch-000.pt"
    if not (options.resume and first.is_file()):
        save(first, settings | {"epochs_done": 0})

    def on_epoch(epoch: int, loss: float, accuracy: float) -> None:
        done = epoch + 1
        if done % options.checkpoint_every == 0 or done == options.epochs:
            save(out / "epochs" / f"epoch-{done:03d}.pt", settings | {"epochs_done": done})
        report(epoch, loss, accuracy)

    return on_epoch


def _head_options(pairs: tuple[str, ...]) -> dict:
    """``("sign=-1", "delta=0.5")`` -> ``{"sign": -1, "delta": 0.5}`` (numbers only)."""
    from convlens.errors import DataError

    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        try:
            options[key.strip()] = float(text) if "." in text or "e" in text else int(text)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise DataError(f"--head-option takes KEY=NUMBER (e.g. sign=-1), got {pair!r}")
    return options


_TASKS = {"segmentation": _train_segmentation}
