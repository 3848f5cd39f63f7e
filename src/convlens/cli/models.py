"""Commands about models: ``models``, ``layers``, ``predict``, ``methods``."""

from __future__ import annotations

from typing import Annotated

import typer

from convlens.cli.app import (
    DeviceOption,
    ImagesArgument,
    JsonOption,
    ModelOption,
    _echo_json,
    _report_skipped,
    app,
)
from convlens.cli.options import (
    ArchOption,
    LabelsOption,
    PreprocessOption,
    RandomWeightsOption,
    TrustPickleOption,
    WeightsOption,
    load_cli_model,
)
from convlens.package import DEFAULT_MODEL


@app.command("models")
def models_command(as_json: JsonOption = False, device: DeviceOption = "cpu") -> None:
    """List the ways to name a model and what each needs (--device is only checked)."""
    from convlens.models import model_sources

    rows = [{"name": s.usage, "needs": s.needs} for s in model_sources()]
    if as_json:
        _echo_json(rows)
        return
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        typer.echo(f"{row['name']:<{width}}  {row['needs']}")
    typer.echo("Any nn.Module works from Python: convlens.load_model(module).")


@app.command("layers")
def layers_command(
    model: ModelOption = DEFAULT_MODEL,
    size: Annotated[int | None, typer.Option(min=1, help="Input side in pixels.")] = None,
    as_json: JsonOption = False,
    device: DeviceOption = "cpu",
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Table of every layer: type, output shape, receptive field, jump and start. The #
    column is the index that --layer takes as #N (a bare number is a layer name)."""
    import torch

    from convlens.layers import layer_table
    from convlens.models import load_model

    loaded = load_model(model, device=device, trust_pickle=trust_pickle)
    height, width = (size, size) if size else loaded.preprocess.height_width
    rows = layer_table(loaded.module, torch.zeros(1, 3, height, width))
    if as_json:
        _echo_json([_layer_record(row) for row in rows])
        return
    typer.echo(
        f"{'#':>4}  {'name':<36} {'type':<22} {'output':<18} {'rf':>9} {'jump':>5} {'start':>7}"
    )
    for row in rows:
        record = _layer_record(row)
        shape = "x".join(str(d) for d in row.output_shape[1:]) if row.output_shape else "-"
        typer.echo(
            f"{row.index:>4}  {row.name:<36} {row.type:<22} {shape:<18} "
            f"{record['receptive_field']:>9} {record['jump']:>5} {record['start']:>7}"
        )


def _layer_record(row) -> dict:
    field = row.field
    if field is None:
        rf = jump = start = "-"
    elif field.is_global:
        rf, jump, start = "global", "-", "-"
    else:
        rf = _pair_text(field.size)
        jump = _pair_text(field.jump)
        start = _pair_text(field.start)
    return {
        "index": row.index,
        "name": row.name,
        "type": row.type,
        "output_shape": list(row.output_shape) if row.output_shape else None,
        "receptive_field": rf,
        "jump": jump,
        "start": start,
        "calls": row.calls,
    }


def _pair_text(pair) -> str:
    a, b = (f"{v:g}" for v in pair)
    return a if a == b else f"{a}x{b}"


@app.command("predict")
def predict_command(
    images: ImagesArgument,
    model: ModelOption = DEFAULT_MODEL,
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="Classes per image.")] = 5,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 16,
    preprocess: PreprocessOption = None,
    labels: LabelsOption = None,
    arch: ArchOption = None,
    weights: WeightsOption = None,
    random_weights: RandomWeightsOption = False,
    trust_pickle: TrustPickleOption = False,
    as_json: JsonOption = False,
    device: DeviceOption = "cpu",
) -> None:
    """Classify images and print the top classes with probabilities."""
    from convlens.attribution.explain import top_predictions
    from convlens.data.images import iter_batches

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
    results, errors = [], []
    for batch in iter_batches(images, loaded.preprocess, batch_size):
        errors.extend(batch.errors)
        _report_skipped(batch.errors)
        if not len(batch):
            continue
        rows = top_predictions(loaded, batch.tensor, k=top)
        for source, predictions in zip(batch.sources, rows, strict=True):
            results.append({"source": source, "predictions": predictions})
            if not as_json:
                text = ", ".join(
                    f"{p['label']} ({p['class_id']}) {p['probability']:.3f}" for p in predictions
                )
                typer.echo(f"{source}: {text}")
    if as_json:
        _echo_json(
            {
                "model": loaded.name,
                "results": results,
                "errors": [{"source": s, "error": m} for s, m in errors],
            }
        )
    if errors:
        raise typer.Exit(1)


@app.command("methods")
def methods_command(as_json: JsonOption = False, device: DeviceOption = "cpu") -> None:
    """List the registered attribution methods (--device is only checked)."""
    from convlens.attribution import list_methods

    rows = [
        {
            "name": m.name,
            "family": m.family,
            "uses_layer": m.uses_layer,
            "options": list(m.options),
            "summary": method_summary(m),
            "needs_head": m.head,  # the trained head whose maps it reads, or None
        }
        for m in list_methods(include_head_methods=True)
    ]
    if as_json:
        _echo_json(rows)
        return
    for row in rows:
        typer.echo(f"{row['name']:<22} {row['family']:<13} {row['summary']}")
        if row["needs_head"]:
            head = row["needs_head"]
            where = (
                "a detection model"
                if head == "detector"
                else f"a model with a trained {head} head (convlens train head {head})"
            )
            typer.echo(f"{'':<22} {'':<13} only on {where}; left out of --method all")
        if row["options"]:
            options = [o for o in row["options"] if o != "progress"]
            if options:
                typer.echo(f"{'':<22} {'':<13} --option KEY=VALUE for: {', '.join(options)}")


def method_summary(info) -> str:
    """The first sentence of a method's docstring (its first paragraph joined, markup
    backticks dropped), so a summary never stops mid-sentence."""
    import inspect
    import re

    doc = inspect.getdoc(info.fn) or info.summary or ""
    paragraph = " ".join(doc.split("\n\n")[0].split()).replace("``", "").replace("`", "")
    match = re.search(r"(?<!\bet al)(?<!\be\.g)(?<!\bi\.e)\.(\s|$)", paragraph)
    return paragraph[: match.start() + 1] if match else paragraph
