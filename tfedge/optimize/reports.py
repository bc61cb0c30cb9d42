"""The reports of an optimize run: ``report.json``, ``report.md``, ``report.html`` and the
sensitivity plots, from the measured stages.

``report.md`` is the stage table (sizes relative to the float32 stage), the stages' latency on
``--target``, and per channels stage the group table (channels, MACs and parameters read from
the ``.tflite`` before and after, and their time); ``report.html`` (``html_report``) shows the
same as charts and tables.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tfedge.fsutil import write_bytes_atomic
from tfedge.optimize.html_report import optimize_html, sensitivity_plot
from tfedge.optimize.recipe import Recipe
from tfedge.optimize.resume import STATE_FILE
from tfedge.optimize.stages import Stage, json_default


def write_reports(
    work: Path,
    recipe: Recipe,
    stages: list[Stage],
    seconds: float,
    keras_model: str | None = "model.keras",
    notes: list[str] | None = None,
    resumed: dict | None = None,
    failed: dict | None = None,
    checkpoint: str | None = None,
) -> None:
    report: dict[str, Any] = {
        "status": "failed" if failed else "ok",
        "recipe": {
            "name": recipe.name,
            "source": recipe.source,
            "sha256": recipe.sha256,
            "canonical_sha256": recipe.canonical_sha256,
            "passes": recipe.pass_names,
        },
        "model": None if failed else "model.tflite",
        "keras_model": keras_model,
        "seconds": seconds,
        "stages": [asdict(s) for s in stages],
    }
    if failed:
        report.update(failed=failed, checkpoint=checkpoint, resume_state=STATE_FILE)
    if notes:
        report["notes"] = notes
    if resumed:
        report["resumed"] = resumed
    write_bytes_atomic(
        work / "report.json", json.dumps(report, indent=2, default=json_default).encode()
    )
    text = markdown_report(recipe, stages, failed=failed, checkpoint=checkpoint, notes=notes)
    write_bytes_atomic(work / "report.md", text.encode())
    html = optimize_html(recipe, stages, failed, notes or [])
    write_bytes_atomic(work / "report.html", html.encode())
    for stage in stages:
        if plot := sensitivity_plot(stage):
            write_bytes_atomic(work / f"sensitivity-{_slug(stage.name)}.svg", plot.encode())


def stage_latency_line(stages: list[Stage]) -> list[str]:
    """The stages' p50 latencies on the ``--target``, as one report line."""
    timed = [s for s in stages if "bench" in s.metrics]
    if not timed:
        return []
    bench = timed[0].metrics["bench"]
    where = bench["target"] + (" (emulated: relative only)" if bench["emulated"] else "")
    values = ", ".join(f"{s.name} {s.metrics['bench']['p50_us']:,.1f}" for s in timed)
    return ["", f"p50 latency on {where}, {bench['threads'] or 'default'} thread(s), µs: {values}."]


def _costs_header(costs: dict | None) -> list[str]:
    if not costs:
        return ["", "| group (layers) | channels before | after | note |", "|---|---:|---:|---|"]
    timed = costs["total_us_before"] is not None
    lines = [""]
    if timed:
        where = costs["target"] + (
            " (emulated: compare only with itself)" if costs["emulated"] else ""
        )
        lines += [
            f"Time on {where}, one thread, per group the sum of its layers' op-profile rows "
            f"(`tfedge bench --op-profile`): whole model {costs['total_us_before']:,.1f} µs "
            f"in `{costs['before_stage']}` -> {costs['total_us_after']:,.1f} µs "
            f"({costs['total_us_before'] / max(costs['total_us_after'], 1e-9):.2f}x); "
            "`~` marks a time within its noise.",
            "",
        ]
    lines.append(
        "| group (layers) | channels before | after | MACs before | after | params before "
        "| after |" + (" µs before | after |" if timed else "") + " note |"
    )
    lines.append("|---|" + "---:|" * (8 if timed else 6) + "---|")
    return lines


def _cost_cells(cost: dict | None, costs: dict | None) -> str:
    if cost is None or not costs:
        return ""
    cells = [cost["macs_before"], cost["macs_after"], cost["params_before"], cost["params_after"]]
    text = "".join(f"{value:,} | " for value in cells)
    if costs["total_us_before"] is not None:
        mark = "" if cost["resolved"] else "~"
        text += "".join(
            f"{mark}{cost[key]:,.1f} | " for key in ("latency_us_before", "latency_us_after")
        )
    return text


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def channels_section(stage: Stage) -> list[str]:
    """Per channel group of a channels stage: channels before/after, kept share, why whole."""
    groups = stage.metrics.get("groups")
    if not stage.name.startswith("channels") or not isinstance(groups, list):
        return []
    m = stage.metrics
    lines = [
        "",
        f"**{stage.name}**: MACs {m['macs_before']:,} -> {m['macs_after']:,} "
        f"({m['macs_after'] / max(m['macs_before'], 1):.1%}), parameters "
        f"{m['params_before']:,} -> {m['params_after']:,}"
        + (f"; target_macs {m['target_macs']:g}" if "target_macs" in m else "")
        + ".",
        *_costs_header(m.get("costs")),
    ]
    costs = m.get("costs", {}).get("groups") or [None] * len(groups)
    for g, cost in zip(groups, costs):
        layers = ", ".join(g["layers"][:4]) + (" ..." if len(g["layers"]) > 4 else "")
        lines.append(
            f"| {layers} | {g['channels_before']} | {g['channels_after']} | "
            + _cost_cells(cost, m.get("costs"))
            + f"{g.get('left_whole', '') or g.get('criterion', '')} |"
        )
    if sensitivity_plot(stage):
        slug = _slug(stage.name)
        lines += ["", f"![sensitivity of {stage.name}](sensitivity-{slug}.svg)"]
    return lines


def markdown_report(
    recipe: Recipe,
    stages: list[Stage],
    *,
    failed: dict | None = None,
    checkpoint: str | None = None,
    notes: list[str] | None = None,
) -> str:
    """The stage table in Markdown, sizes relative to the float32 stage.

    A failed run's report starts with FAILED, the stage, the reason and how to resume; rows
    reused by ``--resume`` say so.
    """
    base = stages[0].tflite_bytes
    lines = [f"# tfedge optimize: recipe `{recipe.name}`", ""]
    if failed:
        lines += [
            f"**FAILED at stage `{failed['stage']}`** (passes[{failed['pass_index']}]): "
            f"{failed['error']}: {failed['message']}",
            "",
            f"Hint: {failed['hint']}" if failed["hint"] else "",
            "",
            "No model.tflite was written. The table below holds the stages before the failure.",
            (
                f"The model after them is `{checkpoint}`; edit the recipe and continue with "
                "`tfedge optimize MODEL --resume OUTDIR --recipe RECIPE --data DATA --eval EVAL`."
                if checkpoint
                else "The first pass failed, so nothing trained is kept; continue with "
                "`tfedge optimize MODEL --resume OUTDIR --recipe RECIPE --data DATA --eval EVAL` "
                "(the float32 and int8 stages are reused)."
                if failed["pass_index"] == 0
                else "No checkpoint could be saved: run again without --resume."
            ),
            "",
        ]
    lines += [
        f"Recipe sha256 `{recipe.sha256}` ({recipe.source}), canonical "
        f"`{recipe.canonical_sha256[:16]}`; "
        f"passes: {' -> '.join(recipe.pass_names) or 'none'}.",
        "",
        "| stage | accuracy | params | non-zero | sparsity | unique/ch | tflite B | gzip B | "
        "xz B | float32/gzip |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        acc = "-" if s.accuracy is None else f"{100 * s.accuracy:.2f}%"
        name = f"{s.name} (reused)" if s.reused else s.name
        lines.append(
            f"| {name} | {acc} | {s.params:,} | {s.nonzero_params:,} | {100 * s.sparsity:.1f}% | "
            f"{s.unique_weights} | {s.tflite_bytes:,} | {s.gzip_bytes:,} | {s.xz_bytes:,} | "
            f"{base / s.gzip_bytes:.1f}x |"
        )
    if any(s.reused for s in stages):
        lines += ["", "(reused): measured by the earlier run this one resumed (--resume)."]
    lines += stage_latency_line(stages)
    for s in stages:
        lines += channels_section(s)
    lines += [f"\nNote: {note}" for note in notes or []]
    return "\n".join(lines) + "\n"
