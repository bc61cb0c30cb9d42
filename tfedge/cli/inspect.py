"""`tfedge inspect`."""

from __future__ import annotations

import click

from tfedge.cli.options import (
    echo_json,
    echo_table,
    json_option,
    profile_option,
    trust_model_option,
)


@click.command("inspect")
@click.argument("model", type=click.Path(exists=True), metavar="MODEL")
@trust_model_option
@profile_option
@json_option
def inspect_cmd(model, trust_model, profile, as_json):
    """Show what a .tflite or Keras model holds: ops, dtypes, sizes, full-integer verdict,
    and the memory it needs (activation arena, weights).

    With --profile, a .tflite's memory estimate (arena + weights) is checked against the
    profile's RAM budget and its size against the model budget: exit 1 when over.

    \b
    Example:
        tfedge inspect digits.tflite --json
        tfedge inspect digits_int8.tflite --profile rpi-zero-2w
    """
    from tfedge.analyze.inspect import inspect

    prof = _tflite_profile(model, profile)
    report = inspect(model, trust_model=trust_model)
    verdicts = _budget_verdicts(report, prof)
    if as_json:
        data = report.to_dict()
        if prof is not None:
            data["profile"] = prof.name
            data["budgets"] = [v.to_dict() for v in verdicts]
        echo_json(data)
    elif report.format == "tflite":
        _print_tflite(report)
    else:
        _print_keras(report)
    if prof is not None:
        from tfedge.analyze.memory import enforce_memory_budgets

        if not as_json:
            for v in verdicts:
                click.echo(v.line(prof.name))
        enforce_memory_budgets(prof, verdicts)


def _tflite_profile(model: str, profile: str | None):
    """The profile to check a .tflite against (loaded before any work), or None."""
    if profile is None:
        return None
    from tfedge.errors import UsageError
    from tfedge.io.models import detect_format
    from tfedge.targets.profiles import load_profile

    prof = load_profile(profile)
    if detect_format(model).kind != "tflite":
        raise UsageError(
            "--profile checks a .tflite model's memory and size",
            "convert the model first (tfedge convert), then inspect the .tflite",
        )
    return prof


def _budget_verdicts(report, prof) -> list:
    if prof is None:
        return []
    from tfedge.analyze.memory import memory_verdicts

    return memory_verdicts(prof, report.size_bytes, report.arena_bytes, report.weights_bytes)


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
    click.echo(
        f"memory: activations ~{_kib(r.arena_bytes)} KiB (arena, greedy plan; "
        f"{_kib(r.activation_peak_bytes)} KiB live at most), weights {_kib(r.weights_bytes)} KiB"
    )
    for kind, tensors in (("input", r.inputs), ("output", r.outputs)):
        for t in tensors:
            click.echo(
                f"{kind}: {t.name} {tuple(t.shape)} {t.dtype} "
                f"scale={t.scale} zero_point={t.zero_point}"
            )
    _print_sparse(r)
    if r.full_integer:
        click.echo("full-integer: yes")
        return
    from tfedge.cli.convert import float_op_lines

    click.echo("full-integer: no, a float model" if r.float_model else "full-integer: NO")
    for line in float_op_lines(r.float_ops, integer_asked=not r.float_model):
        click.echo(f"  {line}")


def _print_sparse(r) -> None:
    """Sparse-stored weights (``convert --sparse``) and XNNPACK's verdict on them."""
    if not getattr(r, "sparse_tensors", None):
        return
    click.echo(
        f"sparse tensors: {len(r.sparse_tensors)} (parameters count them dense; "
        "density = non-zeros / dense size)"
    )
    echo_table(
        ["tensor", "shape", "dtype", "stored bytes", "dense bytes", "density", "encoding"],
        [
            [
                s.name,
                "x".join(map(str, s.shape)),
                s.dtype,
                s.stored_bytes,
                s.dense_bytes,
                f"{100 * s.density:.1f}%",
                s.encoding,
            ]
            for s in r.sparse_tensors
        ],
    )
    if r.xnnpack_sparse is not None:
        click.echo(r.xnnpack_sparse.describe())


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


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f}"
