"""``convlens train head`` and ``convlens train segmentation``: train a model and write
``OUT/model.pt`` (loadable with ``--model``), ``OUT/checkpoint.pt`` (for ``--resume``) and
``OUT/record.json``. Each command turns its options into a settings object
(`convlens.train.settings`) and runs it.

``convlens train shapes-model``, ``scenes-model`` and ``shortcut-model`` (hidden: maintainer
tools) retrain the shipped synthetic benchmark models and write their weights files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.app import DeviceOption, JsonOption, _echo_json, _report_skipped, app
from convlens.cli.options import ForceOption, TrustPickleOption, as_usage_error
from convlens.train.settings import HeadTraining, SegmentationTraining, Training

train_app = typer.Typer(
    no_args_is_help=True,
    help="Train a model: a localising head on a backbone, or the segmentation model.",
)
app.add_typer(train_app, name="train")

OutOption = Annotated[
    Path, typer.Option("--out", "-o", help="Folder for model.pt, checkpoint.pt and record.json.")
]
TestOption = Annotated[
    int,
    typer.Option(
        "--test",
        help="Held-out images of the synthetic data (seed 1); a --data folder holds out a "
        "fifth of its images.",
    ),
]
EpochsOption = Annotated[int, typer.Option("--epochs")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size")]
LearningRateOption = Annotated[float, typer.Option("--lr", help="Peak learning rate.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Initialisation/shuffle seed.")]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt if present.")
]
CheckpointEveryOption = Annotated[
    int, typer.Option("--checkpoint-every", help="Write the checkpoint every E epochs.")
]
ThreadsOption = Annotated[int, typer.Option("--threads", help="torch CPU threads.")]


@train_app.command("head")
def train_head_command(
    head: Annotated[
        str, typer.Argument(metavar="HEAD", help="The head: cam, nin, acol or scouter.")
    ],
    out: OutOption,
    data: Annotated[
        str, typer.Option("--data", help="synthetic (the shapes) or an ImageFolder tree.")
    ] = HeadTraining.data,
    backbone: Annotated[
        str, typer.Option("--backbone", help="A model name or file.")
    ] = HeadTraining.backbone,
    layer: Annotated[
        str, typer.Option("--layer", help="The backbone layer the head sits on.")
    ] = HeadTraining.layer,
    freeze_backbone: Annotated[
        bool, typer.Option("--freeze-backbone", help="Train the head only.")
    ] = False,
    random_backbone: Annotated[
        bool, typer.Option("--random-backbone", help="Start the backbone from random weights.")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", help="Train on the first N items (synthetic: default 2000; a folder: all)."
        ),
    ] = None,
    head_option: Annotated[
        list[str] | None,
        typer.Option(
            "--head-option",
            help="KEY=VALUE for the head (repeatable): acol delta=0.6; scouter sign=-1 "
            "(SCOUTER-), area_weight=1, dim=32, iterations=3.",
        ),
    ] = None,
    keep_epochs: Annotated[
        bool,
        typer.Option(
            "--keep-epochs",
            help="Also keep OUT/epochs/epoch-NNN.pt (a loadable model) at the start and at "
            "every checkpoint, for 'convlens evolution'.",
        ),
    ] = False,
    test: TestOption = Training.test,
    epochs: EpochsOption = Training.epochs,
    batch_size: BatchSizeOption = Training.batch_size,
    learning_rate: LearningRateOption = Training.learning_rate,
    seed: SeedOption = Training.seed,
    resume: ResumeOption = False,
    checkpoint_every: CheckpointEveryOption = Training.checkpoint_every,
    threads: ThreadsOption = Training.threads,
    as_json: JsonOption = False,
    device: DeviceOption = "cpu",
    force: ForceOption = False,
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Train a localising head (cam, nin, acol or scouter) on a backbone cut at a layer;
    print its held-out accuracy and where it was written (on the CPU: --device takes cpu
    only for now).

    Example: convlens train head acol --data synthetic --epochs 4 --out acol
    """
    _check_cpu_only(device)
    settings = as_usage_error(
        HeadTraining,
        out=out,
        head=head,
        data=data,
        backbone=backbone,
        layer=layer,
        freeze_backbone=freeze_backbone,
        random_backbone=random_backbone,
        limit=limit,
        head_options=_head_options(tuple(head_option or ())),
        keep_epochs=keep_epochs,
        test=test,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        resume=resume,
        checkpoint_every=checkpoint_every,
        threads=threads,
        trust_pickle=trust_pickle,
    )
    record = _written_into(settings.out, force, _train_head, settings)
    if as_json:
        _echo_json(record)
    skipped = [(entry["source"], entry["message"]) for entry in record.get("skipped", [])]
    if skipped:
        _report_skipped(skipped)
        raise typer.Exit(1)


@train_app.command("segmentation")
def train_segmentation_command(
    out: OutOption,
    train: Annotated[
        int, typer.Option("--train", help="Training scenes (seed 0).")
    ] = SegmentationTraining.train,
    backbone_width: Annotated[
        int, typer.Option("--backbone-width", help="Channels of the backbone's first stage.")
    ] = SegmentationTraining.backbone_width,
    output_stride: Annotated[
        int, typer.Option("--output-stride", help="8 (atrous) or 16.")
    ] = SegmentationTraining.output_stride,
    upsample: Annotated[
        str, typer.Option("--upsample", help="nearest, bilinear or transposed.")
    ] = SegmentationTraining.upsample,
    masks: Annotated[
        str,
        typer.Option("--masks", help="Training masks: true (the scenes') or cam (pseudo-masks)."),
    ] = SegmentationTraining.masks,
    classifier: Annotated[
        str, typer.Option("--classifier", help="GAP classifier for --masks cam.")
    ] = SegmentationTraining.classifier,
    threshold: Annotated[
        float, typer.Option("--threshold", help="CAM fraction of its max that is object.")
    ] = SegmentationTraining.threshold,
    refine_steps: Annotated[
        int, typer.Option("--refine-steps", help="Colour-affinity refinement rounds (0: off).")
    ] = SegmentationTraining.refine_steps,
    test: TestOption = Training.test,
    epochs: EpochsOption = Training.epochs,
    batch_size: BatchSizeOption = Training.batch_size,
    learning_rate: LearningRateOption = Training.learning_rate,
    seed: SeedOption = Training.seed,
    resume: ResumeOption = False,
    checkpoint_every: CheckpointEveryOption = Training.checkpoint_every,
    threads: ThreadsOption = Training.threads,
    as_json: JsonOption = False,
    device: DeviceOption = "cpu",
    force: ForceOption = False,
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Train the DeepLabv3+-style segmentation model on the multi-object scenes, from their
    true masks or from CAM pseudo-masks; print its held-out scores and where it was written
    (on the CPU: --device takes cpu only for now).

    Example: convlens train segmentation --out seg --masks cam --upsample bilinear
    """
    _check_cpu_only(device)
    settings = as_usage_error(
        SegmentationTraining,
        out=out,
        train=train,
        backbone_width=backbone_width,
        output_stride=output_stride,
        upsample=upsample,
        masks=masks,
        classifier=classifier,
        threshold=threshold,
        refine_steps=refine_steps,
        test=test,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        resume=resume,
        checkpoint_every=checkpoint_every,
        threads=threads,
        trust_pickle=trust_pickle,
    )
    record = _written_into(settings.out, force, _train_segmentation, settings)
    if as_json:
        _echo_json(record)


def _written_into(out: Path, force: bool, train, settings: Training) -> dict:
    """``train(settings)`` writing into ``out``: files there that convlens did not write are
    refused before any work (unless ``force``); what an earlier training run left there
    and this one does not write is removed when it ends, except on ``--resume``: the run
    resumed wrote them (the epochs kept before the interruption)."""
    from convlens.files import check_folder, writing

    check_folder(out, ("model.pt", "record.json", "checkpoint.pt"), force)
    if getattr(settings, "keep_epochs", False):  # every epoch file, before any training
        names = [f"epoch-{done:03d}.pt" for done in range(settings.epochs + 1)]
        check_folder(out / "epochs", names, force)
    with writing(out, "train", force=force, remove_stale=not settings.resume):
        return train(settings)


def _replacing(path: Path, force: bool):
    """A block in which ``path`` (a weights file) may be replaced only if convlens wrote it,
    or with ``force``; nothing else in its folder is removed."""
    from convlens.files import writing

    return writing(path.parent, "train-weights", force=force, remove_stale=False)


def _check_cpu_only(device: str) -> None:
    """Training runs on the CPU: any other ``--device`` is one line (`DeviceError`)."""
    if device.strip().lower() == "cpu":  # the option checked it exists
        return
    from convlens.errors import DeviceError
    from convlens.models.devices import resolve_device

    if resolve_device(device).type != "cpu":
        raise DeviceError(
            f"convlens train runs on the CPU only for now; use --device cpu, not {device!r}"
        )


def _train_segmentation(options: SegmentationTraining) -> dict:
    import torch

    from convlens.data.synthetic import TEST_SEED, TRAIN_SEED
    from convlens.files import write_json
    from convlens.models import load_model
    from convlens.models.segmentation import save_segmentation_model
    from convlens.models.shapes import shapes_preprocess
    from convlens.train import segmentation as seg

    torch.set_num_threads(options.threads)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    data = seg.scene_tensors(options.train, TRAIN_SEED)
    truth = data.label_maps
    settings = {"masks": options.masks}
    if options.masks == "cam":
        classifier = load_model(options.classifier, trust_pickle=options.trust_pickle)
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
        options.backbone_width, options.output_stride, options.upsample, options.seed
    )
    log = seg.train_segmentation(
        model,
        data.inputs,
        truth,
        **_loop_settings(options, "train pixel accuracy"),
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
    write_json(out / "record.json", record)
    typer.echo(
        f"held-out mIoU {scores['mean_iou']:.3f}, pixel accuracy {scores['pixel_accuracy']:.3f} "
        f"({options.test} scenes, seed {TEST_SEED}); trained in {log.seconds:.0f} s; "
        f"wrote {path}",
        err=True,
    )
    return record


def _train_head(options: HeadTraining) -> dict:
    """A localising head on a backbone, trained on the synthetic shapes (``--limit`` items,
    default 2000; --test held out) or an ImageFolder tree."""
    import torch

    from convlens.files import write_json
    from convlens.models import load_model
    from convlens.models.heads import save_head_model
    from convlens.train import heads

    torch.set_num_threads(options.threads)
    backbone = load_model(
        options.backbone,
        pretrained=not options.random_backbone,
        trust_pickle=options.trust_pickle,
    )
    if options.data == "synthetic":
        data = heads.synthetic_data(backbone.preprocess, options.train_items, options.test)
    else:
        data = heads.folder_data(options.data, backbone.preprocess, options.limit, options.seed)
    model = heads.build_head_model(
        options.head,
        backbone,
        options.layer,
        len(data.classes),
        freeze_backbone=options.freeze_backbone,
        seed=options.seed,
        **options.head_options,
    )
    out = options.out
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

    loop = _loop_settings(options, "train accuracy")
    if options.keep_epochs:
        loop["on_epoch"] = _keeping_epochs(options, out, save, settings, loop["on_epoch"])
    log = heads.train_head(model, data, **loop)
    record = heads.head_record(log, model, data, **settings)
    if data.skipped:  # left out of training; named in the record and on stderr
        record["skipped"] = [{"source": s, "message": m} for s, m in data.skipped]
    path = save(out / "model.pt", record)
    write_json(out / "record.json", record)
    typer.echo(
        f"held-out accuracy {record['test_accuracy']:.3f} ({record['test_items']} images); "
        f"trained in {log.seconds:.0f} s; wrote {path}",
        err=True,
    )
    return record


def _loop_settings(options: Training, measure: str) -> dict:
    """The training-loop keywords of both commands: ``options.loop_keywords()``, a progress
    bar and a per-epoch line ``loss ..., <measure> ...`` on stderr."""
    return options.loop_keywords() | {
        "progress": True,
        "on_epoch": lambda e, loss, acc: typer.echo(
            f"epoch {e + 1}/{options.epochs}: loss {loss:.4f}, {measure} {acc:.4f}",
            err=True,
        ),
    }


def _keeping_epochs(options: HeadTraining, out, save, settings: dict, report):
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


@train_app.command("shapes-model", hidden=True)
def train_shapes_model_command(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Weights file (default: the shipped one).")
    ] = None,
    train: Annotated[int, typer.Option("--train", help="Training images (seed 0).")] = 9000,
    epochs: Annotated[int, typer.Option("--epochs")] = 4,
    test: Annotated[int, typer.Option("--test", help="Held-out images (seed 1).")] = 1200,
    seed: SeedOption = 0,
    test_only: Annotated[
        bool, typer.Option("--test-only", help="Measure the weights in --out, do not train.")
    ] = False,
    device: DeviceOption = "cpu",
    force: ForceOption = False,
) -> None:
    """Maintainer tool: train the synthetic-shapes benchmark model and write its weights
    (default: the file shipped in convlens/models/weights); --test-only measures them."""
    from convlens.files import check_writable
    from convlens.models.shapes import WEIGHTS_FILE
    from convlens.train.synthetic import (
        TEST_SEED,
        held_out_accuracy,
        save_shapes_model,
        train_shapes_model,
    )

    _check_cpu_only(device)
    out = out or WEIGHTS_FILE
    if test_only:
        measured = held_out_accuracy(out, test)
        typer.echo(
            f"test accuracy {measured:.4f} ({round(measured * test)} / {test} held-out "
            f"images, seed {TEST_SEED}) of {out}"
        )
        return
    check_writable(out, force)  # before the minutes of training
    model, record = train_shapes_model(train, epochs, test, seed)
    with _replacing(out, force):
        path = save_shapes_model(model, record, out)
    typer.echo(
        f"test accuracy {record['test_accuracy']:.4f} on {test} held-out images "
        f"(seed {TEST_SEED}); generated in {record['generate_seconds']:.0f} s, trained in "
        f"{record['train_seconds']:.0f} s; wrote {path} ({path.stat().st_size // 1024} kB)"
    )


@train_app.command("scenes-model", hidden=True)
def train_scenes_model_command(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Weights file (default: the shipped one).")
    ] = None,
    train: Annotated[int, typer.Option("--train", help="Training scenes (seed 0).")] = 12000,
    epochs: Annotated[int, typer.Option("--epochs")] = 6,
    init: Annotated[
        str, typer.Option("--init", help="Starting weights: synthetic-shapes or scratch.")
    ] = "synthetic-shapes",
    test: Annotated[int, typer.Option("--test", help="Held-out scenes (seed 1).")] = 1000,
    seed: SeedOption = 0,
    test_only: Annotated[
        bool, typer.Option("--test-only", help="Measure the weights in --out, do not train.")
    ] = False,
    device: DeviceOption = "cpu",
    force: ForceOption = False,
) -> None:
    """Maintainer tool: train the multi-label synthetic-scenes benchmark model and write its
    weights (default: the file shipped in convlens/models/weights); --test-only measures
    them."""
    from convlens.errors import DataError
    from convlens.files import check_writable
    from convlens.models.scenes import WEIGHTS_FILE, load_scenes_model
    from convlens.train.scenes import (
        INITS,
        TEST_SEED,
        multilabel_scores,
        save_scenes_model,
        train_scenes_model,
    )

    _check_cpu_only(device)
    if init not in INITS:
        raise DataError(f"--init must be one of {', '.join(INITS)}, got {init!r}")
    out = out or WEIGHTS_FILE
    if test_only:
        loaded = load_scenes_model(path=out)
        scores = multilabel_scores(loaded.module, loaded.preprocess, test)
    else:
        check_writable(out, force)  # before the minutes of training
        model, scores = train_scenes_model(train, epochs, test, seed, init=init)
        with _replacing(out, force):
            path = save_scenes_model(model, scores, out)
        typer.echo(
            f"generated in {scores['generate_seconds']:.0f} s, trained in "
            f"{scores['train_seconds']:.0f} s; wrote {path} ({path.stat().st_size // 1024} kB)"
        )
    typer.echo(
        f"held-out ({test} scenes, seed {TEST_SEED}): mAP {scores['test_map']:.4f}, "
        f"per-class accuracy {scores['test_accuracy']:.4f}, "
        f"exact match {scores['test_exact_match']:.4f}"
    )


@train_app.command("shortcut-model", hidden=True)
def train_shortcut_model_command(
    rate: Annotated[
        list[float] | None,
        typer.Option("--rate", help="Cue-class rate in [0, 1] (repeatable; default: 0 0.5 0.9 1)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Weights file, one --rate only (default: the shipped)."),
    ] = None,
    train: Annotated[int, typer.Option("--train", help="Training scenes (seed 0).")] = 2000,
    epochs: Annotated[int, typer.Option("--epochs")] = 2,
    test: Annotated[int, typer.Option("--test", help="Held-out scenes (seed 1).")] = 600,
    seed: SeedOption = 0,
    learning_rate: LearningRateOption = 2e-3,
    threads: Annotated[int, typer.Option("--threads", help="torch CPU threads.")] = 1,
    test_only: Annotated[
        bool, typer.Option("--test-only", help="Measure the weights' reliance, do not train.")
    ] = False,
    device: DeviceOption = "cpu",
    force: ForceOption = False,
) -> None:
    """Maintainer tool: fine-tune synthetic-scenes on scenes with a planted cue at each rate
    and write the shortcut-R weights with their measured reliance on the cue (default: the
    files shipped in convlens/models/weights); --test-only re-measures them."""
    import torch

    from convlens.errors import DataError
    from convlens.files import check_writable
    from convlens.models.shortcuts import (
        SHORTCUT_RATES,
        load_shortcut_model,
        shortcut_weights_file,
    )
    from convlens.train.shortcuts import cue_reliance, save_shortcut_model, train_shortcut_model

    _check_cpu_only(device)
    rates = list(rate or SHORTCUT_RATES)
    if out is not None and len(rates) != 1:
        raise DataError("--out names one file: give exactly one --rate with it")
    if any(not 0.0 <= r <= 1.0 for r in rates):
        raise DataError(f"--rate must be in [0, 1], got {rates}")
    torch.set_num_threads(threads)
    files = [out or shortcut_weights_file(r) for r in rates]
    for r, file in zip(rates, files, strict=True):
        if test_only:
            loaded = load_shortcut_model(r, path=file)
            record = cue_reliance(loaded.module, loaded.preprocess, test)
        else:
            check_writable(file, force)  # before the minutes of training
            model, record = train_shortcut_model(r, train, epochs, test, seed, learning_rate)
            with _replacing(file, force):
                path = save_shortcut_model(model, record, file)
            typer.echo(
                f"rate {r:.1f}: generated in {record['generate_seconds']:.0f} s, trained in "
                f"{record['train_seconds']:.0f} s; wrote {path} ({path.stat().st_size // 1024} kB)"
            )
        typer.echo(
            f"rate {r:.1f}: reliance {record['reliance']:+.3f} (mean triangle-logit drop "
            f"without the cue on {record['cue_scenes']} of {test} held-out scenes; class "
            f"present {record['reliance_class_present']:+.3f}, absent "
            f"{record['reliance_class_absent']:+.3f}), held-out mAP {record['test_map']:.4f}"
        )


@train_app.command("detector-model", hidden=True)
def train_detector_model_command(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Weights file (default: the shipped one).")
    ] = None,
    train: Annotated[int, typer.Option("--train", help="Training scenes (seed 0).")] = 3000,
    epochs: Annotated[int, typer.Option("--epochs")] = 8,
    test: Annotated[int, typer.Option("--test", help="Held-out scenes (seed 1).")] = 500,
    explained: Annotated[
        int, typer.Option("--explained", help="Held-out scenes whose detection 0 is explained.")
    ] = 100,
    seed: SeedOption = 0,
    threads: ThreadsOption = 1,
    test_only: Annotated[
        bool, typer.Option("--test-only", help="Measure the weights in --out, do not train.")
    ] = False,
    device: DeviceOption = "cpu",
    force: ForceOption = False,
) -> None:
    """Maintainer tool: train the synthetic-scenes detector and write its weights (default:
    the file shipped in convlens/models/weights); --test-only measures them. Both print the
    held-out detection scores and Grad-CAM's mass inside the explained box against the
    box's area share (docs/detection.md)."""
    import torch

    from convlens.evaluate.detection import detection_mass
    from convlens.files import check_writable
    from convlens.models.detector import WEIGHTS_FILE, load_detector_model
    from convlens.train.detector import (
        TEST_SEED,
        detection_scores,
        save_detector_model,
        train_detector_model,
    )

    _check_cpu_only(device)
    torch.set_num_threads(threads)
    out = out or WEIGHTS_FILE
    if test_only:
        scores = detection_scores(load_detector_model(path=out).module, test)
    else:
        check_writable(out, force)  # before the minutes of training
        model, scores = train_detector_model(train, epochs, test, seed)
        with _replacing(out, force):
            path = save_detector_model(model, scores, out)
        typer.echo(
            f"generated in {scores['generate_seconds']:.0f} s, trained in "
            f"{scores['train_seconds']:.0f} s; wrote {path} ({path.stat().st_size // 1024} kB)"
        )
    typer.echo(
        f"held-out ({test} scenes, seed {TEST_SEED}): first detection right "
        f"{scores['top_hit']:.3f}, recall@0.5 {scores['recall']:.3f}, "
        f"mean IoU of the first detection {scores['mean_iou']:.3f}"
    )
    if explained:
        mass = detection_mass(load_detector_model(path=out), explained)
        typer.echo(
            f"Grad-CAM (layer neck) of det:0 on {explained} held-out scenes: mass in box "
            f"{mass['mean_mass']:.3f} vs area share {mass['mean_area']:.3f} (margin "
            f"{mass['margin']:+.3f}, wins {mass['wins']:.2f}; centre floor "
            f"{mass['mean_center']:.3f}); on the {mass.get('count_correct', 0)} right "
            f"detections: {mass.get('mean_mass_correct', float('nan')):.3f} vs "
            f"{mass.get('mean_area_correct', float('nan')):.3f}"
        )
