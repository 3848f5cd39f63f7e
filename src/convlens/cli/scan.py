"""Dataset-wide commands: ``scan`` (top-activating patches per channel, an atlas), ``embed``
(pooled features, a 2-D map) and ``neighbors`` (nearest images in an embedding).

``torchrun --nproc_per_node N -m convlens scan ...`` runs the same scan sharded over N
processes (gloo on CPU, nccl on CUDA); rank 0 writes the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.app import (
    DeviceOption,
    JsonOption,
    ModelOption,
    _echo_json,
    _report_skipped,
    app,
)

DataArgument = Annotated[
    str,
    typer.Argument(
        help="A folder of images (recursive), an ImageFolder tree (labels from sub-folders), "
        "a .txt file of paths, or shapes:N (synthetic shapes)."
    ),
]
BatchOption = Annotated[int, typer.Option("--batch-size", help="Images per batch.")]
WorkersOption = Annotated[int, typer.Option("--workers", help="DataLoader worker processes.")]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Continue a stopped run from its saved state in --out.")
]
SaveEveryOption = Annotated[int, typer.Option("--save-every", help="Save state every N batches.")]


def _start_group(device: str) -> tuple[bool, int]:
    """Open the torchrun process group when there is one; ``(opened, rank)``."""
    import torch

    from convlens.scan.distributed import init_from_env, rank_and_world

    opened = init_from_env(torch.device(device if device != "auto" else "cpu"))
    return opened, rank_and_world()[0]


def _end_group(opened: bool) -> None:
    if opened:
        import torch.distributed as dist

        dist.destroy_process_group()


def _rules(projections: str) -> tuple[str, ...]:
    if projections.strip().lower() in ("", "none"):
        return ()
    return tuple(rule.strip() for rule in projections.split(",") if rule.strip())


@app.command("scan")
def scan_command(
    data: DataArgument,
    model: ModelOption = "efficientnet_lite0",
    layers: Annotated[
        str | None, typer.Option("--layers", help="Comma-separated layers (default: every stage).")
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Images per channel.")] = 9,
    by: Annotated[
        str, typer.Option("--by", help="Rank images by a channel's max or mean.")
    ] = "max",
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder.")] = "scan",
    projections: Annotated[
        str,
        typer.Option(
            help="Projection drawn beside the patches: guided, deconvnet (image-independent "
            "in networks without max pooling, such as the default model) or none."
        ),
    ] = "guided",
    device: DeviceOption = "cpu",
    batch_size: BatchOption = 32,
    workers: WorkersOption = 0,
    save_every: SaveEveryOption = 50,
    resume: ResumeOption = False,
) -> None:
    """Top-k dataset patches of every channel with projections: DIR/<layer>/topk.json,
    one PNG per channel (projections beside patches) and DIR/index.html."""
    from convlens.models import load_model
    from convlens.report.atlas import write_scan_atlas
    from convlens.scan.output import write_scan
    from convlens.scan.topk import top_activating

    opened, rank = _start_group(device)
    try:
        rules = _rules(projections)
        result = top_activating(
            load_model(model),
            data,
            layers.split(",") if layers else None,
            k=k,
            by=by,
            projections=rules,
            device=device,
            batch_size=batch_size,
            workers=workers,
            checkpoint=Path(out) / ".state" / "scan",
            save_every=save_every,
            resume=resume,
            progress=True,
        )
        write_scan(result, out, rules[0] if rules else None, progress=True)  # ranks share
        if rank == 0:
            page = write_scan_atlas(out, f"convlens scan of {data}")
            _report_skipped(result.errors)
            channels = sum(len(top.channels) for top in result.layers.values())
            typer.echo(
                f"{result.scanned} images, {len(result.layers)} layers, {channels} channels "
                f"-> {page}"
            )
            if result.errors:
                raise typer.Exit(1)
    finally:
        _end_group(opened)


@app.command("embed")
def embed_command(
    data: DataArgument,
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder.")],
    model: ModelOption = "efficientnet_lite0",
    layer: Annotated[
        str | None,
        typer.Option("--layer", help="Layer to pool (default: the input of the classifier)."),
    ] = None,
    map_method: Annotated[
        str, typer.Option("--map", help="2-D map: auto (UMAP if installed, else t-SNE), none.")
    ] = "auto",
    device: DeviceOption = "cpu",
    batch_size: BatchOption = 32,
    workers: WorkersOption = 0,
    save_every: SaveEveryOption = 50,
    resume: ResumeOption = False,
) -> None:
    """Pooled features of every image: DIR/embeddings.npy (float16), DIR/index.json,
    DIR/map.png and DIR/index.html."""
    from convlens.data.datasets import open_dataset
    from convlens.models import load_model
    from convlens.report.atlas import write_embedding_atlas
    from convlens.scan.embed import embed
    from convlens.scan.output import write_embedding

    opened, rank = _start_group(device)
    try:
        loaded = load_model(model)
        dataset = open_dataset(data, loaded.preprocess)
        result = embed(
            loaded,
            dataset,
            layer,
            device=device,
            batch_size=batch_size,
            workers=workers,
            checkpoint=Path(out) / ".state" / "embed",
            save_every=save_every,
            resume=resume,
            progress=True,
        )
        if rank == 0:
            result = _with_data(result, data, model)
            method = None if map_method == "none" else map_method
            picture = write_embedding(result, dataset, out, method)
            page = write_embedding_atlas(
                out, picture.name if picture else None, f"convlens embedding of {data}"
            )
            _report_skipped(list(result.errors))
            typer.echo(f"{len(result.sources)} x {result.vectors.shape[1]} features -> {page}")
            if result.errors:
                raise typer.Exit(1)
    finally:
        _end_group(opened)


def _with_data(result, data: str, model: str):
    """The embedding with the dataset and model named as the user wrote them (so
    ``neighbors`` can reload both)."""
    from dataclasses import replace

    return replace(result, data=data, model=model)


@app.command("neighbors")
def neighbors_command(
    image: Annotated[str, typer.Argument(help="Query image file or sample name.")],
    index: Annotated[str, typer.Option("--index", help="Folder written by 'convlens embed'.")],
    k: Annotated[int, typer.Option("--k", help="Neighbours to show.")] = 5,
    metric: Annotated[str, typer.Option(help="cosine or l2.")] = "cosine",
    out: Annotated[str | None, typer.Option("--out", "-o", help="PNG of the neighbours.")] = None,
    json_: JsonOption = False,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model (default: the one the index was made with)."),
    ] = None,
    device: DeviceOption = "cpu",
) -> None:
    """The k nearest images of IMAGE in an embedding: printed (or JSON: a list of
    {"source", "distance"}) and drawn as a strip."""
    from convlens.data.datasets import open_dataset
    from convlens.data.images import load_images
    from convlens.models import load_model
    from convlens.render.images import save_png
    from convlens.render.scans import neighbours_strip
    from convlens.scan.embed import feature_capture, load_embeddings, pooled
    from convlens.scan.knn import nearest
    from convlens.scan.output import thumbnails
    from convlens.scan.stream import placed_on

    stored = load_embeddings(index)
    loaded = load_model(model or stored.model)
    batch = load_images([image], preprocess=loaded.preprocess)
    _, _, open_capture = feature_capture(loaded.module, None if stored.inputs else stored.layer)
    import torch

    from convlens.layers import borrowed_model

    with placed_on(loaded.module, device) as run_device, borrowed_model(loaded.module):
        with torch.no_grad(), open_capture(loaded.module) as cap:
            loaded.module(batch.tensor.to(run_device))
        query = pooled(cap.activation()).cpu().half()
    rows, distances = nearest(stored.vectors, query, k, metric, backend="auto")
    found = [
        {"source": stored.sources[r], "distance": float(d)}
        for r, d in zip(rows[0].tolist(), distances[0].tolist(), strict=True)
    ]
    picture = out or f"neighbors-{Path(image).stem}.png"
    if stored.data is not None:
        dataset = open_dataset(stored.data, loaded.preprocess)
        tiles = thumbnails(dataset, [f["source"] for f in found], size=128)
        captions = [f"{Path(f['source']).name} {f['distance']:.3f}" for f in found]
        save_png(neighbours_strip(batch.display[0], tiles, captions), picture)
    if json_:
        _echo_json(found)
        return
    for rank, item in enumerate(found, 1):
        typer.echo(f"{rank}. {item['source']}  {metric} distance {item['distance']:.4f}")
    if stored.data is not None:
        typer.echo(f"-> {picture}")
