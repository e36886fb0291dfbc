"""The report page: one self-contained HTML document (styles and script inline, PNGs beside it)."""

from __future__ import annotations

import html
from collections.abc import Sequence

from fusion_core.formatting import format_value

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
     color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav{margin:.5em 0 1.5em} nav a{margin-right:1em;color:#0645ad}
table{border-collapse:collapse;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;font-size:.92em;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:.6em 0;border:1px solid #eee}
.missing{color:#888;font-style:italic} .note{color:#555;font-size:.92em}
.flag{color:#b00020;font-weight:bold}
.grid{display:flex;flex-wrap:wrap;gap:.6em} figure{margin:0;width:150px;font-size:.78em;word-break:break-all}
figure img{width:96px;height:96px;image-rendering:pixelated;margin:0}
"""
# Sets data-images-loaded / data-images-total on <body> once every image has loaded or failed.
SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) { if (images[i].naturalWidth > 0) loaded++; }
  document.body.dataset.imagesLoaded = loaded;
  document.body.dataset.imagesTotal = images.length;
});
"""


def html_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """An HTML table with escaped cells; numbers are right-aligned; an all-empty header is left out."""
    head = f"<thead><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in header)}</tr></thead>" if any(header) else ""
    body = "".join("<tr>" + "".join(html_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def html_cell(value) -> str:
    """One escaped cell; numbers (not booleans) get the ``num`` class."""
    text = html.escape(format_value(value, none="—", max_items=4, brackets=False))
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>"


def html_image(name: str, alt: str) -> str:
    """An <img> of a PNG beside the page."""
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def render_report(title: str, subtitle: str, sections: Sequence[tuple[str, str | None]],
                  links: Sequence[tuple[str, str]] = ()) -> str:
    """The whole page: title, a table of contents, then each section.

    Args:
        sections: ``(title, body)`` pairs, the body HTML or None (shown as not in this run).
        links: ``(href, text)`` of pages beside the report, listed first in the table of contents.
    """
    anchors = [f"s{i}" for i in range(len(sections))]
    nav = "".join(f'<a href="{html.escape(href)}"><b>{html.escape(text)}</b></a>' for href, text in links)
    nav += "".join(f'<a href="#{a}">{html.escape(name)}</a>' for a, (name, _) in zip(anchors, sections))
    parts = [f'<section id="{a}"><h2>{html.escape(name)}</h2>'
             + (body if body is not None else '<p class="missing">Not in this run.</p>') + "</section>"
             for a, (name, body) in zip(anchors, sections)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style><script>{SCRIPT}</script></head>\n"
            f"<body><h1>{html.escape(title)}</h1><p class=\"note\">{html.escape(subtitle)}</p><nav>{nav}</nav>\n"
            + "\n".join(parts) + "\n</body></html>\n")
