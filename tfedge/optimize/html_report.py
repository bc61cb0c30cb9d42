"""``report.html`` of ``tfedge optimize``: the stages as bar charts and tables, on one page.

Beside ``report.md``, from the same rows: the size (``.tflite`` and gzip bytes), the
accuracy (or MSE) and, with ``--target``, the p50 latency of every stage as bars; the stage
table; each channels stage's per-group table and its sensitivity plot. Built with
``tfedge.render`` (self-contained: opens offline from a file).
"""

from __future__ import annotations

from tfedge.optimize.recipe import Recipe
from tfedge.optimize.stages import Stage
from tfedge.render import bar_chart, page, section, table
from tfedge.render.html import bullets, paragraph

STAGE_HEADERS = [
    "stage", "accuracy", "MSE", "params", "non-zero", "sparsity", "unique/ch", "tflite B",
    "gzip B", "xz B", "p50 µs",
]  # fmt: skip


def optimize_html(
    recipe: Recipe, stages: list[Stage], failed: dict | None = None, notes: list[str] | None = None
) -> str:
    """The whole page for one run (a failed run's page says where it stopped)."""
    summary = (
        f"Recipe {recipe.name}: {' -> '.join(recipe.pass_names) or 'no passes'}; "
        f"{len(stages)} stages measured."
    )
    parts = []
    if failed:
        parts.append(
            paragraph(
                f"FAILED at stage {failed['stage']}: {failed['error']}: {failed['message']}",
                "fail",
            )
        )
    parts += [section("Stages", *_charts(stages), table(STAGE_HEADERS, _rows(stages)))]
    for stage in stages:
        parts += _channels(stage)
    if notes:
        parts.append(section("Notes", bullets(notes)))
    return page(f"tfedge optimize: {recipe.name}", parts, summary)


def _charts(stages: list[Stage]) -> list[str]:
    names = [s.name for s in stages]
    charts = [
        bar_chart(
            "Size per stage",
            names,
            [s.tflite_bytes for s in stages],
            "B",
            series=["tflite", "gzip"],
            more=[[s.gzip_bytes for s in stages]],
        )
    ]
    if any(s.accuracy is not None for s in stages):
        values = [None if s.accuracy is None else 100 * s.accuracy for s in stages]
        charts.append(bar_chart("Accuracy per stage (converted model)", names, values, "%"))
    elif any(s.mse is not None for s in stages):
        charts.append(bar_chart("MSE per stage (converted model)", names, [s.mse for s in stages]))
    timed = [s.metrics.get("bench") for s in stages]
    if any(timed):
        where = next(t for t in timed if t)
        label = where["target"] + (" (emulated: relative only)" if where["emulated"] else "")
        charts.append(
            bar_chart(
                f"p50 latency per stage on {label}",
                names,
                [t["p50_us"] if t else None for t in timed],
                "µs",
            )
        )
    return charts


def _rows(stages: list[Stage]) -> list[list]:
    return [
        [
            s.name + (" (reused)" if s.reused else ""),
            None if s.accuracy is None else f"{100 * s.accuracy:.2f}%",
            None if s.mse is None else f"{s.mse:.4g}",
            f"{s.params:,}",
            f"{s.nonzero_params:,}",
            f"{100 * s.sparsity:.1f}%",
            s.unique_weights,
            f"{s.tflite_bytes:,}",
            f"{s.gzip_bytes:,}",
            f"{s.xz_bytes:,}",
            f"{s.metrics['bench']['p50_us']:,.1f}" if "bench" in s.metrics else None,
        ]
        for s in stages
    ]


def _channels(stage: Stage) -> list[str]:
    """A channels stage's groups (channels, MACs, parameters, time) and sensitivity plot."""
    m = stage.metrics
    groups = m.get("groups")
    if not stage.name.startswith("channels") or not isinstance(groups, list):
        return []
    costs = (m.get("costs") or {}).get("groups") or [{}] * len(groups)
    headers = ["group (layers)", "channels before", "after", "MACs before", "after"]
    headers += ["params before", "after", "µs before", "after", "note"]
    rows = [
        [
            ", ".join(g["layers"]),
            g["channels_before"],
            g["channels_after"],
            *(_number(c.get(k)) for k in COST_KEYS),
            g.get("left_whole", "") or g.get("criterion", ""),
        ]
        for g, c in zip(groups, costs)
    ]
    parts = [
        paragraph(
            f"MACs {m['macs_before']:,} -> {m['macs_after']:,}, parameters "
            f"{m['params_before']:,} -> {m['params_after']:,}."
        ),
        table(headers, rows),
    ]
    if plot := sensitivity_plot(stage):
        parts += [paragraph("Sensitivity: the score with one group cut at a time."), plot]
    return [section(f"Channel groups of {stage.name}", *parts)]


def sensitivity_plot(stage: Stage) -> str | None:
    """The SVG of a channels stage's sensitivity table (``target_macs``), else None."""
    rows = stage.metrics.get("sensitivity") if stage.name.startswith("channels") else None
    if not isinstance(rows, list) or not rows:
        return None
    from tfedge.analyze.sensitivity import group_report

    return group_report(stage.name, rows).svg()


COST_KEYS = (
    "macs_before", "macs_after", "params_before", "params_after", "latency_us_before",
    "latency_us_after",
)  # fmt: skip


def _number(value) -> str | None:
    if value is None:
        return None
    return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"
