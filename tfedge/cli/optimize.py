"""`tfedge optimize`."""

from __future__ import annotations

import click

from tfedge.cli.options import (
    echo_json,
    echo_table,
    json_option,
    profile_option,
    set_option,
    trust_model_option,
)


@click.command("optimize")
@click.argument("model", type=click.Path(exists=True), metavar="MODEL")
@click.option(
    "-r",
    "--recipe",
    required=True,
    metavar="NAME|FILE",
    help="A built-in recipe (see `tfedge recipes list`) or a recipe .yaml file.",
)
@click.option(
    "--data",
    type=click.Path(exists=True),
    help="Training and calibration data (.npz x, y; or one array per input and y); "
    "optional with --dry-run.",
)
@click.option(
    "--eval",
    "eval_data",
    type=click.Path(exists=True),
    help="Evaluation data (same layout as --data); optional with --dry-run.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    help="Output directory (replaced on success, or by the partial report of a failed pass).",
)
@click.option(
    "--resume",
    type=click.Path(exists=True, file_okay=False),
    metavar="OUTDIR",
    help="Continue the run that failed in OUTDIR from its failed stage, with the edited recipe.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check the recipe against the model (and --data, -o) and list, per pass, the layers it "
    "touches and skips and why; no training, nothing written.",
)
@click.option(
    "--target",
    "-t",
    help="Time every stage on this bench target (local, qemu or ssh://user@host, as in "
    "`tfedge bench`), and each channels stage's groups before and after: where pruning paid.",
)
@set_option
@trust_model_option
@profile_option
@json_option
def optimize_cmd(
    model,
    recipe,
    data,
    eval_data,
    output,
    resume,
    dry_run,
    target,
    overrides,
    trust_model,
    profile,
    as_json,
):
    """Compress a Keras model with a recipe, convert it to int8 TFLite and measure every stage.

    Writes OUTDIR/model.tflite, model.keras, report.json, report.md and recipe.yaml. When a
    pass fails (accuracy guard, NaN, conversion), OUTDIR gets the report of the stages before
    it (marked FAILED) and a checkpoint, no model.tflite; fix the recipe and continue with
    --resume OUTDIR.

    \b
    Example:
        tfedge optimize models/digits/model.keras --recipe prune-cluster-qat \\
            --data models/digits/train.npz --eval models/digits/test.npz -o out/digits
        tfedge optimize models/digits/model.keras --resume out/digits -r edited.yaml \\
            --data models/digits/train.npz --eval models/digits/test.npz
        tfedge optimize models/digits/model.keras -r prune-cluster-qat --dry-run \\
            --set prune.target_sparsity=0.6 --set qat.epochs=2
    """
    from tfedge.errors import UsageError
    from tfedge.fsutil import sha256_file
    from tfedge.optimize.pipeline import optimize
    from tfedge.optimize.recipe import load_recipe
    from tfedge.progress import progress_wanted, stage_log

    if dry_run:
        _dry_run(model, recipe, overrides, data, eval_data, output, resume, trust_model, as_json)
        return
    for flag, value in (("--data", data), ("--eval", eval_data)):
        if value is None:
            raise UsageError(
                f"missing option '{flag}'", "give --data TRAIN and --eval TEST (or use --dry-run)"
            )
    if output is None and resume is None:
        raise UsageError("give the output directory with -o OUTDIR", "or --resume OUTDIR")
    result = optimize(
        model,
        load_recipe(recipe, overrides),
        data,
        eval_data,
        output,
        profile=profile,
        progress=progress_wanted(as_json),
        log=stage_log(as_json),
        resume=resume,
        trust_model=trust_model,
        target=target,
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
            "float32/gzip",
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
    click.echo("float32/gzip: the float32 stage's .tflite bytes / this stage's gzip bytes")
    for note in result.notes:
        click.echo(f"Note: {note}", err=True)
    if result.resumed:
        reused = ", ".join(result.resumed["reused"])
        click.echo(f"Resumed from stage '{result.resumed['from_stage']}' (reused {reused})")
    click.echo(
        f"Wrote {result.model} (sha256 {sha256_file(result.model)[:12]}, recipe {result.recipe}) "
        f"in {result.seconds:.1f} s"
    )


def _dry_run(
    model, recipe, overrides, data, eval_data, output, resume, trust_model, as_json
) -> None:
    """``--dry-run``: the plan of the run (``tfedge.optimize.plan``), nothing trained or written."""
    from tfedge.errors import UsageError
    from tfedge.optimize.plan import format_plan, plan_optimize

    if resume is not None:
        raise UsageError(
            "--dry-run plans a new run and cannot be combined with --resume",
            "leave out --resume (give -o OUTDIR to check the output folder)",
        )
    plan = plan_optimize(
        model, recipe, data, eval_data, output, overrides=overrides, trust_model=trust_model
    )
    if as_json:
        echo_json(plan.to_dict())
    else:
        click.echo(format_plan(plan))


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
