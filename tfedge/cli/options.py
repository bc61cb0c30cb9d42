"""Options shared by several commands, and output helpers."""

from __future__ import annotations

import json

import click

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object instead of tables."
)
profile_option = click.option(
    "--profile",
    metavar="NAME|FILE",
    help="Device profile (see `tfedge profiles list`) to check the model against.",
)

trust_model_option = click.option(
    "--trust-model",
    is_flag=True,
    help=(
        "Load Keras layers that carry Python code (Lambda). Without it such a model is "
        "refused: loading it would run its code."
    ),
)


def echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=_default))


def echo_table(headers: list[str], rows: list[list]) -> None:
    """Print a plain aligned text table."""
    cells = [[str(c) for c in headers]] + [[_cell(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            click.echo("  ".join("-" * w for w in widths))


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _default(obj):
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="PASS.KEY=VALUE",
    help="Change one option of the recipe, e.g. prune.target_sparsity=0.6 (repeatable; also "
    "train.KEY=VALUE, convert.KEY=VALUE, max_accuracy_drop=3; prune[1].epochs=2 for the "
    "second prune pass).",
)
