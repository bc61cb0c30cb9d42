"""The feasible Pareto front of a study's trials, and its table.

Rows are plain dicts (one per measured trial: ``number``, ``recipe_sha256``, ``score``,
``accuracy``, ``p50_ms``, ``peak_rss_mb``, ``tflite_bytes``, ``gzip_bytes``, ``excess``
(one value per budget, <= 0 within it)). A row is feasible when every excess is <= 0; the
front is the feasible rows that no other feasible row dominates on (score up, p50 down,
gzip bytes down). Duplicates (the same recipe hash) appear once.

Example:
    >>> a = {"number": 0, "recipe_sha256": "a", "score": 0.9, "p50_ms": 2, "gzip_bytes": 9,
    ...      "excess": [-0.1]}
    >>> b = {**a, "number": 1, "recipe_sha256": "b", "score": 0.8, "p50_ms": 3}
    >>> [r["number"] for r in pareto_front([a, b])]
    [0]
"""

from __future__ import annotations

OBJECTIVES = (("score", 1), ("p50_ms", -1), ("gzip_bytes", -1))  # 1: larger is better


def feasible(row: dict) -> bool:
    return all(e <= 0 for e in row.get("excess", []))


def dominates(a: dict, b: dict) -> bool:
    """``a`` is at least as good as ``b`` on every objective and better on one."""
    better = False
    for key, sign in OBJECTIVES:
        if sign * a[key] < sign * b[key]:
            return False
        better = better or sign * a[key] > sign * b[key]
    return better


def unique(rows: list[dict]) -> list[dict]:
    """The first row of each recipe hash."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        if row["recipe_sha256"] not in seen:
            seen.add(row["recipe_sha256"])
            kept.append(row)
    return kept


def pareto_front(rows: list[dict]) -> list[dict]:
    """The feasible, non-dominated rows, most accurate first."""
    ok = [r for r in unique(rows) if feasible(r)]
    front = [r for r in ok if not any(dominates(o, r) for o in ok if o is not r)]
    return sorted(front, key=lambda r: (-r["score"], r["p50_ms"], r["gzip_bytes"]))


def best(rows: list[dict]) -> dict | None:
    """The most accurate feasible row (then the fastest, then the smallest)."""
    front = pareto_front(rows)
    return front[0] if front else None


MEASURES = {
    "latency": "p50_ms",
    "size": "gzip_bytes",
    "ram": "peak_rss_mb",
    "bytes": "tflite_bytes",
}


def closest(rows: list[dict], budgets: list[dict], count: int = 3) -> list[dict]:
    """The ``count`` rows nearest to feasible (smallest worst excess first), each with the
    budgets it breaks: ``over`` (one sentence per budget) and ``broken`` (the figures).

    Example:
        >>> row = {"number": 4, "recipe_sha256": "a", "p50_ms": 2.9, "excess": [0.621]}
        >>> budget = {"name": "latency", "limit": 1.789, "unit": "ms", "kind": "relative",
        ...           "how": "0.5 x int8"}
        >>> closest([row], [budget])[0]["over"]
        ['latency 2.9 ms > 1.789 ms budget: 62% over (relative: 0.5 x int8)']
    """
    ranked = sorted(unique(rows), key=lambda r: max(r["excess"], default=0.0))
    found = []
    for row in ranked[:count]:
        pairs = [(b, e) for b, e in zip(budgets, row["excess"]) if e > 0]
        broken = [
            {"budget": b["name"], "value": row[MEASURES[b["name"]]], "limit": b["limit"]}
            | {"unit": b["unit"], "excess": e}
            for b, e in pairs
        ]
        over = [_over(item, b) for item, (b, _) in zip(broken, pairs)]
        found.append({"number": row["number"], "over": over, "broken": broken})
    return found


def closest_lines(found: list[dict]) -> list[str]:
    """``trial 4: latency 2.9 ms > 1.789 ms budget: 62% over (...)``, one per closest trial."""
    return [f"trial {c['number']}: {'; '.join(c['over'])}" for c in found]


def _over(item: dict, budget: dict) -> str:
    """``latency 2.9 ms > 1.789 ms budget: 62% over (relative: 0.5 x int8 ...)``."""
    unit = f" {item['unit']}"
    kind = f"{budget['kind']}: " if budget.get("kind") else ""
    return (
        f"{item['budget']} {item['value']:.6g}{unit} > {item['limit']:.6g}{unit} budget: "
        f"{100 * item['excess']:.0f}% over ({kind}{budget['how']})"
    )


HEADERS = ["trial", "recipe", "accuracy", "p50 ms", "RSS MB", "bytes", "gzip B", "feasible"]


def table_rows(rows: list[dict]) -> list[list]:
    """Cells of the table: one row per trial."""
    return [
        [
            row["number"],
            row["recipe_sha256"][:12],
            score_text(row),
            f"{row['p50_ms']:.3f}",
            f"{row['peak_rss_mb']:.1f}",
            row["tflite_bytes"],
            row["gzip_bytes"],
            "yes" if feasible(row) else "no",
        ]
        for row in rows
    ]


def markdown(rows: list[dict], title: str, notes: list[str]) -> str:
    """A markdown table of ``rows`` under ``title``, then ``notes`` as a list."""
    lines = [f"# {title}", "", "| " + " | ".join(HEADERS) + " |"]
    lines.append("|" + "---|" * len(HEADERS))
    lines += ["| " + " | ".join(str(c) for c in cells) + " |" for cells in table_rows(rows)]
    lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def score_text(row: dict) -> str:
    """The accuracy in %, or the MSE for a model without classes."""
    if row.get("accuracy") is not None:
        return f"{100 * row['accuracy']:.2f}%"
    return f"mse {-row['score']:.4g}"
