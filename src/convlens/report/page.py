"""A self-contained HTML page: sections with anchors, a table of contents, figures inlined as
PNG data URIs, tables, and CSS that also prints (no script, no font, no network request)."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

from convlens.render.images import png_data_uri
from convlens.report.views import ColourScale

STYLE = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
  max-width: 1500px; margin: 0 auto; padding: 1.5rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { border-bottom: 2px solid #ddd;
  padding-bottom: .2rem; margin-top: 2.5rem; } h3 { margin-top: 1.6rem; }
.meta { color: #555; margin-top: 0; }
nav.toc { background: #f6f6f6; border: 1px solid #ddd; padding: .6rem 1.2rem; }
nav.toc ul { margin: .2rem 0; padding-left: 1.2rem; } nav.toc a { text-decoration: none; }
figure { display: inline-block; vertical-align: top; margin: .4rem .6rem .8rem 0;
  max-width: 100%; break-inside: avoid; page-break-inside: avoid; }
figure img { max-width: 100%; height: auto; border: 1px solid #ccc; image-rendering: auto; }
figcaption { font-size: .85rem; color: #444; max-width: 32rem; }
figure.wide figcaption { max-width: none; }
div.grid { display: grid; grid-template-columns: repeat(var(--columns), minmax(0, 1fr));
  gap: .4rem 1rem; align-items: start; }
div.grid figure { display: block; margin: .4rem 0 .8rem; }
div.grid figure img.map { width: 100%; }
figure img.bar { display: block; width: 256px; max-width: 100%; border: none; margin-top: .2rem; }
table { border-collapse: collapse; margin: .5rem 0; break-inside: avoid; }
th, td { border: 1px solid #ccc; padding: .2rem .6rem; text-align: left; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #666; font-size: .9rem; }
a.anchor { color: #bbb; text-decoration: none; margin-left: .3rem; font-weight: normal; }
@media print {
  body { max-width: none; padding: 0; font-size: 11pt; }
  nav.toc { break-after: page; } a { color: inherit; } a.anchor { display: none; }
  h2 { break-before: page; } h2, h3 { break-after: avoid; }
  figure img { border: none; }
}
"""


@dataclass
class Section:
    """A heading (``level`` 2 or 3) with an ``anchor`` id and HTML ``blocks`` under it."""

    title: str
    anchor: str
    level: int = 2
    blocks: list[str] = field(default_factory=list)


PAGE_TOP = "top"  # the id of the page's heading


def anchor_id(*parts: str) -> str:
    """A stable, URL-safe anchor from words (``"cat", "Grad-CAM"`` -> ``"cat-grad-cam"``)."""
    text = "-".join(parts).lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "section"


def figure(
    image,
    caption: str,
    alt: str | None = None,
    wide: bool = False,
    scale: ColourScale | None = None,
) -> str:
    """``<figure>`` with ``image`` (``uint8[H, W, 3]``) inlined as a PNG data URI and a
    caption that says what it shows. With ``scale`` (a `ColourScale`: the image is a map)
    its colour bar follows the image and the caption ends with the raw values it spans."""
    css = ' class="wide"' if wide else ""
    picture = f'<img src="{png_data_uri(image)}" alt="{html.escape(alt or caption)}"'
    if scale is not None:
        picture += ' class="map">'
        picture += f'<img class="bar" src="{png_data_uri(scale.bar())}" alt="colour scale">'
        caption = f"{caption}; {scale.text()}"
    else:
        picture += ">"
    return f"<figure{css}>{picture}<figcaption>{html.escape(caption)}</figcaption></figure>"


def grid(figures: list[str], columns: int) -> str:
    """``figures`` in a grid of ``columns`` equal columns (rows never wrap unevenly)."""
    return f'<div class="grid" style="--columns: {columns}">{"".join(figures)}</div>'


def table(headers: list[str], rows: list[list[object]], caption: str | None = None) -> str:
    """An HTML table; numbers are right-aligned and floats shown with 4 significant digits."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def paragraph(text: str, note: bool = False) -> str:
    """A paragraph of plain text (escaped); ``note`` sets it in small grey type."""
    css = ' class="note"' if note else ""
    return f"<p{css}>{html.escape(text)}</p>"


def page_html(title: str, meta: str, sections: list[Section]) -> str:
    """The whole page: title, ``meta`` line, table of contents, then every section."""
    toc = _table_of_contents(sections)
    body = "\n".join(_section_html(section) for section in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
        f'<h1 id="{PAGE_TOP}">{html.escape(title)}</h1><p class="meta">{html.escape(meta)}</p>\n'
        f'<nav class="toc" aria-label="Contents"><strong>Contents</strong>{toc}</nav>\n'
        f"{body}\n</body></html>\n"
    )


def _section_html(section: Section) -> str:
    level, anchor = section.level, html.escape(section.anchor)
    heading = (
        f'<h{level} id="{anchor}">{html.escape(section.title)}'
        f'<a class="anchor" href="#{anchor}" aria-label="link to this section">#</a></h{level}>'
    )
    return heading + "\n" + "\n".join(section.blocks)


def _table_of_contents(sections: list[Section]) -> str:
    """Nested lists: each level-3 section under the level-2 section before it."""
    groups: list[tuple[Section, list[Section]]] = []
    for section in sections:
        if section.level == 3 and groups:
            groups[-1][1].append(section)
        else:
            groups.append((section, []))
    items = []
    for top, subs in groups:
        inner = "".join(f"<li>{_link(sub)}</li>" for sub in subs)
        items.append(f"<li>{_link(top)}" + (f"<ul>{inner}</ul>" if inner else "") + "</li>")
    return "<ul>" + "".join(items) + "</ul>"


def _link(section: Section) -> str:
    return f'<a href="#{html.escape(section.anchor)}">{html.escape(section.title)}</a>'
