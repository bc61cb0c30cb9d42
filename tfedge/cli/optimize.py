"""`tfedge optimize`."""

from __future__ import annotations

import click

from tfedge.cli.options import echo_json, echo_table, json_option, profile_option


@click.command("optimize")
@click.argument("model", type=click.Path(exists=True), metavar="MODEL")
@click.option(
    "--recipe",
    required=True,
    metavar="NAME|FILE",
    help="A built-in recipe (see `tfedge recipes list`) or a recipe .yaml file.",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True),
    help="Training and calibration data (.npz x, y; or one array per input and y).",
)
@click.option(
    "--eval",
    "eval_data",
    required=True,
    type=click.Path(exists=True),
    help="Evaluation data (same layout as --data).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),
    help="Output directory (replaced only on success).",
)
@profile_option
@json_option
def optimize_cmd(model, recipe, data, eval_data, output, profile, as_json):
    """Compress a Keras model with a recipe, convert it to int8 TFLite and measure every stage.

    Writes OUTDIR/model.tflite, model.keras, report.json, report.md and recipe.yaml.

    \b
    Example:
        tfedge optimize models/digits/model.keras --recipe prune-cluster-qat \\
            --data models/digits/train.npz --eval models/digits/test.npz -o out/digits
    """
    from tfedge.optimize.pipeline import optimize
    from tfedge.progress import progress_wanted

    result = optimize(
        model, recipe, data, eval_data, output, profile=profile, progress=progress_wanted(as_json)
    )
    if as_json:
        echo_json(result.to_dict())
        return
    base = result.stages[0].tflite_bytes
    echo_table(
        [
            "stage",
            "accuracy",
            "params",
            "non-zero",
            "unique/ch",
            "tflite B",
            "gzip B",
            "vs float32",
        ],
        [
            [
                s.name,
                _pct(s.accuracy),
                s.params,
                s.nonzero_params,
                s.unique_weights,
                s.tflite_bytes,
                s.gzip_bytes,
                f"{base / s.gzip_bytes:.1f}x",
            ]
            for s in result.stages
        ],
    )
    click.echo(
        f"Wrote {result.model} (recipe {result.recipe}, sha256 {result.recipe_sha256[:12]}) "
        f"in {result.seconds:.1f} s"
    )


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
