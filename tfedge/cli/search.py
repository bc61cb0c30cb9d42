"""`tfedge search`."""

from __future__ import annotations

import re

import click

from tfedge.cli.options import echo_json, echo_table, json_option, trust_model_option
from tfedge.errors import UsageError


@click.command("search")
@click.argument("model", type=click.Path(exists=True), metavar="MODEL")
@click.option("--data", required=True, type=click.Path(exists=True), help="Training data (.npz).")
@click.option(
    "--eval", "eval_data", required=True, type=click.Path(exists=True), help="Evaluation data."
)
@click.option(
    "-p",
    "--profile",
    metavar="NAME|FILE",
    help="Device profile: its budgets and full-integer rule (see `tfedge profiles list`).",
)
@click.option(
    "-t",
    "--target",
    help="Where trials are measured: local (default), qemu, or ssh://user@host "
    "(as `tfedge bench`).",
)
@click.option(
    "--inventory",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML list of interchangeable devices (as `tfedge bench --inventory`) that measure "
    "trials concurrently, one trial per device at a time (replaces --target).",
)
@click.option(
    "--trials",
    type=int,
    default=20,
    show_default=True,
    help="Finished trials wanted (a re-run runs only the missing ones).",
)
@click.option("--timeout", metavar="DURATION", help="Start no trial after this, e.g. 90m, 2h.")
@click.option(
    "--space",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML narrowing or widening the search space (see `tfedge search --help`).",
)
@click.option("--storage", metavar="URL", help="Study storage, e.g. postgresql://user@host/db.")
@click.option("--study", "study_name", help="Study name (default: from model, data, target).")
@click.option(
    "--workers",
    type=int,
    help="Local worker processes (default 1, or one per --inventory device).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampler.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Output directory.")
@trust_model_option
@json_option
def search_cmd(
    model,
    data,
    eval_data,
    profile,
    target,
    inventory,
    trials,
    timeout,
    space,
    storage,
    study_name,
    workers,
    seed,
    output,
    trust_model,
    as_json,
):
    """Search compression recipes for the most accurate model within a device's budgets.

    Each trial is a recipe (channels, low_rank, prune, cluster, quantization, epochs) run
    like `tfedge optimize` into OUTDIR/trials/NNNN and measured on the target: accuracy,
    p50 latency, peak RSS, bytes and gzip bytes. Budgets are the profile's on its own
    device; on a stand-in (qemu, or local for another board) they are relative to the int8
    post-training model measured there (--space budgets:). Writes OUTDIR/pareto.json,
    pareto.md, report.html (plots), pareto_latency.svg, pareto_size.svg and best/
    (model.tflite, recipe.yaml, bench.json). The study lives in
    OUTDIR/study.db (study.journal with --workers): the same command again continues it.
    With --inventory, the listed devices measure trials concurrently (one trial per device
    at a time; one worker per device unless --workers says otherwise).

    \b
    Space file (every block optional; `prune: false` leaves a pass out):
        channels: {keep: [0.25, 1.0]}
        low_rank: {param_ratio: [0.2, 0.9]}
        prune: {target_sparsity: [0.3, 0.9]}
        cluster: {clusters: [8, 16, 32]}
        qat: false
        quant: [int8, int16x8, float16, dynamic, float32]
        epochs: [1, 2]
        budgets: {latency: 0.5, size: 0.1}
        measure: {runs: 50, warmup: 1, min_secs: 1.0}

    \b
    Example:
        tfedge search models/digits/model.keras --data models/digits/train.npz \\
            --eval models/digits/test.npz --profile rpi4 --target qemu --trials 30 -o out/s
    """
    from tfedge.search import search

    result = search(
        model,
        data,
        eval_data,
        output,
        target=target,
        inventory=inventory,
        profile=profile,
        space=space,
        trials=trials,
        timeout=parse_duration(timeout),
        storage=storage,
        study=study_name,
        workers=workers,
        seed=seed,
        trust_model=trust_model,
        progress=not as_json,
    )
    if as_json:
        echo_json(result.to_dict())
        return
    _print(result)


def _print(result) -> None:
    from tfedge.search.pareto import HEADERS, closest_lines, table_rows

    click.echo(f"Pareto front of study '{result.study}' ({result.storage}):")
    echo_table(HEADERS, table_rows(result.front))
    for b in result.budgets:
        click.echo(f"budget ({b['kind']}): {b['name']} <= {b['limit']:.6g} {b['unit']}, {b['how']}")
    for note in result.notes:
        click.echo(f"Note: {note}", err=True)
    failed = f", {len(result.failed)} failed" if result.failed else ""
    click.echo(f"{len(result.trials)} trials measured{failed}; front: {len(result.front)}")
    if result.formats:
        click.echo(result.formats["line"][0].upper() + result.formats["line"][1:])
    if result.best is not None:
        click.echo(
            f"Best within budgets: trial {result.best['number']} -> {result.output_dir}/best"
        )
        return
    click.echo("No trial meets every budget. Closest:")
    for line in closest_lines(result.closest):
        click.echo(f"  {line}")
    click.echo("Run more trials, widen the space, or loosen `budgets:` in --space.")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | None) -> float | None:
    """``90`` (seconds), ``90s``, ``30m``, ``2h``, ``1d``; None stays None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None or float(match[1]) <= 0:
        raise UsageError(f"--timeout {text!r} is not a duration", "e.g. --timeout 90m or 2h")
    return float(match[1]) * _UNITS[match[2] or "s"]
