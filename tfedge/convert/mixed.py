"""Per-layer precision: an int8 model whose named Keras layers compute in int16 or float.

A float32 ``.tflite`` (``tfedge convert --quant none``) is quantized with ai-edge-quantizer's
recipe API: every op to int8 weights and activations (as ``--quant int8``), then one rule per
op of each named layer, matched by the op's exact output tensor names (the quantizer's op
scope): ``int16`` gives it int16 activations with int8 weights (a16w8, LiteRT's int16x8
kernels), ``float`` leaves it float32 (a ``DEQUANTIZE``/``QUANTIZE`` pair around it). Ops are
named after the Keras layers as everywhere in tfedge (``tfedge.convert.layer_names``), so the
names are those ``tfedge bench --op-profile`` and the verifier print.

The result is checked with tfedge's own reader and verifier: each named layer's ops must hold
the precision asked, no other op may compute in float, and the model must run in the LiteRT
interpreter and give finite outputs. An int16 layer counts as integer (as ``--quant int16x8``
does): a profile with ``requires_full_integer`` accepts it and refuses ``float`` layers.

Example:
    >>> result = convert_mixed("model.keras", "mixed.tflite", "train.npz", {"conv2": "int16"})
    >>> [(p.layer, p.precision, p.ops) for p in result.layers]
    [('conv2', 'int16', ['CONV_2D'])]
    >>> ranked = rank_layers("model_f32.tflite", "train.npz", keras_layers("model.keras"))
    >>> ranked[0].layer  # the layer that loses most alone in int8
    'logits'
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfedge.convert.layer_names import KerasLayers, op_layers
from tfedge.convert.tflite_model import FLOAT_TYPES, Op, TfliteModel, read_tflite
from tfedge.convert.verify import BOUNDARY_OPS, FloatOp, find_float_ops
from tfedge.errors import ConversionError, ProfileError, UsageError, VerificationError
from tfedge.fsutil import atomic_path, check_not_input, check_writable
from tfedge.io.data import Dataset, Inputs, draw_samples, load_data, num_samples, take

PRECISIONS = ("int16", "float")  # what a named layer can get; every other op is int8
CHECK_SAMPLES = 8  # calibration samples the result is run on (finite outputs)


@dataclass
class LayerPrecision:
    """One named layer: the precision asked and its ops in the written model."""

    layer: str
    precision: str  # int16 or float
    ops: list[str] = field(default_factory=list)  # its compute ops, e.g. ['CONV_2D']


@dataclass
class MixedResult:
    """What ``apply_layer_precision`` wrote and what verification found (as ConvertResult)."""

    output: str
    size_bytes: int
    quant: str  # 'int8': the precision of every layer not named
    io: str  # the model's input and output types: 'int8', or 'int8 in, int16 out'
    full_integer: bool
    layers: list[LayerPrecision] = field(default_factory=list)
    float_ops: list[FloatOp] = field(default_factory=list)
    int16_ops: list[str] = field(default_factory=list)  # described as the verifier does
    calib_samples: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LayerSensitivity:
    """How far the model's outputs move when only ``layer`` is int8 (the rest float32):
    the mean squared difference over the float outputs' variance."""

    layer: str
    error: float


def convert_mixed(
    model,
    output: str | os.PathLike,
    calib,
    precisions: Mapping[str, str],
    *,
    calib_samples: int = 256,
    seed: int = 0,
    allow_float_ops: bool = False,
    profile=None,
    trust_model: bool = False,
    batch_size: int | None = None,
) -> MixedResult:
    """Convert a Keras ``model`` to int8 with ``precisions`` (``{layer: 'int16'|'float'}``).

    The model is converted to float32 first (``tfedge.convert``, in its child process), then
    quantized by :func:`apply_layer_precision`. Layer names and the profile are checked
    before anything converts.

    Raises:
        UsageError: an unknown layer or precision; ProfileError: a float layer on a profile
        that requires full-integer; and what ``convert`` and ``apply_layer_precision`` raise.
    """
    from tfedge.convert.converter import convert
    from tfedge.convert.keras_layers import keras_layers

    layers = keras_layers(model)
    device_profile = _load_profile(profile)
    known = _user_layers(layers) if layers is not None else None  # None: checked after
    check_precisions(precisions, known, device_profile)
    check_not_input(output, [model, calib])
    check_writable(output)
    started = time.perf_counter()
    samples = _samples(calib, calib_samples, seed)  # the data is checked before converting
    with tempfile.TemporaryDirectory(prefix="tfedge-mixed-") as work:
        float_model = Path(work) / "float32.tflite"
        convert(model, float_model, quant="none", trust_model=trust_model, batch_size=batch_size)
        result = apply_layer_precision(
            float_model,
            output,
            samples,
            precisions,
            layers=layers,
            calib_samples=num_samples(samples),
            seed=seed,
            allow_float_ops=allow_float_ops,
            profile=device_profile,
        )
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def apply_layer_precision(
    float_model: str | os.PathLike,
    output: str | os.PathLike,
    calib,
    precisions: Mapping[str, str],
    *,
    layers: KerasLayers | None = None,
    calib_samples: int = 256,
    seed: int = 0,
    allow_float_ops: bool = False,
    profile=None,
) -> MixedResult:
    """Quantize the float32 ``.tflite`` at ``float_model`` to int8, except ``precisions``.

    Args:
        float_model: a float32 model (``tfedge convert --quant none``), not changed.
        output: the ``.tflite`` to write; written atomically, never half-written.
        calib: calibration data: a path, a Dataset, an array of inputs or a dict by input name.
        precisions: ``{keras_layer: 'int16' | 'float'}``; may be empty (plain int8).
        layers: the Keras model's layers (``keras_layers(model)``) to name the ops; without
            them the names are guessed from the tensor names.
        calib_samples, seed: how many calibration samples to draw, and the seed.
        allow_float_ops: keep a model in which ops of layers not named stay float.
        profile: a device profile (name, path or DeviceProfile) to check the result against.

    Raises:
        UsageError, ProfileError, ConversionError, VerificationError, DataError.
    """
    started = time.perf_counter()
    device_profile = _load_profile(profile)
    source = read_tflite(float_model)
    check_float_model(source)
    names = op_layers(source.ops, layers)
    check_precisions(precisions, _layers_with_ops(source, names), device_profile)
    check_not_input(output, [float_model, calib])
    output = check_writable(output)
    samples = _samples(calib, calib_samples, seed)
    with atomic_path(output) as tmp_out:
        tmp_out.write_bytes(_quantize(Path(float_model), source, names, precisions, samples))
        report = read_tflite(tmp_out)
        result = _verify(report, layers, precisions, allow_float_ops, device_profile)
        _check_runs(tmp_out, take(samples, np.arange(min(CHECK_SAMPLES, num_samples(samples)))))
    result.output = str(output)
    result.calib_samples = num_samples(samples)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def check_precisions(precisions: Mapping[str, str], known: list[str] | None, profile=None) -> None:
    """Refuse an unknown layer or precision, and float layers on a full-integer profile.

    ``known``: the layers that may be named (None: not known yet, checked later).
    """
    for layer, precision in precisions.items():
        if precision not in PRECISIONS:
            raise UsageError(
                f"unknown precision '{precision}' for layer '{layer}'",
                f"choose one of {', '.join(PRECISIONS)}",
            )
        if known is not None and layer not in known:
            close = difflib.get_close_matches(layer, known, n=1, cutoff=0.5)
            raise UsageError(
                f"the model has no layer '{layer}' (asked {precision})",
                (f"did you mean '{close[0]}'? " if close else "")
                + f"the model's layers: {', '.join(known)}",
            )
    floats = sorted(layer for layer, p in precisions.items() if p == "float")
    if floats and profile is not None and profile.requires_full_integer:
        raise ProfileError(
            f"{profile.name} requires a full-integer model: float layer(s) "
            f"{', '.join(floats)} would compute in float",
            "give them int16 activations instead (--int16), which is integer",
        )


def rank_layers(
    float_model: str | os.PathLike,
    calib,
    layers: KerasLayers | None = None,
    *,
    calib_samples: int = 256,
    seed: int = 0,
    eval_samples: int = 64,
) -> list[LayerSensitivity]:
    """The layers of the float32 model at ``float_model``, the most sensitive to int8 first.

    Each layer alone is quantized to int8 (the rest stays float32) and scored by how far the
    model's outputs move on ``eval_samples`` of the calibration samples: the candidates for
    :func:`apply_layer_precision`'s int16 or float. No labels are needed.
    """
    from tfedge.analyze.evaluate import predict_tflite

    source = read_tflite(float_model)
    check_float_model(source)
    names = op_layers(source.ops, layers)
    samples = _samples(calib, calib_samples, seed)
    held = take(samples, np.arange(min(eval_samples, num_samples(samples))))
    reference = predict_tflite(str(float_model), held)
    spread = float(np.var(reference)) or 1.0
    _, calibration = _calibrated(Path(float_model), samples)
    ranked = []
    with tempfile.TemporaryDirectory(prefix="tfedge-rank-") as work:
        path = Path(work) / "one_layer.tflite"
        for layer in _layers_with_ops(source, names):
            path.write_bytes(_only_int8(float_model, source, names, layer, calibration))
            error = float(np.mean((predict_tflite(str(path), held) - reference) ** 2)) / spread
            ranked.append(LayerSensitivity(layer, error))
    return sorted(ranked, key=lambda s: -s.error)


def check_float_model(model: TfliteModel) -> None:
    """Refuse a model that is not float32 (already quantized, or float16 weights)."""
    if any(_is_compute(op) and not _touches_float(op) for op in model.ops) or any(
        t.dtype == "float16" for t in model.tensors
    ):
        raise UsageError(
            f"{model.path} is not a float32 model",
            "per-layer precision starts from a float32 conversion: tfedge convert MODEL "
            "--quant none",
        )


def _user_layers(layers: KerasLayers) -> list[str]:
    return [name for name, kind in layers.kinds.items() if kind != "InputLayer"]


def _layers_with_ops(model: TfliteModel, names: list[str]) -> list[str]:
    return list(
        dict.fromkeys(name for op, name in zip(model.ops, names) if name and _is_compute(op))
    )


def _is_compute(op: Op) -> bool:
    return op.name not in BOUNDARY_OPS


def _touches_float(op: Op) -> bool:
    return any(t.dtype in FLOAT_TYPES for t in op.inputs + op.outputs)


def _load_profile(profile):
    from tfedge.convert.converter import _load_profile as load

    return load(profile)


def _samples(calib, count: int, seed: int) -> Inputs:
    if calib is None:
        raise UsageError(
            "per-layer precision needs calibration data", "pass --calib train.npz (inputs in x)"
        )
    if count <= 0:
        raise UsageError(f"--calib-samples must be positive, got {count}", "try 256")
    if isinstance(calib, Dataset):
        calib = calib.x
    x = calib if isinstance(calib, (np.ndarray, dict)) else load_data(calib).x
    return draw_samples(x, count, seed)


# --- ai-edge-quantizer ----------------------------------------------------------------------


def _scope_regex(op: Op) -> str:
    """The quantizer's scope of ``op`` (its output names joined by ';', ending in ';')."""
    return "^" + re.escape(";".join(t.name for t in op.outputs) + ";") + "$"


def _quantize(
    path: Path, source: TfliteModel, names: list[str], precisions: Mapping[str, str], samples
) -> bytes:
    quantizer, calibration = _calibrated(path, samples)
    _add_layer_rules(quantizer, source, names, precisions)
    return _run_quantize(quantizer, calibration)


def _calibrated(path: Path, samples):
    """A quantizer with the all-int8 rule, and its calibration on ``samples``."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer import quantizer as aeq

    quantizer = aeq.Quantizer(str(path))
    quantizer.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 8, 8)
    with _quiet():
        try:
            calibration = quantizer.calibrate(_calibration_data(path, samples), num_threads=1)
        except (ValueError, RuntimeError) as exc:
            raise ConversionError(
                f"ai-edge-quantizer could not calibrate the model: {exc}",
                "check the calibration data fits the model's inputs",
            ) from None
    return quantizer, calibration


def _add_layer_rules(quantizer, source, names, precisions: Mapping[str, str]) -> None:
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    every_op = qtyping.TFLOperationName.ALL_SUPPORTED
    for op, layer in zip(source.ops, names):
        precision = precisions.get(layer)
        if precision == "int16":
            quantizer.add_static_config(_scope_regex(op), every_op, 16, 8)
        elif precision == "float":
            quantizer.update_quantization_recipe(
                _scope_regex(op), every_op, algorithm_key=AlgorithmName.NO_QUANTIZE
            )


def _only_int8(path, source, names, layer: str, calibration) -> bytes:
    """``path`` with only ``layer``'s ops in int8, from a calibration of the whole model."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer import quantizer as aeq

    quantizer = aeq.Quantizer(str(path))
    for op, name in zip(source.ops, names):
        if name == layer:
            quantizer.add_static_config(
                _scope_regex(op), qtyping.TFLOperationName.ALL_SUPPORTED, 8, 8
            )
    return _run_quantize(quantizer, calibration)


def _run_quantize(quantizer, calibration) -> bytes:
    with _quiet():
        try:
            result = quantizer.quantize(calibration, enable_progress_report=False)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ConversionError(
                f"ai-edge-quantizer could not quantize the model: {exc}",
                "try fewer layers at int16/float, or convert with --quant int8",
            ) from None
    return bytes(result.quantized_model)


def _calibration_data(path: Path, samples) -> dict[str, list[dict[str, np.ndarray]]]:
    """The quantizer's calibration set: one sample at a time, by signature input name."""
    from tfedge.analyze.evaluate import tflite_input_specs
    from tfedge.analyze.runtime import load_interpreter
    from tfedge.io.data import arrange_inputs, as_float32

    interp, _ = load_interpreter(str(path))
    signatures = list(interp.get_signature_list())
    if len(signatures) != 1:
        raise UsageError(
            f"{path} has {len(signatures)} signatures; per-layer precision needs exactly one",
            "convert the Keras model with tfedge convert --quant none",
        )
    specs = tflite_input_specs(interp)
    arrays = arrange_inputs(as_float32(samples), specs, "calibration data")
    count = num_samples(samples)
    return {
        signatures[0]: [
            {spec.name: a[i : i + 1] for spec, a in zip(specs, arrays)} for i in range(count)
        ]
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide the quantizer's progress bars and the runtime's native messages."""
    from tfedge._tf import quiet_native_stderr

    with (
        contextlib.redirect_stderr(io.StringIO()),
        quiet_native_stderr(),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # its calibration interpreter keeps every tensor
        yield


# --- verification ---------------------------------------------------------------------------


def _verify(
    report: TfliteModel,
    layers: KerasLayers | None,
    precisions: Mapping[str, str],
    allow_float_ops: bool,
    profile,
) -> MixedResult:
    names = op_layers(report.ops, layers)
    found = _layer_precisions(report, names, precisions)
    float_ops = find_float_ops(report, layers)
    unexpected = [
        f for f in float_ops if precisions.get(f.layer) != "float" and f.op not in BOUNDARY_OPS
    ]
    if unexpected and not allow_float_ops:
        listed = "; ".join(f.describe() for f in unexpected[:8])
        raise VerificationError(
            f"the quantized model still computes {len(unexpected)} op(s) in float that "
            f"were asked in int8: {listed}",
            "ai-edge-quantizer has no integer kernel for them; name them with --float, "
            "or pass --allow-float-ops to keep them",
            float_ops=unexpected,
        )
    int16_ops = [
        f"{op.name} (layer '{name}')" if name else op.name
        for op, name in zip(report.ops, names)
        if _is_compute(op) and _activation_type(op) == "int16"
    ]
    if profile is not None:
        from tfedge.targets.profiles import check_model_against_profile

        check_model_against_profile(
            profile,
            report.size_bytes,
            not float_ops,
            [f.describe() for f in float_ops],
            {op.name for op in report.ops},
        )
    return MixedResult(
        output=report.path,
        size_bytes=report.size_bytes,
        quant="int8",
        io=_io(report),
        full_integer=not float_ops,
        layers=found,
        float_ops=float_ops,
        int16_ops=int16_ops,
    )


def _layer_precisions(
    report: TfliteModel, names: list[str], precisions: Mapping[str, str]
) -> list[LayerPrecision]:
    """Each named layer's compute ops in ``report``; raise when one lacks its precision."""
    wanted = {"int16": {"int16"}, "float": set(FLOAT_TYPES)}
    found = []
    for layer, precision in precisions.items():
        ops = [op for op, name in zip(report.ops, names) if name == layer and _is_compute(op)]
        wrong = [op for op in ops if _activation_type(op) not in wanted[precision]]
        if not ops or wrong:
            shown = ", ".join(f"{op.name} in {_activation_type(op)}" for op in wrong) or "no ops"
            raise VerificationError(
                f"layer '{layer}' was asked in {precision}, but the quantized model has "
                f"{shown} for it",
                "ai-edge-quantizer does not support that precision for this op; "
                "pick another precision or layer",
            )
        found.append(LayerPrecision(layer, precision, [op.name for op in ops]))
    return found


def _activation_type(op: Op) -> str:
    """The type an op computes its output in (its first output's)."""
    return op.outputs[0].dtype if op.outputs else ""


def _io(report: TfliteModel) -> str:
    ins = sorted({t.dtype for t in report.inputs})
    outs = sorted({t.dtype for t in report.outputs})
    if ins == outs:
        return "/".join(ins)
    return f"{'/'.join(ins)} in, {'/'.join(outs)} out"


def _check_runs(path: Path, samples) -> None:
    """The model runs in the LiteRT interpreter and gives finite outputs."""
    from tfedge.analyze.evaluate import predict_tflite

    outputs = predict_tflite(str(path), samples)
    if not np.all(np.isfinite(outputs)):
        raise VerificationError(
            "the quantized model gives non-finite outputs in the LiteRT interpreter",
            "give the layers around the problem int16 instead of float, or more "
            "calibration samples",
        )
