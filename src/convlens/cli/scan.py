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
from convlens.cli.options import (
    ForceOption,
    OutFolderOption,
    TopAliasOption,
    TrustPickleOption,
    as_usage_error,
)
from convlens.package import DEFAULT_MODEL

DataArgument = Annotated[
    str,
    typer.Argument(
        help="A folder of images (recursive), an ImageFolder tree (labels from sub-folders), "
        "a .txt file of paths, or shapes:N (synthetic shapes)."
    ),
]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")]
WorkersOption = Annotated[
    int, typer.Option("--workers", min=0, help="DataLoader worker processes.")
]
ResumeOption = Annotated[
    bool,
    typer.Option("--resume", help="Continue a stopped run from its saved state in --out."),
]
RestartOption = Annotated[
    bool,
    typer.Option(
        "--restart",
        help="Start over, ignoring the saved state of an earlier run (even with --resume).",
    ),
]
SaveEveryOption = Annotated[
    int, typer.Option("--save-every", min=1, help="Save state every N batches.")
]


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


def _checkpointing(
    out: str, job: str, save_every: int, *, resume: bool, restart: bool
) -> dict[str, object]:
    """The checkpoint options of a long ``job`` writing into ``out``: its state kept under
    ``out/.state/<job>``, every ``save_every`` batches, resumed when asked unless
    ``--restart``."""
    return {
        "checkpoint": Path(out) / ".state" / job,
        "save_every": save_every,
        "resume": resume and not restart,
    }


def _rules(projections: str) -> tuple[str, ...]:
    if projections.strip().lower() in ("", "none"):
        return ()
    return tuple(rule.strip() for rule in projections.split(",") if rule.strip())


@app.command("scan")
def scan_command(
    data: DataArgument,
    model: ModelOption = DEFAULT_MODEL,
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers",
            help="Comma-separated layers ('convlens layers' lists them). Default: 3 "
            "representative stages, the middle of each third of the network's stages without "
            "the stem and the head (EfficientNet-Lite0: blocks.1, blocks.3, blocks.5).",
        ),
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Images per channel.")] = 9,
    k_alias: TopAliasOption = None,
    by: Annotated[
        str, typer.Option("--by", help="Rank images by a channel's max or mean.")
    ] = "max",
    out: OutFolderOption = "scan",
    projections: Annotated[
        str,
        typer.Option(
            help="Projection drawn beside the patches: guided, deconvnet (image-independent "
            "in networks without max pooling, such as the default model) or none."
        ),
    ] = "guided",
    device: DeviceOption = "cpu",
    trust_pickle: TrustPickleOption = False,
    batch_size: BatchOption = 32,
    workers: WorkersOption = 0,
    save_every: SaveEveryOption = 50,
    resume: ResumeOption = False,
    force: ForceOption = False,
    restart: RestartOption = False,
) -> None:
    """Top-k dataset patches of every channel with projections: DIR/<layer>/topk.json,
    one PNG per channel (projections beside patches) and DIR/index.html. Files in DIR that
    convlens did not write are kept (refused unless --force); what an earlier scan wrote
    there and this one does not (layers no longer scanned) is removed."""
    from convlens.files import check_folder, writing
    from convlens.models import load_model
    from convlens.report.atlas import write_scan_atlas
    from convlens.scan.output import write_scan
    from convlens.scan.topk import check_settings, top_activating

    rules = _rules(projections)
    as_usage_error(check_settings, top if k_alias is None else k_alias, by, rules)
    check_folder(out, ("scan.json", "index.html"), force)
    opened, rank = _start_group(device)
    try:
        with writing(out, "scan", force=force, remove_stale=rank == 0):
            result = top_activating(
                load_model(model, trust_pickle=trust_pickle),
                data,
                layers.split(",") if layers else None,
                k=top if k_alias is None else k_alias,
                by=by,
                projections=rules,
                device=device,
                batch_size=batch_size,
                workers=workers,
                **_checkpointing(out, "scan", save_every, resume=resume, restart=restart),
                progress=True,
            )
            write_scan(  # ranks share
                result,
                out,
                rules[0] if rules else None,
                progress=True,
                resume=resume and not restart,
            )
            if rank == 0:
                page = write_scan_atlas(out, f"convlens scan of {data}")
                _report_skipped(result.errors)
                channels = sum(len(found.channels) for found in result.layers.values())
                typer.echo(
                    f"{result.scanned} images, {len(result.layers)} layers, {channels} channels "
                    f"-> {page}"
                )
        if rank == 0 and result.errors:
            raise typer.Exit(1)  # some files skipped; after the block, so the folder is whole
    finally:
        _end_group(opened)


@app.command("embed")
def embed_command(
    data: DataArgument,
    out: OutFolderOption,
    model: ModelOption = DEFAULT_MODEL,
    layer: Annotated[
        str | None,
        typer.Option("--layer", help="Layer to pool (default: the input of the classifier)."),
    ] = None,
    map_method: Annotated[
        str,
        typer.Option(
            "--map", help="2-D map: auto (UMAP if installed, else t-SNE), tsne, umap, none."
        ),
    ] = "auto",
    device: DeviceOption = "cpu",
    trust_pickle: TrustPickleOption = False,
    batch_size: BatchOption = 32,
    workers: WorkersOption = 0,
    save_every: SaveEveryOption = 50,
    resume: ResumeOption = False,
    force: ForceOption = False,
    restart: RestartOption = False,
) -> None:
    """Pooled features of every image: DIR/embeddings.npy (float16), DIR/index.json,
    DIR/map.png and DIR/index.html (files convlens did not write are refused unless
    --force)."""
    from convlens.data.datasets import open_dataset
    from convlens.files import check_folder, writing
    from convlens.models import load_model
    from convlens.report.atlas import write_embedding_atlas
    from convlens.scan.embed import embed, model_file_sha256
    from convlens.scan.output import write_embedding

    if map_method != "none":  # before any work: an unknown method, umap not installed
        from convlens.scan.knn import checked_map_method

        as_usage_error(checked_map_method, map_method, hint="--map")
    check_folder(out, ("embeddings.npy", "index.json", "map.png", "index.html"), force)
    opened, rank = _start_group(device)
    try:
        with writing(out, "embed", force=force, remove_stale=rank == 0):
            loaded = load_model(model, trust_pickle=trust_pickle)
            dataset = open_dataset(data, loaded.preprocess)
            result = embed(
                loaded,
                dataset,
                layer,
                device=device,
                batch_size=batch_size,
                workers=workers,
                **_checkpointing(out, "embed", save_every, resume=resume, restart=restart),
                progress=True,
            )
            if rank == 0:
                result = _with_data(result, data, model, model_file_sha256(model))
                method = _map_method(map_method, len(result.sources))
                picture = write_embedding(result, dataset, out, method)
                page = write_embedding_atlas(
                    out, picture.name if picture else None, f"convlens embedding of {data}"
                )
                _report_skipped(list(result.errors))
                typer.echo(f"{len(result.sources)} x {result.vectors.shape[1]} features -> {page}")
        if rank == 0 and result.errors:
            raise typer.Exit(1)  # some files skipped; after the block, so the folder is whole
    finally:
        _end_group(opened)


def _map_method(map_method: str, items: int) -> str | None:
    """``--map``, or None (no map.png) for ``none`` or too few images for a 2-D map: then
    the embedding is still written whole, with one warning line."""
    from convlens.scan.knn import MAP_MIN_ITEMS

    if map_method == "none":
        return None
    if items < MAP_MIN_ITEMS:
        typer.echo(
            f"warning: no map.png: a 2-D map needs at least {MAP_MIN_ITEMS} images, got {items}",
            err=True,
        )
        return None
    return map_method


def _with_data(result, data: str, model: str, model_sha256: str | None):
    """The embedding with the dataset and model named as the user wrote them (a dataset or
    model path made absolute, so ``neighbors`` finds them from any folder), and the model
    file's SHA-256 (so ``neighbors`` can reload both, the model only unchanged)."""
    from dataclasses import replace

    return replace(result, data=_absolute(data), model=_absolute(model), model_sha256=model_sha256)


def _absolute(name: str) -> str:
    """``name`` as an absolute path when it names an existing file or folder, else as it
    is (a model or data set name such as ``shapes:40``)."""
    path = Path(name)
    return str(path.resolve()) if path.exists() else name


@app.command("neighbors")
def neighbors_command(
    image: Annotated[str, typer.Argument(help="Query image file or sample name.")],
    index: Annotated[str, typer.Option("--index", help="Folder written by 'convlens embed'.")],
    top: Annotated[int, typer.Option("--top", min=1, help="Neighbours to show.")] = 5,
    k_alias: TopAliasOption = None,
    metric: Annotated[str, typer.Option(help="cosine or l2.")] = "cosine",
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="Also draw the neighbours as a strip into this PNG."),
    ] = None,
    json_: JsonOption = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model (default: the one the index was made with; a file only if unchanged).",
        ),
    ] = None,
    device: DeviceOption = "cpu",
    force: ForceOption = False,
    trust_pickle: TrustPickleOption = False,
) -> None:
    """The --top nearest images of IMAGE in an embedding: printed (or JSON: a list of
    {"source", "distance"}), and drawn as a strip into --out when it is given (nothing is
    written without --out)."""
    from convlens.data.datasets import open_dataset
    from convlens.data.images import load_images
    from convlens.files import check_writable
    from convlens.models import load_model
    from convlens.models.devices import placed_on
    from convlens.render.images import save_png
    from convlens.render.scans import neighbours_strip
    from convlens.scan.embed import feature_capture, load_embeddings, model_spec, pooled
    from convlens.scan.knn import check_metric, nearest
    from convlens.scan.output import thumbnails

    as_usage_error(check_metric, metric, hint="--metric")
    if out is not None:
        check_writable(out, force)
    stored = load_embeddings(index)
    if out is not None and stored.data is None:
        from convlens.errors import DataError

        raise DataError(
            f"--out: the index {index} does not record its images, so there are no "
            "neighbours to draw; drop --out, or run 'convlens embed' again"
        )
    loaded = load_model(model or model_spec(stored, index), trust_pickle=trust_pickle)
    batch = load_images([image], preprocess=loaded.preprocess)
    _, _, open_capture = feature_capture(loaded.module, None if stored.inputs else stored.layer)
    import torch

    from convlens.layers import borrowed_model

    with placed_on(loaded.module, device) as run_device, borrowed_model(loaded.module):
        with torch.no_grad(), open_capture(loaded.module) as cap:
            loaded.module(batch.tensor.to(run_device))
        query = pooled(cap.activation()).cpu().half()
    count = top if k_alias is None else k_alias
    rows, distances = nearest(stored.vectors, query, count, metric, backend="auto")
    found = [
        {"source": stored.sources[r], "distance": float(d)}
        for r, d in zip(rows[0].tolist(), distances[0].tolist(), strict=True)
    ]
    drawn = out is not None and stored.data is not None
    if drawn:
        dataset = open_dataset(stored.data, loaded.preprocess)
        tiles = thumbnails(dataset, [f["source"] for f in found], size=128)
        captions = [f"{Path(f['source']).name} {f['distance']:.3f}" for f in found]
        save_png(neighbours_strip(batch.display[0], tiles, captions), out, force)
    if json_:
        _echo_json(found)
        return
    for rank, item in enumerate(found, 1):
        typer.echo(f"{rank}. {item['source']}  {metric} distance {item['distance']:.4f}")
    if drawn:
        typer.echo(f"-> {out}")
