"""`tfedge inspect`."""

from __future__ import annotations

import click

from tfedge.cli.options import echo_json, echo_table, json_option, trust_model_option


@click.command("inspect")
@click.argument("model", type=click.Path(exists=True), metavar="MODEL")
@trust_model_option
@json_option
def inspect_cmd(model, trust_model, as_json):
    """Show what a .tflite or Keras model holds: ops, dtypes, sizes, full-integer verdict.

    \b
    Example:
        tfedge inspect digits.tflite --json
    """
    from tfedge.analyze.inspect import inspect

    report = inspect(model, trust_model=trust_model)
    if as_json:
        echo_json(report.to_dict())
    elif report.format == "tflite":
        _print_tflite(report)
    else:
        _print_keras(report)


def _print_tflite(r) -> None:
    click.echo(
        f"{r.path}: {r.size_bytes:,} bytes, {r.parameters:,} parameters, {r.macs:,} MACs, "
        f"min runtime {r.min_runtime_version or '?'}"
    )
    echo_table(
        ["op", "count", "input dtypes", "output dtypes"],
        [[o.op, o.count, ",".join(o.input_dtypes), ",".join(o.output_dtypes)] for o in r.ops],
    )
    click.echo("bytes by dtype: " + ", ".join(f"{k} {v:,}" for k, v in r.bytes_by_dtype.items()))
    for kind, tensors in (("input", r.inputs), ("output", r.outputs)):
        for t in tensors:
            click.echo(
                f"{kind}: {t.name} {tuple(t.shape)} {t.dtype} "
                f"scale={t.scale} zero_point={t.zero_point}"
            )
    if r.full_integer:
        click.echo("full-integer: yes")
        return
    from tfedge.cli.convert import float_op_lines

    click.echo("full-integer: no, a float model" if r.float_model else "full-integer: NO")
    for line in float_op_lines(r.float_ops, integer_asked=not r.float_model):
        click.echo(f"  {line}")


def _print_keras(r) -> None:
    click.echo(
        f"{r.path}: {r.format}, saved with Keras {r.keras_version or r.keras}, "
        f"{r.params:,} parameters ({r.trainable_params:,} trainable)"
    )
    echo_table(
        ["layer", "type", "output shape", "params"],
        [[l.name, l.type, l.output_shape, l.params] for l in r.layers],
    )
    if r.compat:
        click.echo("\ncompression passes (yes / no / - nothing to do):")
        echo_table(
            ["layer", "prune", "cluster", "qat", "why not"],
            [[c.layer, c.prune, c.cluster, c.qat, c.notes] for c in r.compat],
        )
    elif getattr(r, "compat_unavailable", ""):
        click.echo(f"\ncompression: not available: {r.compat_unavailable}")
