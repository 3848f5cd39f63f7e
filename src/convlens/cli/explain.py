"""``convlens explain``: one panel PNG and one JSON record per image."""

from __future__ import annotations

from typing import Annotated

import typer

from convlens.cli.app import (
    DeviceOption,
    ImagesArgument,
    JsonOption,
    ModelOption,
    _echo_json,
    _error_text,
    _report_failure,
    _report_skipped,
    app,
)
from convlens.cli.options import (
    ArchOption,
    DpiOption,
    ForceOption,
    LabelsOption,
    MethodOptionOption,
    PreprocessOption,
    RandomWeightsOption,
    ScaleOption,
    TrustPickleOption,
    WeightsOption,
    WidthOption,
    as_usage_error,
    chosen_method_options,
    chosen_methods,
    load_cli_model,
)
from convlens.errors import DiskFullError, TargetError
from convlens.package import DEFAULT_MODEL


@app.command("explain")
def explain_command(
    ctx: typer.Context,
    images: ImagesArgument,
    model: ModelOption = DEFAULT_MODEL,
    method: Annotated[
        str, typer.Option("--method", help="Method name(s), comma separated, or 'all'.")
    ] = "gradcam",
    target: Annotated[
        str,
        typer.Option(
            "--target",
            "-t",
            help="top1, topK, a class id or name, A-B: why A rather than B, or det:N "
            "(a detector's detection N).",
        ),
    ] = "top1",
    contrast_with: Annotated[
        str | None,
        typer.Option("--contrast", help="Explain why --target rather than this class."),
    ] = None,
    option: MethodOptionOption = None,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            help="Layer for CAM methods: a name, or #N for row N of 'convlens layers' "
            "(default: the last convolution stage).",
        ),
    ] = None,
    out: Annotated[
        str,
        typer.Option(
            "--out", "-o", help="Folder for panels and JSON, or a panel file NAME.png|.pdf|.svg."
        ),
    ] = "convlens-out",
    fmt: Annotated[
        str, typer.Option("--format", help="Panel file format: png, pdf or svg.")
    ] = "png",
    scale: ScaleOption = "per-map",
    dpi: DpiOption = None,
    width: WidthOption = None,
    force: ForceOption = False,
    preprocess: PreprocessOption = None,
    labels: LabelsOption = None,
    arch: ArchOption = None,
    weights: WeightsOption = None,
    random_weights: RandomWeightsOption = False,
    trust_pickle: TrustPickleOption = False,
    as_json: JsonOption = False,
    device: DeviceOption = "cpu",
    output_key: Annotated[
        str | None,
        typer.Option(
            "--output-key",
            help="For a model returning a dict, tuple or ModelOutput: the entry to explain "
            "(a name, or a tuple position); default: its only tensor, else 'logits'.",
        ),
    ] = None,
    region_box: Annotated[
        str | None,
        typer.Option(
            "--region",
            help="x0,y0,x1,y1 (pixels, x1/y1 exclusive): for a segmentation model, explain "
            "the target class's logits summed over this box (default: over its predicted mask).",
        ),
    ] = None,
) -> None:
    """Explain each image: one panel (input + one tile per method, each with a colourbar)
    and one JSON record.

    A method or image that fails is reported on stderr and skipped; the rest is still
    written, and the exit status is 1. With --method all, a method that cannot apply to
    the model (cam without a global-average-pool + linear head, layer methods on a
    TorchScript model) is skipped with the reason. An existing panel or JSON that convlens
    did not write (say an annotation beside the image) is kept and its image skipped,
    unless --force; a run into a folder removes what an earlier run left there and this
    one did not write (files convlens wrote and nobody changed since).
    """
    from pathlib import Path

    from convlens.attribution.explain import check_layer_use
    from convlens.attribution.methods import get_method
    from convlens.data.images import iter_batches
    from convlens.files import unique_name, writing
    from convlens.layers.find import resolve_layer_names
    from convlens.models.outputs import output_key as output_key_block
    from convlens.render.figures import FORMATS
    from convlens.render.panel import SCALES
    from convlens.targets import parse_target

    debug = bool(ctx.find_root().params.get("debug"))
    if f".{fmt}" not in FORMATS or scale not in SCALES:  # usage errors, before any work
        bad = ("--format", fmt, "png, pdf, svg") if f".{fmt}" not in FORMATS else None
        bad = bad or ("--scale", scale, ", ".join(SCALES))
        raise typer.BadParameter(f"{bad[1]!r}; use one of {bad[2]}", param_hint=bad[0])
    # By name: typer may hand a context from its own copy of click, whose enum is another class.
    fmt_given = getattr(ctx.get_parameter_source("fmt"), "name", "DEFAULT") != "DEFAULT"
    folder, fmt, named = _panel_destination(out, fmt, force, fmt_given)
    names = chosen_methods(method)
    method_options = chosen_method_options(option, names)
    # a malformed target (top0, similar: without a path) too; names need the labels
    as_usage_error(parse_target, target, None, rather_than=contrast_with, hint="--target")
    if layer is not None:  # --layer with no method that uses one
        infos = [get_method(name) for name in names]
        as_usage_error(check_layer_use, infos, layer, hint="--layer")
    loaded = load_cli_model(
        model,
        arch=arch,
        weights=weights,
        random_weights=random_weights,
        trust_pickle=trust_pickle,
        preprocess=preprocess,
        labels=labels,
        device=device,
    )
    explained = _with_region(
        parse_target(target, loaded.labels, rather_than=contrast_with), region_box
    )
    if layer is not None:  # an unknown layer stops before any work
        resolve_layer_names(loaded.module, layer)
    skip_inapplicable = method.strip() == "all" and layer is None
    run = _ExplainRun(names, skip_inapplicable=skip_inapplicable)
    run.refuse_scripted(loaded.module)
    picture = _Picture(fmt, scale, dpi, width)
    picture.region = _region_box(region_box) if region_box is not None else None
    records, errors, used = [], [], set()
    reading = output_key_block(output_key)
    # --out DIR: files an earlier explain wrote there and this run does not are removed
    with writing(folder, "explain", force=force, remove_stale=named is None), reading:
        for batch in iter_batches(images, loaded.preprocess, batch_size=1):
            errors.extend(batch.errors)
            _report_skipped(batch.errors)
            if not len(batch):
                continue
            stem = unique_name(named or Path(batch.sources[0]).stem, used)
            try:
                _check_outputs(folder / stem, picture.fmt)  # before any work on this image
                record = _explain_one_image(
                    loaded,
                    batch,
                    run,
                    explained,
                    layer,
                    folder / stem,
                    debug,
                    method_options,
                    picture,
                )
            except (TargetError, DiskFullError):
                raise  # the same for every image: stop with one line
            except Exception as error:  # this image fails; the next ones still run
                errors.append((batch.sources[0], _error_text(error)))
                _report_failure(f"failed on {batch.sources[0]}", error, debug)
                continue
            records.append(record)
            if not as_json and record["panel"] is not None:
                from convlens.cli.explain_tiles import prediction_text

                top = prediction_text(record["predictions"][0], 3)
                typer.echo(
                    f"{record['source']}: explained {record['explained']} ({top}) -> "
                    f"{record['panel']}"
                )
        if picture.held:
            from convlens.cli.explain_tiles import write_run_panels

            write_run_panels(picture.held, picture)
        if as_json:
            _echo_json(
                {
                    "records": records,
                    "errors": [{"source": s, "error": m} for s, m in errors],
                    "skipped_methods": run.skipped,
                }
            )
        if errors or run.failed:
            raise typer.Exit(1)


class _ExplainRun:
    """The methods still to run, those skipped as inapplicable, and whether any failed."""

    def __init__(self, names: list[str], skip_inapplicable: bool) -> None:
        self.names = list(names)
        self.skip_inapplicable = skip_inapplicable
        self.skipped: dict[str, str] = {}
        self.failed = False

    def settle(self, failures, source: str, debug: bool) -> list[dict]:
        """Report each failure on stderr; return them as JSON records. A layer error under
        ``--method all`` (the method cannot use this model) drops the method for good."""
        from convlens.errors import LayerError

        records = []
        for failure in failures:
            text = _error_text(failure.error)
            if self.skip_inapplicable and isinstance(failure.error, LayerError):
                self.names.remove(failure.method)
                self.skipped[failure.method] = text
                typer.echo(
                    f"skipped {failure.method} (cannot apply to this model): {text}", err=True
                )
                continue
            self.failed = True
            _report_failure(f"{failure.method} failed on {source}", failure.error, debug)
            records.append({"method": failure.method, "error": text})
        return records

    def refuse_scripted(self, module) -> None:
        """Before any image: layer methods on a TorchScript model are skipped with the
        reason under ``--method all``, else refused (nothing is written)."""
        from convlens.attribution.methods import get_method
        from convlens.errors import LayerError
        from convlens.layers.borrow import refuse_scripted

        layered = [  # methods that hook layers or rectifiers, which TorchScript hides
            name
            for name in self.names
            if get_method(name).uses_layer or get_method(name).family == "rule"
        ]
        try:
            if layered:
                refuse_scripted(module, "run " + ", ".join(layered))
        except LayerError as error:
            if not self.skip_inapplicable:
                raise
            for name in layered:
                self.names.remove(name)
                self.skipped[name] = _error_text(error)
            typer.echo(f"skipped {', '.join(layered)}: {_error_text(error)}", err=True)


def _explain_one_image(
    loaded, batch, run: _ExplainRun, target, layer, stem, debug, method_options, picture
) -> dict:
    """Run every method on one image; write the panel (``stem.png``/.pdf/.svg, only when a
    method succeeded) and ``stem.json``."""
    import copy

    from convlens.attribution.explain import (
        explain_methods,
        predictions_from_output,
        top_predictions,
    )
    from convlens.cli.explain_tiles import (
        explained_text,
        image_independence,
        method_tiles,
        pattern_note,
        write_panel,
    )
    from convlens.files import discard_output, write_json
    from convlens.targets import target_text

    explanations, failures = explain_methods(
        loaded,
        batch,
        run.names,
        target,
        layer,
        progress=True,
        keep_going=True,
        method_options=method_options,
    )
    # The top-5 line reads the output of a method's own pass (any row: one image here);
    # a forward pass of its own only when every method failed.
    outputs = [item.output[:1] for item in explanations if item.output is not None]
    if outputs:
        predictions = predictions_from_output(loaded, outputs[0])[0]
    else:
        predictions = top_predictions(loaded, batch.tensor)[0]
    failed = run.settle(failures, batch.sources[0], debug)
    notes = {
        item.method: pattern_note(image_independence(loaded, batch.tensor, item, method_options))
        for item in explanations
        if item.method == "deconvnet"
    }
    tiles, methods = method_tiles(explanations, notes)
    boxes = [item.extras["box"][0] for item in explanations if "box" in item.extras]
    if boxes:  # a detection target: the panel outlines the explained detection's box
        picture = copy.copy(picture)
        picture.region = tuple(float(v) for v in boxes[0].tolist())
    panel_path = None
    if tiles and picture.held is not None:  # drawn after the run, on the run's scale
        picture.held.append((batch.display[0], tiles, predictions[0], stem))
        panel_path = stem.with_name(f"{stem.name}.{picture.fmt}")
    elif tiles:
        panel_path = write_panel(batch.display[0], tiles, predictions[0], stem, picture)
    else:  # every method failed: an earlier run's panel would contradict the new record
        discard_output(stem.with_name(f"{stem.name}.{picture.fmt}"))
    layers = sorted({m["layer"] for m in methods if m["layer"]})
    record = {
        "source": batch.sources[0],
        "model": loaded.name,
        "target": target_text(target),
        "explained": explained_text(methods),
        "layer": layers[0] if len(layers) == 1 else layers or None,
        "predictions": predictions,
        "methods": methods,
        "failed_methods": failed,
        "panel": None if panel_path is None else str(panel_path),
    }
    write_json(stem.with_name(f"{stem.name}.json"), record)
    return record


def _check_outputs(stem, fmt: str) -> None:
    """`OutputExistsError` (naming --force) when this image's panel or JSON exists and is
    not convlens's (`convlens.files.check_writable`)."""
    from convlens.files import check_writable

    check_writable(stem.with_name(f"{stem.name}.{fmt}"))
    check_writable(stem.with_name(f"{stem.name}.json"))


def _panel_destination(out: str, fmt: str, force: bool = False, fmt_given: bool = False) -> tuple:
    """``(folder, format, file stem or None)``: ``--out DIR`` (panels named after their
    images), or ``--out NAME.png|.pdf|.svg`` (the panel of the first image written there,
    its JSON beside it, further images as ``NAME_2`` ...; the extension sets the format).
    A ``--format`` given beside a different extension, or a file name with another
    picture extension (``x.jpg``, which would have become a folder), is a usage error."""
    from pathlib import Path

    from convlens.data.images import IMAGE_SUFFIXES
    from convlens.render.figures import FORMATS, check_writable, output_folder

    path = Path(out)
    suffix = path.suffix.lower()
    as_file = not path.is_dir() and not out.endswith("/")
    if as_file and suffix in FORMATS:
        if fmt_given and fmt != FORMATS[suffix]:
            raise typer.BadParameter(
                f"--out {out} is a {FORMATS[suffix]} file but --format is {fmt}: drop "
                f"--format, or name the file {path.stem}.{fmt}",
                param_hint="--format",
            )
        check_writable(path, force)
        return output_folder(str(path.parent)), FORMATS[suffix], path.stem
    if as_file and suffix in (IMAGE_SUFFIXES | {".json", ".html"}) - set(FORMATS):
        raise typer.BadParameter(
            f"{out!r}: a panel is written as .png, .pdf or .svg; give such a file name, or "
            "a folder (end it with / for a folder with a dot in its name)",
            param_hint="--out",
        )
    return output_folder(out), fmt, None


class _Picture:
    """How panels are written: file format, colour scale, dpi and width in inches."""

    def __init__(self, fmt: str, scale: str, dpi: int | None, width: float | None) -> None:
        self.fmt, self.scale, self.dpi, self.width = fmt, scale, dpi, width
        self.region: tuple[int, int, int, int] | None = None  # --region, outlined
        # shared/absolute: one colour range per method across all images of the run, so
        # panels wait until every image is explained
        self.held: list[tuple] | None = None if scale == "per-map" else []


def _with_region(target: str, region_box: str | None):
    """``target``, or ``region(target, box=...)`` for ``--region x0,y0,x1,y1``."""
    if region_box is None:
        return target
    from convlens.targets import region

    return region(target, box=_region_box(region_box))


def _region_box(region_box: str) -> tuple[int, int, int, int]:
    """``"x0,y0,x1,y1"`` as four integers (a usage error otherwise)."""
    try:
        box = tuple(int(v) for v in region_box.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise typer.BadParameter(
            f"{region_box!r} is not a box; write four integers x0,y0,x1,y1 such as 8,8,40,40",
            param_hint="--region",
        )
    return box
