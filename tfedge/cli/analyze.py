"""``tfedge analyze sensitivity``: what each channel group and Dense / 1x1 conv can lose alone."""

from __future__ import annotations

import json

import click

from tfedge.cli.options import echo_json, echo_table, json_option, trust_model_option


@click.group("analyze")
def analyze_cmd() -> None:
    """Analyses of a Keras model before compressing it.

    \b
    Example:
        tfedge analyze sensitivity model.keras --data train.npz --eval test.npz
    """


@analyze_cmd.command("sensitivity")
@click.argument("model", type=click.Path(exists=True), metavar="MODEL")
@click.option("--data", required=True, type=click.Path(exists=True), help="Training data.")
@click.option(
    "--eval",
    "eval_data",
    type=click.Path(exists=True),
    help="Data the cuts are scored on (default: a held-out slice of --data).",
)
@click.option(
    "--ratios",
    default="0.75,0.5,0.25",
    show_default=True,
    help="Keep ratios in (0, 1): channels kept, or the share of the full SVD rank.",
)
@click.option(
    "--criterion",
    type=click.Choice(["l1", "l2", "bn", "taylor"]),
    default="l1",
    show_default=True,
    help="Which channels a group keeps, as the channels pass ranks them.",
)
@click.option("--round-to", type=int, default=8, show_default=True, help="Channel multiple.")
@click.option("--minimum", type=int, default=8, show_default=True, help="Fewest channels kept.")
@click.option("--samples", type=int, default=1000, show_default=True, help="Scored, at most.")
@click.option("-o", "--output", type=click.Path(), help="Write the JSON report to this file.")
@click.option("--plot", type=click.Path(), help="Write an SVG plot: score vs ratio.")
@click.option("--no-cache", is_flag=True, help="Compute again; do not read or write the cache.")
@trust_model_option
@json_option
def sensitivity_cmd(
    model,
    data,
    eval_data,
    ratios,
    criterion,
    round_to,
    minimum,
    samples,
    output,
    plot,
    no_cache,
    trust_model,
    as_json,
):
    """Score MODEL with each channel group (keep ratios) and each Dense / 1x1 conv (SVD
    ranks) cut alone, without fine-tuning: accuracy (integer labels) or MSE (float targets).

    The table lists the most robust first (lowest mean drop). Results are cached by the
    model's and data's sha256 and the options (~/.cache/tfedge/sensitivity).

    \b
    Example:
        tfedge analyze sensitivity model.keras --data train.npz --eval test.npz
        tfedge analyze sensitivity model.keras --data train.npz --ratios 0.5,0.25 \\
            --plot sensitivity.svg -o sensitivity.json
    """
    from tfedge.analyze.sensitivity import analyze_sensitivity, parse_ratios

    outputs = _checked_outputs([(output, "-o"), (plot, "--plot")], [model, data, eval_data])
    report = analyze_sensitivity(
        model,
        data,
        eval_data,
        ratios=parse_ratios(ratios),
        criterion=criterion,
        round_to=round_to,
        minimum=minimum,
        max_samples=samples,
        cache=not no_cache,
        trust_model=trust_model,
        log=None if as_json else lambda line: click.echo(line, err=True),
    )
    _write(outputs.get("-o"), json.dumps(report.to_dict(), indent=2))
    _write(outputs.get("--plot"), report.svg())
    if as_json:
        echo_json(report.to_dict())
        return
    _print(report)


def _checked_outputs(pairs, inputs) -> dict:
    """Each output path given, checked writable and apart from the inputs (before any work)."""
    from tfedge.errors import UsageError
    from tfedge.fsutil import check_not_input, check_writable

    given = {flag: path for path, flag in pairs if path}
    if len(given) == 2 and given["-o"] == given["--plot"]:
        raise UsageError("-o and --plot name the same file", "give them different names")
    for flag, path in given.items():
        check_not_input(path, inputs, flag)
        check_writable(path)
    return given


def _write(path, text: str) -> None:
    if path:
        from tfedge.fsutil import write_bytes_atomic

        write_bytes_atomic(path, text.encode())


def _print(report) -> None:
    source = " (cached)" if report.cached else ""
    click.echo(
        f"{report.model}: baseline {report.metric} {report.baseline:.4g} on {report.samples} "
        f"samples{source}; most robust first"
    )
    click.echo(f"each cut: channels or rank kept: {report.metric} (drop in {report.drop_unit})")
    echo_table(report.headers(), report.rows())
    for group in report.left_whole:
        reason = "; ".join(group["reasons"]) or "left whole"
        click.echo(f"left whole: {', '.join(group['layers'][:3])}: {reason}")
