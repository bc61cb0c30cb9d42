"""The search's plots and its HTML report (hand-written SVG: no plotting library, no network).

Two scatter plots: the score (accuracy, or minus the MSE) against the p50 latency and
against the gzip bytes. Every measured trial is a point (filled when it meets every budget,
hollow when not; failed trials have no figures and are not shown), the feasible Pareto front
is joined by a line, the budget on that axis is a dashed line labelled with its kind
(absolute or relative) and the best trial is ringed. Each point carries ``data-trial`` (its
number) and a ``<title>`` tooltip; the front's points also ``data-front="1"``.

``report_html`` puts both plots inline in one self-contained page (``tfedge.render``, the
renderer of every report), with the front and every trial as tables.

Example:
    >>> row = {"number": 0, "recipe_sha256": "a", "score": 0.9, "accuracy": 0.9,
    ...        "p50_ms": 2.0, "gzip_bytes": 900, "excess": []}
    >>> svg = scatter_svg([row], [], "p50_ms")
    >>> svg.count('class="trial')
    1
"""

from __future__ import annotations

from html import escape

from tfedge.render import page, section, table
from tfedge.render.html import bullets
from tfedge.search import pareto

WIDTH, HEIGHT, MARGIN, RIGHT = 640, 360, 56, 24
FEASIBLE, INFEASIBLE, FRONT, BEST, BUDGET = "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#555555"
AXES = {
    "p50_ms": ("p50 latency (ms)", "latency"),
    "gzip_bytes": ("gzip bytes", "size"),
}
FILES = {"p50_ms": "pareto_latency.svg", "gzip_bytes": "pareto_size.svg"}


def scatter_svg(rows: list[dict], budgets: list[dict], x_key: str) -> str:
    """Score (y) against ``x_key`` (``p50_ms`` or ``gzip_bytes``) of every row."""
    label, budget_name = AXES[x_key]
    lines = [b for b in budgets if b["name"] == budget_name]
    front = pareto.pareto_front(rows)
    best = front[0] if front else None
    xs = [float(r[x_key]) for r in rows] + [float(b["limit"]) for b in lines]
    ys = [float(r["score"]) for r in rows]
    scale = _Scale(xs or [0.0, 1.0], ys or [0.0, 1.0])
    parts = [_frame(scale, label, _y_label(rows))]
    for budget in lines:
        parts.append(_budget_line(scale, budget))
    if len(front) > 1:
        joined = sorted(front, key=lambda r: r[x_key])
        points = " ".join(scale.at(r[x_key], r["score"]) for r in joined)
        parts.append(
            f'<polyline class="front" fill="none" stroke="{FRONT}" stroke-width="1.5" '
            f'points="{points}"/>'
        )
    on_front = {r["number"] for r in front}
    for row in rows:
        parts.append(_point(scale, row, x_key, row["number"] in on_front))
    if best is not None:
        x, y = scale.at(best[x_key], best["score"]).split(",")
        parts.append(
            f'<circle class="best" data-trial="{best["number"]}" cx="{x}" cy="{y}" r="9" '
            f'fill="none" stroke="{BEST}" stroke-width="2"><title>best: trial '
            f"{best['number']}</title></circle>"
        )
    parts.append(_legend())
    body = "\n".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">\n{body}\n</svg>\n'
    )


def report_html(result: dict) -> str:
    """A self-contained page (``tfedge.render``): both plots inline, the budgets, the front
    and every trial."""
    rows, budgets = result["trials"], result["budgets"]
    best = result.get("best")
    found = (
        f"best: trial {best['number']} ({pareto.score_text(best)}, "
        f"{best['p50_ms']:.3f} ms, {best['gzip_bytes']} gzip B)"
        if best
        else "no trial meets every budget"
    )
    items = [
        f"{b['name']} <= {b['limit']:.6g} {b['unit']} ({b['kind']}: {b['how']})" for b in budgets
    ] or ["no budgets"]
    items += list(result.get("notes", []))
    if result.get("formats"):
        items.append(result["formats"]["line"])
    if not best and result.get("closest"):
        closest = pareto.closest_lines(result["closest"])
        items += [f"no trial meets every budget; closest: {line}" for line in closest]
    summary = (
        f"{len(rows)} measured trials, {len(result.get('failed', []))} failed, "
        f"{len(result.get('front', []))} on the feasible Pareto front; {found}."
    )
    parts = [
        bullets(items),
        scatter_svg(rows, budgets, "p50_ms"),
        scatter_svg(rows, budgets, "gzip_bytes"),
        section("Pareto front (feasible trials)", _table(result.get("front", []))),
        section("All trials", _table(rows)),
    ]
    return page(f"Search: {result.get('study', '')}", parts, summary)


class _Scale:
    """Data to pixel coordinates, with a margin of 5% around the values."""

    def __init__(self, xs: list[float], ys: list[float]) -> None:
        self.x0, self.x1 = _padded(min(xs), max(xs))
        self.y0, self.y1 = _padded(min(ys), max(ys))

    def px(self, x: float) -> float:
        return MARGIN + (x - self.x0) / (self.x1 - self.x0) * (WIDTH - MARGIN - RIGHT)

    def py(self, y: float) -> float:
        return HEIGHT - MARGIN - (y - self.y0) / (self.y1 - self.y0) * (HEIGHT - 2 * MARGIN)

    def at(self, x: float, y: float) -> str:
        return f"{self.px(float(x)):.1f},{self.py(float(y)):.1f}"


def _padded(low: float, high: float) -> tuple[float, float]:
    span = high - low or abs(high) or 1.0
    return low - 0.05 * span, high + 0.05 * span


def _y_label(rows: list[dict]) -> str:
    if rows and all(r.get("accuracy") is not None for r in rows):
        return "accuracy"
    return "score (minus MSE)"


def _frame(scale: _Scale, x_label: str, y_label: str) -> str:
    left, right = MARGIN, WIDTH - RIGHT
    top, bottom = MARGIN, HEIGHT - MARGIN
    lines = [
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{top}" stroke="black"/>',
        f'<text x="{left}" y="{top - 24}" font-size="12">{escape(y_label)} vs '
        f"{escape(x_label)}</text>",
        f'<text x="{(left + right) / 2:.1f}" y="{HEIGHT - 12}" font-size="11" '
        f'text-anchor="middle">{escape(x_label)}</text>',
    ]
    for i in range(5):
        x = scale.x0 + (scale.x1 - scale.x0) * (i + 0.5) / 5
        y = scale.y0 + (scale.y1 - scale.y0) * (i + 0.5) / 5
        lines.append(
            f'<text x="{scale.px(x):.1f}" y="{bottom + 14}" font-size="10" '
            f'text-anchor="middle">{x:.4g}</text>'
        )
        lines.append(
            f'<text x="{left - 4}" y="{scale.py(y) + 3:.1f}" font-size="10" '
            f'text-anchor="end">{y:.4g}</text>'
        )
    return "\n".join(lines)


def _budget_line(scale: _Scale, budget: dict) -> str:
    x = scale.px(float(budget["limit"]))
    text = f"{budget['name']} budget ({budget['kind']}) {budget['limit']:.4g} {budget['unit']}"
    return (
        f'<line class="budget" x1="{x:.1f}" y1="{MARGIN}" x2="{x:.1f}" y2="{HEIGHT - MARGIN}" '
        f'stroke="{BUDGET}" stroke-dasharray="6 4"><title>{escape(budget["how"])}</title></line>\n'
        f'<text x="{x + 3:.1f}" y="{MARGIN + 10}" font-size="10" fill="{BUDGET}">'
        f"{escape(text)}</text>"
    )


def _point(scale: _Scale, row: dict, x_key: str, on_front: bool) -> str:
    ok = pareto.feasible(row)
    x, y = scale.at(row[x_key], row["score"]).split(",")
    colour = FEASIBLE if ok else INFEASIBLE
    fill = colour if ok else "none"
    kind = "feasible" if ok else "infeasible"
    front = ' data-front="1"' if on_front else ""
    tip = f"trial {row['number']}: {pareto.score_text(row)}, {row['p50_ms']:.3f} ms, "
    tip += f"{row['gzip_bytes']} gzip B{'' if ok else ' (over a budget)'}"
    return (
        f'<circle class="trial {kind}" data-trial="{row["number"]}"{front} cx="{x}" cy="{y}" '
        f'r="4.5" fill="{fill}" stroke="{colour}" stroke-width="1.5">'
        f"<title>{escape(tip)}</title></circle>"
    )


def _legend() -> str:
    x, y = WIDTH - RIGHT - 150, HEIGHT - MARGIN - 52
    return "\n".join(
        [
            f'<circle cx="{x}" cy="{y}" r="4" fill="{FEASIBLE}"/>',
            f'<text x="{x + 8}" y="{y + 3}" font-size="10">feasible</text>',
            f'<circle cx="{x}" cy="{y + 14}" r="4" fill="none" stroke="{INFEASIBLE}"/>',
            f'<text x="{x + 8}" y="{y + 17}" font-size="10">over a budget</text>',
            f'<line x1="{x - 5}" y1="{y + 28}" x2="{x + 5}" y2="{y + 28}" stroke="{FRONT}"/>',
            f'<text x="{x + 8}" y="{y + 31}" font-size="10">Pareto front</text>',
            f'<circle cx="{x}" cy="{y + 42}" r="5" fill="none" stroke="{BEST}"/>',
            f'<text x="{x + 8}" y="{y + 45}" font-size="10">best</text>',
        ]
    )


def _table(rows: list[dict]) -> str:
    return table(pareto.HEADERS, pareto.table_rows(rows))
