"""Static atlas pages of a scan folder, built with the standard library from the files the
scan wrote (``scan.json``, ``<layer>/topk.json``, the PNGs): no script from elsewhere, no
CDN, images by relative path, so the folder can be copied or served as it is.

- `write_scan_atlas`: ``DIR/index.html`` with a menu of layers and, per layer, every
  channel's panel (projections beside patches) with its top sources and values.
- `write_embedding_atlas`: ``DIR/index.html`` with the 2-D map and the table of items.
- `write_spray_atlas`: SpRAy's pages, ``class-<c>.html`` per class and ``index.html``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from convlens.files import write_text

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; color: #222; margin: 0; display: flex; }
nav { position: sticky; top: 0; height: 100vh; overflow-y: auto; min-width: 12rem;
  background: #f4f4f4; border-right: 1px solid #ddd; padding: .8rem; box-sizing: border-box; }
nav a { display: block; text-decoration: none; padding: .15rem 0; }
main { padding: 1rem 1.5rem; flex: 1; }
section { margin-bottom: 2.5rem; } h2 { border-bottom: 2px solid #ddd; }
figure { display: inline-block; vertical-align: top; margin: .3rem .5rem .8rem 0; }
figure img { border: 1px solid #ccc; max-width: 100%; }
figcaption { font-size: .8rem; color: #555; max-width: 28rem; overflow-wrap: anywhere; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .15rem .5rem; }
.note { color: #666; }
"""


def _page(title: str, menu: list[tuple[str, str]], body: str) -> str:
    links = "".join(f'<a href="#{html.escape(a)}">{html.escape(t)}</a>' for a, t in menu)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><nav><strong>{html.escape(title)}</strong>{links}</nav>"
        f"<main><h1>{html.escape(title)}</h1>\n{body}\n</main></body></html>\n"
    )


def _anchor(name: str) -> str:
    return "layer-" + "".join(ch if ch.isalnum() else "-" for ch in name)


def _channel_figure(layer: str, channel: dict, png_name: str, folder: Path) -> str:
    top = channel["top"]
    sources = ", ".join(f"{Path(u['source']).name} ({u['value']:.3g})" for u in top[:3])
    more = f" and {len(top) - 3} more" if len(top) > 3 else ""
    caption = f"channel {channel['channel']}: {sources}{more}"
    src = f"{layer}/{png_name}"
    if not (folder / src).is_file():
        return f'<p class="note">{html.escape(caption)} (no panel)</p>'
    return (
        f'<figure id="{html.escape(_anchor(layer))}-c{channel["channel"]}">'
        f'<img src="{html.escape(src)}" alt="{html.escape(layer)} channel {channel["channel"]}"'
        f' loading="lazy"><figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def write_scan_atlas(folder: str | Path, title: str = "convlens scan") -> Path:
    """``folder/index.html`` for a scan folder written by `convlens.scan.output.write_scan`."""
    folder = Path(folder)
    summary = json.loads((folder / "scan.json").read_text())
    sections, menu, counts = [], [], []
    for layer in summary["layers"]:
        doc = json.loads((folder / layer / "topk.json").read_text())
        counts.append(f"{layer} ({len(doc['channels'])} channels)")
        figures = "".join(
            _channel_figure(layer, channel, f"channel-{channel['channel']:04d}.png", folder)
            for channel in doc["channels"]
        )
        note = (
            f"{len(doc['channels'])} channels; top {doc['k']} images per channel by "
            f"{doc['by']}; left: {summary.get('projection') or 'no'} projections, right: "
            "receptive-field patches (grey outside the image)"
        )
        sections.append(
            f'<section id="{_anchor(layer)}"><h2>{html.escape(layer)}</h2>'
            f'<p class="note">{html.escape(note)}</p>{figures}</section>'
        )
        menu.append((_anchor(layer), layer))
    skipped = summary.get("skipped", [])
    intro = (
        f"<p>{summary['scanned']} images scanned; {len(skipped)} skipped.</p>"
        f'<p class="layers">Layers scanned: {html.escape(", ".join(counts))}. Other layers: '
        "<code>convlens scan --layers L1,L2</code> (<code>convlens layers</code> lists "
        "them).</p>"
    )
    if skipped:
        rows = "".join(
            f"<tr><td>{html.escape(s['source'])}</td><td>{html.escape(s['message'])}</td></tr>"
            for s in skipped[:50]
        )
        intro += f"<table><tr><th>skipped</th><th>why</th></tr>{rows}</table>"
    return write_text(folder / "index.html", _page(title, menu, intro + "\n".join(sections)))


def write_embedding_atlas(folder: str | Path, map_png: str | None, title: str) -> Path:
    """``folder/index.html`` for an embedding folder (``index.json``, the map PNG)."""
    folder = Path(folder)
    index = json.loads((folder / "index.json").read_text())
    classes = index.get("classes") or []
    body = [
        f"<p>{len(index['sources'])} items; features of layer "
        f"<code>{html.escape(str(index['layer']))}</code> ({index['dim']} values each) of "
        f"model <code>{html.escape(index['model'])}</code>.</p>"
    ]
    if map_png:
        body.append(
            f'<section id="map"><h2>Map</h2><img src="{html.escape(map_png)}" '
            'alt="2-D map of the embeddings"></section>'
        )
    rows = "".join(
        f"<tr><td>{i}</td><td>{html.escape(source)}</td><td>{html.escape(_label(label, classes))}"
        "</td></tr>"
        for i, (source, label) in enumerate(zip(index["sources"], index["labels"], strict=True))
    )
    body.append(
        '<section id="items"><h2>Items</h2><table><tr><th>row</th><th>source</th>'
        f"<th>label</th></tr>{rows}</table></section>"
    )
    menu = [("map", "Map"), ("items", "Items")] if map_png else [("items", "Items")]
    return write_text(folder / "index.html", _page(title, menu, "\n".join(body)))


def _label(label: int, classes: list[str]) -> str:
    if label < 0:
        return ""
    return classes[label] if label < len(classes) else str(label)


def write_spray_atlas(folder: str | Path, document: dict, pictures: dict, title: str) -> Path:
    """SpRAy's atlas in ``folder``: ``class-<c>.html`` per class (its t-SNE map, then per
    cluster its score, its picture of the mean map and exemplars, and its members) and
    ``index.html`` listing the classes. ``document``: ``spray.json``'s content;
    ``pictures``: ``{class: {"map": PNG name or None, "clusters": [PNG name per cluster]}}``,
    names relative to ``folder``. Returns the index page."""
    folder = Path(folder)
    rows = []
    for entry in document["classes"]:
        name = _class_title(entry)
        page = _spray_page_name(entry["class"])
        write_text(folder / page, _spray_class_page(entry, pictures[entry["class"]], title))
        top = entry["clusters"][0]
        rows.append(
            f'<tr><td><a href="{html.escape(page)}">{html.escape(name)}</a></td>'
            f"<td>{entry['count']}</td><td>{len(entry['clusters'])}</td>"
            f"<td>{top['size']}</td><td>{top['score']:.3f}</td>"
            f"<td>{entry['eigengap']:.3f}</td></tr>"
        )
    skipped = "".join(
        f"<li>class {html.escape(str(s['class']))}: {html.escape(s['message'])}</li>"
        for s in document.get("skipped", [])
    )
    body = (
        "<p>SpRAy (Lapuschkin et al. 2019): per class, spectral clustering of the maps; "
        "clusters ranked by the mean silhouette of their members (cluster 0 stands apart "
        "most).</p><table><tr><th>class</th><th>maps</th><th>clusters</th>"
        f"<th>top cluster size</th><th>top score</th><th>eigengap</th></tr>{''.join(rows)}"
        "</table>" + (f"<h2>Skipped</h2><ul>{skipped}</ul>" if skipped else "")
    )
    return write_text(folder / "index.html", _page(title, [], body))


def _class_title(entry: dict) -> str:
    name = entry.get("class_name")
    return f"{entry['class']} ({name})" if name else str(entry["class"])


def _spray_class_page(entry: dict, pictures: dict, title: str) -> str:
    sections, menu = [], []
    if pictures.get("map"):
        menu.append(("map", "t-SNE map"))
        sections.append(
            f'<section id="map"><h2>t-SNE map</h2><p class="note">Each map at its t-SNE '
            "position (openTSNE) of the features SpRAy clustered, framed in its cluster's "
            f'colour.</p><img src="{html.escape(pictures["map"])}" alt="t-SNE map"></section>'
        )
    for cluster, png in zip(entry["clusters"], pictures["clusters"], strict=True):
        anchor = f"cluster-{cluster['id']}"
        menu.append((anchor, f"cluster {cluster['id']} ({cluster['size']})"))
        members = ", ".join(html.escape(str(m)) for m in cluster["members"][:100])
        more = f" and {cluster['size'] - 100} more" if cluster["size"] > 100 else ""
        sections.append(
            f'<section id="{anchor}"><h2>Cluster {cluster["id"]}</h2>'
            f"<p>{cluster['size']} maps, score (mean silhouette) {cluster['score']:.3f}.</p>"
            f'<figure><img src="{html.escape(png)}" alt="mean map and exemplars of cluster '
            f'{cluster["id"]}"><figcaption>left: the mean map; then the members nearest the '
            "cluster's mean features</figcaption></figure>"
            f'<p class="note">members: {members}{more}</p></section>'
        )
    if entry.get("membership"):
        firmest = ", ".join(
            f"{html.escape(str(row['source']))} ({row['membership']:.2f})"
            for row in entry["membership"][:20]
        )
        sections.append(
            '<section id="membership"><h2>Firmest in cluster 0</h2><p class="note">The images '
            "nearest the top-ranked cluster relative to the others (membership: a member's "
            f"silhouette), firmest first: {firmest}.</p></section>"
        )
    heading = f"{title}: class {_class_title(entry)}"
    body = (
        f'<p><a href="index.html">all classes</a> &middot; {entry["count"]} maps, '
        f"{len(entry['clusters'])} clusters, eigengap {entry['eigengap']:.3f}.</p>"
        + "\n".join(sections)
    )
    return _page(heading, menu, body)


def write_spray_pictures(folder: str | Path, classes: list, seed: int = 0) -> dict:
    """Save each `convlens.concepts.spray.SprayClass`'s pictures
    (`convlens.concepts.spray_atlas`) in ``folder``: ``class-<c>-map.png`` (the t-SNE map;
    none for fewer than 5 maps) and ``class-<c>-cluster-<k>.png``. Returns the ``pictures``
    of `write_spray_atlas`."""
    from convlens.concepts.spray_atlas import class_map_picture, cluster_picture
    from convlens.render.images import save_png

    folder = Path(folder)
    pictures = {}
    for entry in classes:
        c = entry.record["class"]
        picture = class_map_picture(entry, seed)
        map_name = None
        if picture is not None:
            map_name = _spray_map_name(c)
            save_png(picture, folder / map_name)
        names = []
        for cluster in entry.result.clusters:
            names.append(_spray_cluster_name(c, cluster.id))
            save_png(cluster_picture(entry, cluster), folder / names[-1])
        pictures[c] = {"map": map_name, "clusters": names}
    return pictures


def spray_atlas_names(classes: list) -> list[str]:
    """Every file `write_spray_pictures` and `write_spray_atlas` may write for ``classes``
    (`convlens.concepts.spray.SprayClass`), relative to the atlas folder: what a command
    checks before it writes any of them."""
    names = ["index.html"]
    for entry in classes:
        c = entry.record["class"]
        names += [_spray_page_name(c), _spray_map_name(c)]
        names += [_spray_cluster_name(c, cluster.id) for cluster in entry.result.clusters]
    return names


def _spray_page_name(c) -> str:
    return f"class-{c}.html"


def _spray_map_name(c) -> str:
    return f"class-{c}-map.png"


def _spray_cluster_name(c, cluster: int) -> str:
    return f"class-{c}-cluster-{cluster}.png"
