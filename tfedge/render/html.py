"""Self-contained HTML pages: one stylesheet inline, escaped text, tables, inline SVG.

Example:
    >>> html = page("tfedge optimize", [section("Stages", table(["stage"], [["int8"]]))])
    >>> html.startswith("<!DOCTYPE html>") and "<td>int8</td>" in html
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

STYLE = (
    "body{font-family:sans-serif;margin:1.5em;color:#222;max-width:70em}"
    "table{border-collapse:collapse;margin-bottom:1.5em}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
    "svg{display:block;margin:0.5em 0 1.5em}.note{color:#555}.fail{color:#d62728}"
    "span.bar{background:#eee;width:240px;height:12px;display:inline-block}"
    "span.bar span{background:#2ca02c;height:12px;display:block}"
)


def page(title: str, parts: Iterable[str], summary: str = "") -> str:
    """A whole page: ``title`` as its heading, an optional ``summary`` paragraph (text), then
    ``parts`` (HTML made by ``section``, ``table``, ``paragraph`` or an SVG chart)."""
    head = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
    )
    body = [f"<h1>{escape(title)}</h1>"]
    if summary:
        body.append(paragraph(summary))
    return "\n".join([head, *body, *parts, "</body></html>"]) + "\n"


def section(title: str, *parts: str) -> str:
    """A second-level heading and its parts (HTML)."""
    return "\n".join([f"<h2>{escape(title)}</h2>", *parts])


def paragraph(text: str, css_class: str = "") -> str:
    """Escaped text as a paragraph."""
    attr = f' class="{escape(css_class)}"' if css_class else ""
    return f"<p{attr}>{escape(text)}</p>"


def bullets(items: Iterable[str]) -> str:
    """Escaped text items as a list."""
    return "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>"


def table(headers: Sequence[object], rows: Iterable[Sequence[object]], css_class: str = "") -> str:
    """A table of escaped cells (``None`` shows as empty)."""
    attr = f' class="{escape(css_class)}"' if css_class else ""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape('' if c is None else str(c))}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table{attr}><tr>{head}</tr>{body}</table>"
