"""`tfedge evaluate`."""

from __future__ import annotations

import click

from tfedge.cli.options import echo_json, echo_table, json_option, trust_model_option


@click.command("evaluate")
@click.argument("model", type=click.Path(exists=True), metavar="MODEL")
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True),
    help="Evaluation data: .npz with x (or one array per input) and y.",
)
@click.option(
    "--compare", "other", type=click.Path(exists=True), help="A second model to compare against."
)
@trust_model_option
@json_option
def evaluate_cmd(model, data, other, trust_model, as_json):
    """Accuracy (classifiers) or MSE of a Keras or .tflite model.

    \b
    Example:
        tfedge evaluate digits.tflite --data models/digits/test.npz \\
            --compare models/digits/model.keras
    """
    from tfedge.analyze.evaluate import compare, evaluate
    from tfedge.progress import progress_wanted

    progress = progress_wanted(as_json)
    if other:
        result = compare(model, other, data, progress=progress, trust_model=trust_model)
        echo_json(result.to_dict()) if as_json else _print_compare(result)
        return
    result = evaluate(model, data, progress=progress, trust_model=trust_model)
    echo_json(result.to_dict()) if as_json else _print_one(result)


def _metric(r) -> str:
    if r.accuracy is not None:
        return f"accuracy {r.accuracy:.4f}"
    return f"mse {r.mse:.6g}" if r.mse is not None else "no labels"


def _print_one(r) -> None:
    click.echo(f"{r.model}: {_metric(r)} on {r.samples} samples")


def _print_compare(c) -> None:
    echo_table(
        ["model", "metric", "samples"],
        [[c.a.model, _metric(c.a), c.a.samples], [c.b.model, _metric(c.b), c.b.samples]],
    )
    if c.agreement is not None:
        click.echo(f"top-1 agreement: {c.agreement:.4f}")
    click.echo(f"max |difference| of outputs: {c.max_abs_diff:.6g}")
