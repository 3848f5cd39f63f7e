"""Dataset-wide explanations: ``attribute`` (every image's map, in shards), ``spray``
(clusters of those maps per class), ``tcav`` (does a class depend on a concept?),
``concepts`` (CRAFT: which concepts a layer holds for a class, and how much each counts),
``dissect`` (which channels detect which concepts?).

``torchrun --nproc_per_node N -m convlens attribute ...`` shards the pass over N processes
as ``scan`` does; rank 0 writes ``index.json``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from convlens.cli.app import DeviceOption, JsonOption, ModelOption, _echo_json, _report_skipped, app
from convlens.cli.options import (
    ForceOption,
    MethodOptionOption,
    OutFolderOption,
    TopAliasOption,
    TrustPickleOption,
    check_choice,
    check_share,
)
from convlens.cli.scan import (
    BatchOption,
    DataArgument,
    RestartOption,
    ResumeOption,
    SaveEveryOption,
    WorkersOption,
    _checkpointing,
    _end_group,
    _start_group,
)
from convlens.package import DEFAULT_MODEL


@app.command("attribute")
def attribute_command(
    data: DataArgument,
    out: OutFolderOption,
    model: ModelOption = DEFAULT_MODEL,
    method: Annotated[str, typer.Option("--method", help="Attribution method.")] = "gradcam",
    target: Annotated[
        str,
        typer.Option(
            "--target",
            "-t",
            help="top1, a class id or name, A-B (why A rather than B), or label: each "
            "image's label in the data (an ImageFolder tree, shapes:N).",
        ),
    ] = "top1",
    layer: Annotated[
        str | None,
        typer.Option("--layer", help="Layer for CAM methods (default: the last conv stage)."),
    ] = None,
    size: Annotated[
        int, typer.Option("--size", min=1, help="Side of the stored maps in pixels.")
    ] = 56,
    option: MethodOptionOption = None,
    device: DeviceOption = "cpu",
    trust_pickle: TrustPickleOption = False,
    batch_size: BatchOption = 32,
    workers: WorkersOption = 0,
    save_every: SaveEveryOption = 50,
    resume: ResumeOption = False,
    force: ForceOption = False,
    restart: RestartOption = False,
) -> None:
    """Every image's map by --method at --size x --size pixels: float16 shards in
    DIR/maps/ (each map divided by its largest absolute value) and DIR/index.json (per row:
    source, label, explained class, score, scale, shard, row). With --method lrp --option
    relevance_layer=LAYER each image's LRP relevance per channel of LAYER is stored too
    (DIR/channels/), for 'spray --features channels'. Memory stays flat in the number of
    images; --resume continues a stopped run."""
    from convlens.cli.options import as_usage_error, chosen_method_options, chosen_methods
    from convlens.files import check_folder, writing
    from convlens.models import load_model
    from convlens.scan.attribute import INDEX_FILE, LABEL_TARGET, attribute_dataset
    from convlens.targets import parse_target

    (method,) = chosen_methods(method, one=True)
    options = next(iter(chosen_method_options(option, [method]).values()), {})
    if target.strip().lower() != LABEL_TARGET:
        # a malformed target (top0) too; class names need the model's labels
        as_usage_error(parse_target, target, None, hint="--target")
    check_folder(out, (INDEX_FILE,), force)
    opened, rank = _start_group(device)
    try:
        with writing(out, "attribute", force=force, remove_stale=rank == 0):
            index = attribute_dataset(
                load_model(model, trust_pickle=trust_pickle),
                data,
                out,
                method,
                target,
                layer,
                size=size,
                options=options,
                device=device,
                batch_size=batch_size,
                workers=workers,
                **_checkpointing(out, "attribute", save_every, resume=resume, restart=restart),
                progress=True,
            )
            skipped = [(e["source"], e["message"]) for e in index["skipped"]]
            if rank == 0:
                _report_skipped(skipped)
                typer.echo(
                    f"{index['count']} maps of {size}x{size} in {len(index['shards'])} shards "
                    f"-> {out}/{INDEX_FILE}"
                )
        if rank == 0 and skipped:
            raise typer.Exit(1)
    finally:
        _end_group(opened)


@app.command("tcav")
def tcav_command(
    concept: Annotated[
        str, typer.Option("--concept", help="Concept images: a folder, shapes:N@CLASS, ...")
    ],
    random: Annotated[
        list[str],
        typer.Option("--random", help="Random images (repeat; one set is split in runs + 1)."),
    ],
    target: Annotated[str, typer.Option("--class", help="The class tested (id or name).")],
    layer: Annotated[str, typer.Option("--layer", help="Layer(s), comma separated.")],
    data: Annotated[str, typer.Option("--data", help="Images of the class whose score is tested.")],
    model: ModelOption = DEFAULT_MODEL,
    runs: Annotated[int, typer.Option("--runs", min=2, help="Concept and random CAVs.")] = 10,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level.")] = 0.05,
    test: Annotated[
        str,
        typer.Option(
            "--test",
            help="cosine (default) or score: the concept against the random sets as null "
            "concepts (Crawford-Howell); runs: the paper's t-test of the runs.",
        ),
    ] = "cosine",
    json_: JsonOption = False,
    device: DeviceOption = "cpu",
    trust_pickle: TrustPickleOption = False,
    batch_size: BatchOption = 32,
) -> None:
    """TCAV (Kim et al. 2018): per layer, the share of --data images whose --class score
    grows along the concept's activation vector, and a t-test of --test against random
    sets used as concepts (Bonferroni over the layers). As JSON: {"concept", "class",
    "layer", "score", "p_value", "significant", "test", "cosine", "p_values"} per layer."""
    from convlens.concepts.tcav import TESTS, tcav
    from convlens.models import load_model

    check_choice(test, TESTS, "--test")
    check_share(alpha, "--alpha")
    results = tcav(
        load_model(model, trust_pickle=trust_pickle),
        concept,
        list(random),
        data,
        int(target) if target.isdigit() else target,
        layer.split(","),
        runs=runs,
        alpha=alpha,
        test=test,
        batch_size=batch_size,
        device=device,
    )
    keys = "concept class layer score p_value significant test cosine p_values".split()
    records = [{k: r.record()[k] for k in keys} for r in results]
    if json_:
        _echo_json(records)
        return
    for r in records:
        typer.echo(
            f"{r['layer']}: TCAV {r['score']:.3f} (mean cosine {r['cosine']:.4f}) of "
            f"{r['concept']} for {r['class']}, p = {r['p_value']:.3g} by {r['test']} "
            f"({'significant' if r['significant'] else 'not significant'})"
        )


@app.command("spray")
def spray_command(
    maps: Annotated[str, typer.Argument(help="Folder written by 'convlens attribute'.")],
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Output folder (default: the maps folder).")
    ] = None,
    target: Annotated[
        int | None, typer.Option("--class", help="Only this explained class (an id).")
    ] = None,
    size: Annotated[int, typer.Option("--size", min=1, help="Side of the shrunk maps.")] = 16,
    features: Annotated[
        str,
        typer.Option(
            "--features",
            help="maps (the paper's), sorted (position-free), channels (LRP relevance per "
            "channel, stored by 'attribute --method lrp --option relevance_layer=LAYER') or "
            "peaks (each channel's largest windowed relevance, stored by the same with "
            "--option relevance_pool=peak [--option relevance_window=3]).",
        ),
    ] = "maps",
    neighbours: Annotated[
        int, typer.Option("--neighbours", min=1, help="k of the nearest-neighbour graph.")
    ] = 10,
    max_clusters: Annotated[
        int, typer.Option("--max-clusters", min=2, help="Largest count the eigengap picks.")
    ] = 10,
    null_draws: Annotated[
        int,
        typer.Option(
            "--null-draws",
            min=0,
            help="Compare the top cluster's score with this many one-cloud data sets of the "
            "features' mean and covariance (Gaussian; logistic normal for --features peaks; "
            "99: 'stands apart' when p <= 0.01); adds p_value and stands_apart per class. "
            "0: no test.",
        ),
    ] = 0,
    atlas: Annotated[
        bool,
        typer.Option(
            "--atlas/--no-atlas",
            help="Also write OUT/spray/: per class a t-SNE map of the maps and a page with "
            "each cluster's mean map and exemplars (open OUT/spray/index.html, or "
            "'convlens serve --atlas OUT/spray').",
        ),
    ] = True,
    json_: JsonOption = False,
    force: ForceOption = False,
    device: DeviceOption = "cpu",
) -> None:
    """SpRAy (Lapuschkin et al. 2019): per explained class, spectral clustering of the maps
    of 'convlens attribute DATA --out DIR' (count by the eigengap), clusters ranked by mean
    silhouette (the first stands apart most); it runs on the CPU (--device is only
    checked). Writes OUT/spray.json: {"classes": [{"class", "clusters": [{"id", "size",
    "members", "score"}], "membership": [{"source", "membership"}]}]} (membership: how
    firmly each image belongs to the top cluster, firmest first; with --null-draws also
    "p_value" and "stands_apart" per class), and the atlas pages in OUT/spray/."""
    from pathlib import Path

    from convlens.concepts.spray import spray_classes
    from convlens.files import check_writable, write_json, writing

    folder = Path(out or maps)
    check_writable(folder / "spray.json", force)
    if atlas:
        check_writable(folder / "spray" / "index.html", force)
    classes, skipped = spray_classes(
        maps,
        target,
        size=size,
        features=features,
        neighbours=neighbours,
        max_clusters=max_clusters,
        null_draws=null_draws,
    )
    document = {"classes": [entry.record for entry in classes], "skipped": skipped}
    if atlas and classes:  # every page and picture, before the first file is written
        from convlens.files import check_folder
        from convlens.report.atlas import spray_atlas_names

        check_folder(folder / "spray", spray_atlas_names(classes), force)
    with writing(folder, "spray", force=force):
        write_json(folder / "spray.json", document)
        if atlas and classes:
            from convlens.report.atlas import write_spray_atlas, write_spray_pictures

            pictures = write_spray_pictures(folder / "spray", classes)
            write_spray_atlas(folder / "spray", document, pictures, "convlens spray")
    if json_:
        _echo_json(document)
        return
    for entry in document["classes"]:
        name = entry["class_name"] or entry["class"]
        sizes = ", ".join(f"{c['size']} ({c['score']:.2f})" for c in entry["clusters"])
        test = ""
        if "p_value" in entry:
            verdict = "stands apart" if entry["stands_apart"] else "none stands apart"
            test = f"; top cluster p = {entry['p_value']:.2g} ({verdict})"
        typer.echo(f"{name}: {entry['count']} maps, clusters (size, score): {sizes}{test}")
    for entry in document["skipped"]:
        typer.echo(f"class {entry['class']} skipped: {entry['message']}", err=True)
    typer.echo(f"-> {folder / 'spray.json'}")
    if atlas and classes:
        typer.echo(f"-> {folder / 'spray' / 'index.html'}")


@app.command("concepts")
def concepts_command(
    data: Annotated[
        str,
        typer.Argument(
            help="The class's images: a folder, an ImageFolder tree, a .txt list, shapes:N, "
            "scenes:N; add @CLASS to keep one label's images (scenes:200@circle)."
        ),
    ],
    target: Annotated[str, typer.Option("--class", help="The class explained (id or name).")],
    layer: Annotated[
        str, typer.Option("--layer", help="A layer with non-negative outputs (after a ReLU).")
    ],
    out: OutFolderOption,
    model: ModelOption = DEFAULT_MODEL,
    top: Annotated[
        int, typer.Option("--top", min=1, help="How many concepts (k of the factorisation).")
    ] = 10,
    k_alias: TopAliasOption = None,
    importance: Annotated[
        str, typer.Option("--importance", help="sobol (the paper's) or occlusion.")
    ] = "sobol",
    crop: Annotated[
        float, typer.Option("--crop", min=0.01, max=1.0, help="Crop side / image side.")
    ] = 0.5,
    crops: Annotated[int, typer.Option("--crops", min=1, help="Random crops per image.")] = 8,
    designs: Annotated[int, typer.Option("--designs", min=2, help="Sobol points per image.")] = 32,
    best: Annotated[int, typer.Option("--best", min=1, help="Best crops kept per concept.")] = 8,
    show: Annotated[
        str | None,
        typer.Option("--show", help="Images the page draws the maps on (default: DATA)."),
    ] = None,
    examples: Annotated[
        int, typer.Option("--examples", min=1, help="How many images the maps are drawn on.")
    ] = 6,
    seed: Annotated[int, typer.Option("--seed", help="Seeds crops, NMF and Sobol points.")] = 0,
    json_: JsonOption = False,
    force: ForceOption = False,
    device: DeviceOption = "cpu",
    trust_pickle: TrustPickleOption = False,
    batch_size: BatchOption = 32,
) -> None:
    """CRAFT (Fel et al. 2023): non-negative factorisation of --layer's activations over
    random crops of DATA gives --top concepts; each concept's importance to --class (Sobol
    total indices, or the logit drop when it is removed), its best crops and its map.
    Writes OUT/concepts.json ({"class", "layer", "concepts": [{"id", "importance",
    "best_crops": [{"source", "box", "coefficient"}]}]}, boxes in pixels of the model
    input) and the atlas page OUT/index.html."""
    from pathlib import Path

    from convlens.concepts.craft import IMPORTANCES, concept_maps, craft
    from convlens.concepts.sets import image_set
    from convlens.files import check_folder, write_json, writing
    from convlens.models import load_model
    from convlens.report.concepts import concepts_page, write_concepts_atlas

    check_choice(importance, IMPORTANCES, "--importance")
    folder = check_folder(out, ("concepts.json", "index.html"), force)
    loaded = load_model(model, trust_pickle=trust_pickle)
    images = image_set(data, loaded.preprocess)
    result = craft(
        loaded,
        images,
        int(target) if target.isdigit() else target,
        layer,
        concepts=k_alias or top,
        crop=crop,
        crops_per_image=crops,
        importance=importance,
        designs=designs,
        best=best,
        batch_size=batch_size,
        device=device,
        seed=seed,
    )
    shown = image_set(show, loaded.preprocess) if show else images
    shown_images, shown_sources = shown.images[:examples], shown.sources[:examples]
    maps = concept_maps(loaded, shown_images, result, batch_size=batch_size, device=device)
    record = result.record() | {"model": loaded.name, "maps_on": shown_sources}
    page = concepts_page(
        result,
        loaded.preprocess.denormalize(images.images),
        loaded.preprocess.denormalize(shown_images),
        maps,
        shown_sources,
        loaded.name,
    )
    with writing(folder, "concepts", force=force):
        write_json(Path(folder) / "concepts.json", record)
        write_concepts_atlas(folder, page)
    if json_:
        _echo_json(record)
        return
    for concept in record["concepts"]:
        first = concept["best_crops"][0]
        typer.echo(
            f"concept {concept['id']}: importance {concept['importance']:.3g}, best crop "
            f"{first['source']} {first['box']}"
        )
    typer.echo(f"-> {Path(folder) / 'concepts.json'}, {Path(folder) / 'index.html'}")


@app.command("dissect")
def dissect_command(
    layer: Annotated[
        list[str], typer.Option("--layer", help="Layer to dissect (repeat, or comma separated).")
    ],
    out: OutFolderOption,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", help="scenes[:N] or scenes-test[:N] (default scenes-test:1000, held out)."
        ),
    ] = None,
    label_maps: Annotated[
        str | None,
        typer.Option(
            "--label-maps",
            help="Instead of --data: a folder with classes.txt, images/ and labels/ (one "
            "integer label per pixel, a PNG per image).",
        ),
    ] = None,
    model: ModelOption = DEFAULT_MODEL,
    quantile: Annotated[
        float, typer.Option("--quantile", help="Top share of a channel's activations that is on.")
    ] = 0.005,
    iou_threshold: Annotated[
        float, typer.Option("--iou-threshold", help="A channel with a larger IoU is a detector.")
    ] = 0.04,
    control: Annotated[
        bool,
        typer.Option("--control/--no-control", help="Also dissect the model with random weights."),
    ] = True,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random weights.")] = 0,
    json_: JsonOption = False,
    device: DeviceOption = "cpu",
    trust_pickle: TrustPickleOption = False,
    batch_size: BatchOption = 32,
    force: ForceOption = False,
) -> None:
    """Network dissection (Bau et al. 2017): each channel of each --layer, thresholded at its
    top --quantile over the data set and upsampled, is scored by IoU against every concept
    mask (the scenes' six shapes, four fills and seven colour bands, or the classes of
    --label-maps); its label is the best concept. Writes OUT/<layer>/dissect.json
    ({"channels": [{"channel", "concept", "iou"}], "unique_detectors", ...}, with the same
    for the architecture with random weights under "control") and prints a table."""
    from convlens.concepts.dissect import DEFAULT_DATA, RESULT_FILE, dissect, save_dissections
    from convlens.files import check_folder, writing
    from convlens.models import load_model

    if data is not None and label_maps is not None:
        raise typer.BadParameter("pass --data or --label-maps, not both", param_hint="--label-maps")
    check_share(quantile, "--quantile")
    check_share(iou_threshold, "--iou-threshold", closed=True)
    check_folder(out, (), force)
    layers = [name.strip() for entry in layer for name in entry.split(",") if name.strip()]
    results = dissect(
        load_model(model, trust_pickle=trust_pickle),
        layers,
        label_maps or data or DEFAULT_DATA,
        quantile=quantile,
        iou_threshold=iou_threshold,
        control=control,
        seed=seed,
        batch_size=batch_size,
        device=device,
    )
    with writing(out, "dissect", force=force):
        paths = save_dissections(results, out)
    skipped = results[0].skipped
    if json_:
        _echo_json([r.record() for r in results])
    else:
        _print_dissections(results)
        typer.echo(f"-> {out}/<layer>/{RESULT_FILE} ({len(paths)} files)")
    _report_skipped(skipped)
    if skipped:
        raise typer.Exit(1)


def _print_dissections(results) -> None:
    """One row per layer and weights: unique detectors, detectors, mean and max IoU, and
    the most frequent detector concepts."""
    rows = [("layer", "weights", "unique", "detectors", "mean IoU", "max IoU", "concepts")]
    for result in results:
        for run in (result, result.control) if result.control is not None else (result,):
            summary = run.summary()
            top = list(summary["detector_concepts"].items())[:4]
            rows.append(
                (
                    run.layer,
                    run.weights,
                    str(summary["unique_detectors"]),
                    f"{summary['detectors']}/{len(run.thresholds)}",
                    f"{summary['mean_iou']:.3f}",
                    f"{summary['max_iou']:.3f}",
                    ", ".join(f"{name} {count}" for name, count in top) or "-",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        typer.echo(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        )
