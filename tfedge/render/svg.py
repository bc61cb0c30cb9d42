"""Hand-written SVG charts (no plotting library): inline in a page or saved as ``.svg``.

Example:
    >>> svg = bar_chart("tflite bytes", ["float32", "int8"], [156216, 45088], unit="B")
    >>> svg.count('class="bar"')
    2
    >>> number(156216.0), number(98.61)
    ('156,216', '98.61')
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
BAR_HEIGHT, GAP, LABEL_WIDTH, CHART_WIDTH = 18, 6, 150, 640


def document(width: int, height: int, parts: Sequence[str], label: str = "") -> str:
    """An ``<svg>`` element on a white background; ``label`` is its accessible name."""
    aria = f' role="img" aria-label="{escape(label)}"' if label else ""
    body = "\n".join([f'<rect width="{width}" height="{height}" fill="white"/>', *parts])
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif"{aria}>\n{body}\n</svg>\n'
    )


def bar_chart(
    title: str,
    labels: Sequence[str],
    values: Sequence[float | None],
    unit: str = "",
    series: Sequence[str] = (),
    more: Sequence[Sequence[float | None]] = (),
) -> str:
    """Horizontal bars, one row per label; ``more`` adds a bar per row for each extra series
    (named by ``series``, the first name for ``values``). A missing value draws no bar."""
    columns = [list(values), *[list(m) for m in more]]
    known = [abs(v) for column in columns for v in column if v is not None]
    top = max(known, default=0.0) or 1.0
    per_row = len(columns) * BAR_HEIGHT + GAP
    legend = 16 if series else 0
    height = 30 + legend + per_row * len(labels) + 10
    room = CHART_WIDTH - LABEL_WIDTH - 110
    parts = [f'<text x="4" y="18" font-size="13" font-weight="bold">{escape(title)}</text>']
    for k, name in enumerate(series):
        x = LABEL_WIDTH + 120 * k
        parts.append(
            f'<rect x="{x}" y="26" width="10" height="10" fill="{COLOURS[k % len(COLOURS)]}"/>'
            f'<text x="{x + 14}" y="35" font-size="11">{escape(name)}</text>'
        )
    for row, label in enumerate(labels):
        y0 = 30 + legend + row * per_row
        parts.append(
            f'<text x="{LABEL_WIDTH - 6}" y="{y0 + BAR_HEIGHT - 5}" font-size="11" '
            f'text-anchor="end">{escape(label[:24])}</text>'
        )
        for k, column in enumerate(columns):
            value = column[row] if row < len(column) else None
            if value is None:
                continue
            y = y0 + k * BAR_HEIGHT
            width = max(abs(value) / top * room, 1.0)
            text = f"{number(value)} {unit}".strip()
            parts.append(
                f'<rect class="bar" data-label="{escape(label)}" x="{LABEL_WIDTH}" y="{y + 2}" '
                f'width="{width:.1f}" height="{BAR_HEIGHT - 4}" '
                f'fill="{COLOURS[k % len(COLOURS)]}"><title>{escape(f"{label}: {text}")}'
                f"</title></rect>"
                f'<text x="{LABEL_WIDTH + width + 4:.1f}" y="{y + BAR_HEIGHT - 5}" '
                f'font-size="10">{escape(text)}</text>'
            )
    return document(CHART_WIDTH, height, parts, title)


def number(value: float) -> str:
    """``156,216``, ``98.61``, ``0.0123``: grouped thousands, no exponent."""
    if float(value).is_integer() or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.2e}"
