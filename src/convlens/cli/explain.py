"""``convlens explain``: one panel PNG and one JSON record per image."""

from __future__ import annotations

import json
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
from convlens.errors import TargetError


@app.command("explain")
def explain_command(
    ctx: typer.Context,
    images: ImagesArgument,
    model: ModelOption = "efficientnet_lite0",
    method: Annotated[
        str, typer.Option("--method", help="Method name(s), comma separated, or 'all'.")
    ] = "gradcam",
    target: Annotated[
        str, typer.Option("--target", "-t", help="top1, topK, a class id or a class name.")
    ] = "top1",
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            help="Layer for CAM methods: a name, or #N for row N of 'convlens layers' "
            "(default: the last convolution stage).",
        ),
    ] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for panels and JSON.")] = (
        "convlens-out"
    ),
    as_json: JsonOption = False,
    region_box: Annotated[
        str | None,
        typer.Option(
            "--region",
            help="x0,y0,x1,y1 (pixels, x1/y1 exclusive): for a segmentation model, explain "
            "the target class's logits summed over this box (default: over its predicted mask).",
        ),
    ] = None,
    device: DeviceOption = "cpu",
) -> None:
    """Explain each image: one PNG panel (input + one overlay per method) and one JSON record.

    A method or image that fails is reported on stderr and skipped; the rest is still
    written, and the exit status is 1. With --method all, a method that cannot apply to
    the model (cam without a global-average-pool + linear head) is skipped with the reason.
    """
    from pathlib import Path

    from convlens.attribution.explain import check_layer_use, method_names
    from convlens.attribution.methods import get_method
    from convlens.data.images import iter_batches
    from convlens.layers import resolve_layer
    from convlens.models import load_model

    debug = bool(ctx.find_root().params.get("debug"))
    loaded = load_model(model, device=device)
    names = method_names(method)
    explained = _with_region(target, region_box)
    if layer is not None:  # an unknown or unused layer stops before any work
        check_layer_use([get_method(name) for name in names], layer)
        resolve_layer(loaded.module, layer)
    run = _ExplainRun(names, skip_inapplicable=method.strip() == "all" and layer is None)
    records, errors, used = [], [], set()
    for batch in iter_batches(images, loaded.preprocess, batch_size=1):
        errors.extend(batch.errors)
        _report_skipped(batch.errors)
        if not len(batch):
            continue
        stem = _unique_stem(Path(batch.sources[0]).stem, used)
        try:
            record = _explain_one_image(
                loaded, batch, run, explained, layer, Path(out) / stem, debug
            )
        except TargetError:
            raise  # the same for every image: stop with one line
        except Exception as error:  # this image fails; the next ones still run
            errors.append((batch.sources[0], _error_text(error)))
            _report_failure(f"failed on {batch.sources[0]}", error, debug)
            continue
        records.append(record)
        if not as_json:
            top = record["predictions"][0]
            typer.echo(
                f"{record['source']}: {top['label']} ({top['class_id']}) "
                f"{top['probability']:.3f} -> {record['panel']}"
            )
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


def _explain_one_image(loaded, batch, run: _ExplainRun, target, layer, stem, debug) -> dict:
    """Run every method on one image; write ``stem.png`` (panel) and ``stem.json``."""
    from convlens.attribution.explain import (
        explain_methods,
        predictions_from_output,
        top_predictions,
    )
    from convlens.render import save_png
    from convlens.render.panel import PanelTile, explanation_panel, tile_title

    explanations, failures = explain_methods(
        loaded, batch, run.names, target, layer, progress=True, keep_going=True
    )
    # The top-5 line reads the output of a method's own pass (any row: one image here);
    # a forward pass of its own only when every method failed.
    outputs = [item.output[:1] for item in explanations if item.output is not None]
    if outputs:
        predictions = predictions_from_output(loaded, outputs[0])[0]
    else:
        predictions = top_predictions(loaded, batch.tensor)[0]
    failed = run.settle(failures, batch.sources[0], debug)
    tiles, methods = [], []
    for item in explanations:
        for row, info in enumerate(item.record()["rows"]):
            title = tile_title(item.method, info["class_name"], info["score"], info["probability"])
            tiles.append(PanelTile(item.maps[row], title))
            methods.append(
                {"method": item.method, "layer": item.layer, "seconds": round(item.seconds, 4)}
                | {k: v for k, v in info.items() if k != "source"}
                | {k: _row_extra(v, row) for k, v in item.record()["extras"].items()}
            )
    top = predictions[0]
    panel = explanation_panel(
        batch.display[0], tiles, input_title=f"input: {top['label']} p={top['probability']:.2f}"
    )
    panel_path = save_png(panel, stem.with_suffix(".png"))
    layers = sorted({m["layer"] for m in methods if m["layer"]})
    record = {
        "source": batch.sources[0],
        "model": loaded.name,
        "target": str(target),
        "layer": layers[0] if len(layers) == 1 else layers or None,
        "predictions": predictions,
        "methods": methods,
        "failed_methods": failed,
        "panel": str(panel_path),
    }
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
    return record


def _row_extra(value, row: int):
    return value[row] if isinstance(value, list) else value


def _unique_stem(stem: str, used: set[str]) -> str:
    candidate, count = stem, 1
    while candidate in used:
        count += 1
        candidate = f"{stem}_{count}"
    used.add(candidate)
    return candidate


def _with_region(target: str, region_box: str | None):
    """``target``, or ``region(target, box=...)`` for ``--region x0,y0,x1,y1``."""
    if region_box is None:
        return target
    from convlens.targets import region

    try:
        box = tuple(int(v) for v in region_box.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise typer.BadParameter(
            f"{region_box!r} is not a box; write four integers x0,y0,x1,y1 such as 8,8,40,40",
            param_hint="--region",
        )
    return region(target, box=box)
