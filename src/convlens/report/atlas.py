"""Static atlas pages of a scan folder, built with the standard library from the files the
scan wrote (``scan.json``, ``<layer>/topk.json``, the PNGs): no script from elsewhere, no
CDN, images by relative path, so the folder can be copied or served as it is.

- `write_scan_atlas`: ``DIR/index.html`` with a menu of layers and, per layer, every
  channel's panel (projections beside patches) with its top sources and values.
- `write_embedding_atlas`: ``DIR/index.html`` with the 2-D map and the table of items.
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
