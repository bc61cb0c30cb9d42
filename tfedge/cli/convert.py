"""`tfedge convert`."""

from __future__ import annotations

import click

from tfedge.cli.options import echo_json, json_option, profile_option, trust_model_option

FLOAT_OPS_SHOWN = 10  # per-op lines printed for a full-integer conversion that kept float ops


@click.command("convert")
@click.argument("model", type=click.Path(exists=True), metavar="MODEL")
@click.option("-o", "--output", required=True, type=click.Path(), help="The .tflite file to write.")
@click.option(
    "--calib",
    type=click.Path(exists=True),
    help=(
        "Calibration data: .npz (x; or one array per input, named after it), .npy "
        "or an image folder."
    ),
)
@click.option(
    "--quant",
    type=click.Choice(["int8", "int16x8", "float16", "dynamic", "none"]),
    help="Quantization scheme [default: int8; none with --sparse].",
)
@click.option(
    "--io",
    type=click.Choice(["int8", "uint8", "int16", "float32"]),
    help="Input/output type [default: int8 for int8, int16 for int16x8, else float32].",
)
@click.option(
    "--calib-samples", type=int, default=256, show_default=True, help="Calibration samples to draw."
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for drawing calibration samples."
)
@click.option(
    "--allow-float-ops", is_flag=True, help="Keep a model that still computes some ops in float."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help=(
        "Fix the batch size of the converted model [default: 1 for models with recurrent "
        "layers (LSTM, GRU, ...), else dynamic]."
    ),
)
@click.option(
    "--sparse",
    is_flag=True,
    help=(
        "Store weights with enough zeros sparse (--quant none or float16), the format "
        "XNNPACK's sparse float kernels read; says whether the model matches their pattern."
    ),
)
@click.option(
    "--int16",
    "int16_layers",
    multiple=True,
    metavar="LAYER[,LAYER]",
    help=(
        "Keras layers to keep in int16 activations with int8 weights in an int8 model "
        "(ai-edge-quantizer; integer, as int16x8)."
    ),
)
@click.option(
    "--float",
    "float_layers",
    multiple=True,
    metavar="LAYER[,LAYER]",
    help="Keras layers to keep in float32 in an int8 model (not with a full-integer profile).",
)
@trust_model_option
@profile_option
@json_option
def convert_cmd(
    model,
    output,
    calib,
    quant,
    io,
    calib_samples,
    seed,
    allow_float_ops,
    batch_size,
    sparse,
    int16_layers,
    float_layers,
    trust_model,
    profile,
    as_json,
):
    """Convert a Keras model (.keras, .h5, SavedModel) to a verified TFLite model.

    \b
    Example:
        tfedge convert models/digits/model.keras --calib models/digits/train.npz -o digits.tflite
    """
    from tfedge.convert.converter import convert
    from tfedge.progress import progress_wanted, stage_log

    quant = quant or ("none" if sparse else "int8")
    log = stage_log(as_json)  # a log or CI job sees the conversion start (it takes a while)
    precisions = layer_precisions(int16_layers, float_layers)
    if precisions:
        _check_mixed_options(quant, io, sparse)
        if log:
            log(f"converting {model} to int8 with per-layer precision ...")
        from tfedge.convert.mixed import convert_mixed

        mixed = convert_mixed(
            model,
            output,
            calib,
            precisions,
            calib_samples=calib_samples,
            seed=seed,
            allow_float_ops=allow_float_ops,
            profile=profile,
            trust_model=trust_model,
            batch_size=batch_size,
        )
        _echo_result(mixed, as_json)
        return
    if log:
        log(f"converting {model} to {quant} ...")
    result = convert(
        model,
        output,
        calib=calib,
        quant=quant,
        io=io,
        calib_samples=calib_samples,
        seed=seed,
        allow_float_ops=allow_float_ops,
        profile=profile,
        progress=progress_wanted(as_json),
        trust_model=trust_model,
        batch_size=batch_size,
        sparse=sparse,
    )
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(
        f"Wrote {result.output}: {result.size_bytes:,} bytes, {result.quant}, "
        f"io {result.io}, {_verdict(result)}, {result.seconds:.1f} s"
    )
    for line in float_op_lines(result.float_ops, _integer_asked(result)):
        click.echo(f"  {line}")
    if result.sparse:
        for line in sparse_lines(result.sparse_tensors, result.xnnpack_sparse):
            click.echo(f"  {line}")


def layer_precisions(int16_layers, float_layers) -> dict[str, str]:
    """``{layer: 'int16'|'float'}`` from the repeatable, comma-separated options."""
    from tfedge.errors import UsageError

    precisions: dict[str, str] = {}
    for option, values, precision in (
        ("--int16", int16_layers, "int16"),
        ("--float", float_layers, "float"),
    ):
        for layer in (n.strip() for v in values for n in v.split(",")):
            if not layer:
                raise UsageError(f"{option} has an empty layer name", f"e.g. {option} conv2,fc1")
            if precisions.get(layer, precision) != precision:
                raise UsageError(
                    f"layer '{layer}' is given both --int16 and --float", "keep it in one of them"
                )
            precisions[layer] = precision
    return precisions


def _check_mixed_options(quant: str, io, sparse: bool) -> None:
    from tfedge.errors import UsageError

    if quant != "int8" or sparse or io not in (None, "int8"):
        given = (
            "--sparse"
            if sparse
            else f"--io {io}"
            if io not in (None, "int8")
            else f"--quant {quant}"
        )
        raise UsageError(
            f"--int16/--float apply to an int8 model, not with {given}",
            "drop it: the other layers are int8, the model's input int8",
        )


def _echo_result(result, as_json: bool) -> None:
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(
        f"Wrote {result.output}: {result.size_bytes:,} bytes, {result.quant}, "
        f"io {result.io}, {_verdict(result)}, {result.seconds:.1f} s"
    )
    for layer in getattr(result, "layers", []):
        click.echo(f"  layer {layer.layer}: {layer.precision} ({', '.join(layer.ops)})")
    for line in float_op_lines(result.float_ops, _integer_asked(result)):
        click.echo(f"  {line}")


def sparse_lines(sparse_tensors: int, check) -> list[str]:
    """What ``--sparse`` did, and XNNPACK's verdict on the result (``inspect`` prints it too)."""
    lines = [
        f"sparse: {sparse_tensors} weight tensor{'s' if sparse_tensors != 1 else ''} "
        "stored sparse (the converter stores a tensor sparse only when enough of it is zero)"
    ]
    if check is not None:
        lines.append(check.describe())
    return lines


def _integer_asked(result) -> bool:
    from tfedge.convert.converter import FULL_INTEGER_MODES

    return result.quant in FULL_INTEGER_MODES


def _verdict(result) -> str:
    if result.full_integer:
        return "full-integer"
    if not _integer_asked(result):
        return "float (as --quant asks)"
    count = len(result.float_ops)
    return f"NOT full-integer ({count} float op{'s' if count != 1 else ''})"


def float_op_lines(float_ops, integer_asked: bool, shown: int = FLOAT_OPS_SHOWN) -> list[str]:
    """The float ops to print: one summary line for a model that was asked to be float, else
    one line per op, the first ``shown`` of them (``--json`` lists them all)."""
    from tfedge.convert.verify import summarize_float_ops

    if not float_ops:
        return []
    if not integer_asked:
        return [f"float model: {summarize_float_ops(float_ops)}"]
    lines = [f"float op: {op.describe()}" for op in float_ops[:shown]]
    if len(float_ops) > shown:
        lines.append(f"... and {len(float_ops) - shown} more float ops (--json lists them all)")
    return lines
