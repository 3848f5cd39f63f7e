"""Files of a scan: per layer ``DIR/<layer>/topk.json`` and one PNG per channel in Zeiler &
Fergus's layout, and ``DIR/scan.json`` (layers, images scanned, files skipped).

``topk.json``: ``{"layer", "k", "by", "channels": [{"channel": c, "top": [{"source",
"value", "y", "x", "box": [x0, y0, x1, y1]}, ...]}, ...]}``; ``box`` is the unit's receptive
field in the preprocessed input, x1/y1 exclusive (it may reach outside the image, where
the patch is grey).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convlens.data.datasets import ScanDataset
from convlens.data.progress import Progress
from convlens.errors import ImageLoadError
from convlens.files import flush_ledgers, keep_output, ledger_entries, owned, write_json
from convlens.render.images import save_png
from convlens.render.scans import thumbnail_map, top_units_panel
from convlens.scan.distributed import barrier, rank_and_world
from convlens.scan.embed import Embeddings
from convlens.scan.knn import map_2d
from convlens.scan.topk import LayerTop, TopActivations

SCAN_FILE = "scan.json"


def layer_json(top: LayerTop) -> dict:
    """The ``topk.json`` document of one layer."""
    return {
        "layer": top.layer,
        "k": top.k,
        "by": top.by,
        "channels": [
            {
                "channel": c,
                "top": [
                    {"source": u.source, "value": u.value, "y": u.y, "x": u.x, "box": list(u.box)}
                    for u in units
                ],
            }
            for c, units in enumerate(top.channels)
        ],
    }


def channel_png_name(channel: int) -> str:
    return f"channel-{channel:04d}.png"


def write_scan(
    result: TopActivations,
    out: str | Path,
    rule: str | None = "deconvnet",
    progress=False,
    resume: bool = False,
) -> Path:
    """Write every layer's ``topk.json`` and channel panels (projections by ``rule`` beside
    the patches; patches alone when ``rule`` is None or was not computed) and
    ``scan.json`` under ``out``. Under torchrun every rank calls this: each draws every
    N-th channel and rank 0 writes the JSON files. ``progress``: a tqdm bar of channels
    per layer (rank 0). ``resume``: a channel picture already in ``out`` is kept, not
    drawn again, when convlens wrote it unchanged (`convlens.files.owned`) for the same
    top units and projection (`drawn_channels`). Returns ``out``."""
    out = Path(out)
    rank, world = rank_and_world()
    rules = (rule,) if rule in result.views.rules else ()
    projection = rules[0] if rules else None
    work = {}
    for name, top in result.layers.items():
        folder = out / name
        document = layer_json(top)
        drawn = drawn_channels(folder, document, projection) if resume else set()
        if rank == 0:
            for c in drawn:
                keep_output(folder / channel_png_name(c))
            write_json(folder / "topk.json", document, indent=1)
        todo = [c for c, units in enumerate(top.channels) if units and c not in drawn]
        work[name] = todo[rank::world]
    painter = _ChannelPainter(result, out, projection, progress and rank == 0)
    # The first group of each layer is timed before the rest: the run-time estimate.
    firsts = {name: mine[: painter.first_group(name, mine)] for name, mine in work.items()}
    timed = {name: painter.draw(name, firsts[name], total=len(work[name])) for name in work}
    if progress and rank == 0:
        print_estimate(timed, firsts, work)
    for name, mine in work.items():
        painter.draw(name, mine[len(firsts[name]) :], done=len(firsts[name]), total=len(mine))
    if rank == 0:
        summary = {
            "layers": list(result.layers),
            "scanned": result.scanned,
            "skipped": [{"source": s, "message": m} for s, m in result.errors],
            "projection": projection,
        }
        write_json(out / SCAN_FILE, summary, indent=1)
    flush_ledgers()  # every rank's files are in the ledgers before rank 0's stale sweep
    barrier()
    return out


ESTIMATE_UNITS = 110  # projected units per layer timed for the run-time estimate


class _ChannelPainter:
    """Draws channel panels of a scan (projections by ``projection`` beside the patches)
    into ``out/<layer>/``, with a tqdm bar per layer when ``progress``."""

    def __init__(self, result: TopActivations, out: Path, projection, progress: bool) -> None:
        self.result, self.out, self.projection, self.progress = result, out, projection, progress

    def first_group(self, layer: str, channels: list[int]) -> int:
        """How many of ``channels`` make the layer's first group of projections: a group
        (`convlens.scan.patches.UnitViews.group_units`) of at most `ESTIMATE_UNITS` units,
        so the estimate comes early (later, larger groups share more forward passes: the
        estimate errs long)."""
        tops = self.result.layers[layer].channels
        if not channels or self.projection is None:
            return min(1, len(channels))
        limit = min(self.result.views.group_units(tops[channels[0]][0]), ESTIMATE_UNITS)
        units = 0
        for count, c in enumerate(channels, 1):
            units += len(tops[c])
            if units >= limit:
                return count
        return len(channels)

    def draw(self, layer: str, channels: list[int], done: int = 0, total=None) -> float:
        """Draw ``channels`` of ``layer``; returns the seconds it took."""
        start = time.perf_counter()
        top = self.result.layers[layer]
        views = self.result.channel_views(layer, channels)
        total = total or len(channels)
        last = done + len(channels) >= total  # the timed first group's bar is not kept
        with Progress(
            total, initial=done, desc=layer, leave=last, disable=not self.progress or not channels
        ) as counter:
            for view in views:
                title = f"{layer} channel {view.channel}: top {len(view.units)} by {top.by}"
                shown = view.projections[self.projection] if self.projection else None
                panel = top_units_panel(view.patches, shown, title, inside=view.inside)
                save_png(panel, self.out / layer / channel_png_name(view.channel))
                counter.update()
        return time.perf_counter() - start


ESTIMATE_SECONDS = 30.0  # a second pass expected to take longer than this is announced


def print_estimate(timed: dict, firsts: dict, work: dict) -> float:
    """One line on stderr before the rest of a long second pass: the channel pictures left
    and the time they should take at the pace of each layer's first group (``timed``
    seconds for the ``firsts`` channels of ``work``). Returns the estimate in seconds."""
    left = {name: len(work[name]) - len(firsts[name]) for name in work}
    seconds = sum(timed[name] / len(firsts[name]) * left[name] for name in work if firsts[name])
    if seconds > ESTIMATE_SECONDS:
        print(
            f"scan: {sum(left.values())} more channel pictures in {len(work)} "
            f"layer{'s' if len(work) > 1 else ''}, "
            f"about {_duration(seconds)} at the pace of the first "
            f"{sum(len(f) for f in firsts.values())}",
            file=sys.stderr,
        )
    return seconds


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def drawn_channels(folder: Path, document: dict, projection: str | None) -> set[int]:
    """The channels whose picture in ``folder`` (a layer of an earlier scan) shows exactly
    what this scan would draw: the earlier ``topk.json`` and ``scan.json`` were written by
    convlens, unchanged, with the same top units (``document``) and ``projection``, and
    the picture is convlens's, unchanged."""
    earlier_top, earlier_scan = folder / "topk.json", folder.parent / SCAN_FILE
    if not (owned(earlier_top) and owned(earlier_scan)):
        return set()
    try:
        same = json.loads(earlier_top.read_text()) == document
        same = same and json.loads(earlier_scan.read_text()).get("projection") == projection
    except (OSError, ValueError):
        return set()
    if not same:
        return set()
    entries = ledger_entries(folder)  # read once, not once per channel
    return {
        entry["channel"]
        for entry in document["channels"]
        if entry["top"] and owned(folder / channel_png_name(entry["channel"]), entries)
    }


def thumbnails(dataset: ScanDataset, sources: list[str], size: int = 48) -> list[np.ndarray]:
    """``uint8[size, size, 3]`` thumbnails of the items named ``sources`` (grey when an
    item cannot be read any more)."""
    position = {source: i for i, source in enumerate(dataset.sources)}
    tiles = []
    for source in sources:
        try:
            display = dataset.display(position[source])
            tiles.append(np.asarray(Image.fromarray(display).resize((size, size))))
        except (ImageLoadError, KeyError):
            tiles.append(np.full((size, size, 3), 128, np.uint8))
    return tiles


def write_embedding(
    embeddings: Embeddings,
    dataset: ScanDataset,
    out: str | Path,
    method: str | None = "auto",
    max_points: int = 3000,
) -> Path | None:
    """Save ``embeddings`` under ``out`` and, unless ``method`` is None, its 2-D map drawn as
    thumbnails coloured by label (``map.png``; at most ``max_points`` items, evenly spaced
    rows). Returns the map's path (None without one)."""
    embeddings.save(out)
    if method is None:
        return None
    rows = np.linspace(0, len(embeddings.sources) - 1, min(max_points, len(embeddings.sources)))
    rows = np.unique(rows.round().astype(int))
    points = map_2d(embeddings.vectors[torch.from_numpy(rows)], method)
    picture = thumbnail_map(
        points,
        thumbnails(dataset, [embeddings.sources[r] for r in rows]),
        [embeddings.labels[r] for r in rows],
        embeddings.classes,
    )
    return save_png(picture, Path(out) / "map.png")
