"""Child process that runs the TFLite converter (see ``tfedge.convert.converter``).

Reads a job JSON, loads the model, checks the calibration data against its inputs, converts
and writes the flatbuffer. Errors go back as JSON (type, message, hint); a crash of the
converter kills only this process.

A model with several inputs is calibrated with one dict per sample keyed by input name: the
converter's signature keeps the Keras input names, while the order of its input tensors may
differ from the Keras model's.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import numpy as np

from tfedge._tf import prepare_environment
from tfedge.errors import ConversionError, TfedgeError
from tfedge.io.data import InputSpec, arrange_inputs, keras_input_specs

QAT_LAYERS = {"QuantizeLayer", "QuantizeWrapper", "QuantizeWrapperV2"}
FAKE_QUANT_OPS = {
    "FakeQuantWithMinMaxVars",
    "FakeQuantWithMinMaxVarsPerChannel",
    "FakeQuantWithMinMaxArgs",
    "QuantizeAndDequantizeV2",
    "QuantizeAndDequantizeV3",
    "QuantizeAndDequantizeV4",
}
TF_TYPES = {"int8": "int8", "uint8": "uint8", "int16": "int16", "float32": "float32"}


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    try:
        data = run(job)
    except TfedgeError as exc:
        _write_result(
            job, {"error": {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}}
        )
        return 1
    except Exception as exc:  # the converter's own errors: keep the useful line
        traceback.print_exc()
        _write_result(job, {"error": _converter_error(exc)})
        return 1
    _write_result(job, {"ok": True, **data})
    return 0


def run(job: dict) -> dict:
    from tfedge.io.models import detect_format, load_keras_model

    fmt = detect_format(job["model"])
    prepare_environment(legacy_keras=not fmt.is_keras3)
    from tfedge._tf import import_tf

    tf = import_tf()
    if fmt.kind == "savedmodel":
        make = lambda: tf.lite.TFLiteConverter.from_saved_model(fmt.path)  # noqa: E731
        loaded = tf.saved_model.load(fmt.path)
        inputs = _saved_model_inputs(loaded, fmt.path)
        qat = _has_fake_quant(loaded)
    else:
        model = load_keras_model(fmt)
        make = lambda: tf.lite.TFLiteConverter.from_keras_model(model)  # noqa: E731
        inputs = keras_input_specs(model)
        qat = any(type(layer).__name__ in QAT_LAYERS for layer in model.layers)
    calib = _calibration(job["calib"], inputs) if job["calib"] else None
    flatbuffer = _convert_qat_ranges(tf, make(), job) if qat and job["quant"] == "int8" else None
    qat_ranges = flatbuffer is not None
    if flatbuffer is None:
        converter = make()
        _configure(
            tf,
            converter,
            job["quant"],
            job["io"],
            calib,
            job.get("progress"),
            job.get("progress_fd"),
        )
        flatbuffer = converter.convert()
    Path(job["output"]).write_bytes(flatbuffer)
    return {"keras": fmt.keras, "bytes": len(flatbuffer), "qat_ranges": qat_ranges}


def _convert_qat_ranges(tf, converter, job: dict) -> bytes | None:
    """Convert a quantization-aware model with the ranges it learned, without calibration.

    With a representative dataset the converter also calibrates a QAT model (post-training
    quantization runs on top of the fake-quant ranges): the model input then gets the
    calibrated range, and wherever that differs from the range of tfmot's input QuantizeLayer
    (it saw only the training batches, not the validation split) a float DEQUANTIZE/QUANTIZE
    pair is left at the input. Returns ``None`` when the result is not full-integer (layers the
    qat pass left to post-training quantization have no ranges), so the caller calibrates.
    """
    from tfedge.convert.tflite_model import parse_tflite
    from tfedge.convert.verify import find_float_ops

    # tfmot's recipe: no representative dataset, no TFLITE_BUILTINS_INT8 target (the converter
    # asks for calibration data when that target is set); the fake-quant ops give every range.
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if job["io"] != "float32":
        converter.inference_input_type = getattr(tf, TF_TYPES[job["io"]])
        converter.inference_output_type = getattr(tf, TF_TYPES[job["io"]])
    try:
        flatbuffer = converter.convert()
    except Exception:  # noqa: BLE001  (the calibrated conversion below reports the converter's error)
        return None
    if find_float_ops(parse_tflite(flatbuffer)):
        return None
    return flatbuffer


def _calibration(path: str, inputs: list[InputSpec]) -> dict[str, np.ndarray]:
    """The calibration samples per input name, checked against the inputs and cast to their dtypes."""
    with np.load(path, allow_pickle=False) as f:
        loaded = {name: f[name] for name in f.files}
    x = loaded["x"] if list(loaded) == ["x"] else loaded  # one array (x) or one per input name
    arrays = arrange_inputs(x, inputs, "calibration data")
    return {spec.name: array.astype(spec.dtype) for spec, array in zip(inputs, arrays)}


def _configure(tf, converter, quant: str, io: str, calib, progress: bool, progress_fd) -> None:
    if quant == "none":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quant == "float16":
        converter.target_spec.supported_types = [tf.float16]
        return
    if quant == "dynamic":
        return
    ops = tf.lite.OpsSet
    integer_set = (
        ops.TFLITE_BUILTINS_INT8
        if quant == "int8"
        else ops.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
    )
    # Keep TFLITE_BUILTINS as a fallback so that ops without integer kernels stay float and
    # verification can name them, instead of the converter failing without saying where.
    converter.target_spec.supported_ops = [integer_set, ops.TFLITE_BUILTINS]
    converter.representative_dataset = _representative(calib, progress, progress_fd)
    if io != "float32":
        converter.inference_input_type = getattr(tf, TF_TYPES[io])
        converter.inference_output_type = getattr(tf, TF_TYPES[io])


def _representative(samples: dict[str, np.ndarray], progress: bool, progress_fd):
    """One sample at a time: a list for a single input, a dict by signature input name for several."""
    count = len(next(iter(samples.values())))

    def generate():
        for i in _maybe_progress(range(count), progress, progress_fd):
            one = {name: array[i : i + 1] for name, array in samples.items()}
            yield list(one.values()) if len(one) == 1 else one

    return generate


def _maybe_progress(samples, progress: bool, progress_fd):
    from tfedge.progress import progress_iter

    stream = open(progress_fd, "w", closefd=False) if progress and progress_fd is not None else None
    yield from progress_iter(samples, "Calibrating", stream is not None, file=stream)


def _has_fake_quant(loaded) -> bool:
    """The SavedModel's serving graph holds training-time quantization (QAT) ops."""
    sig = loaded.signatures.get("serving_default")
    if sig is None:
        return False
    graph = sig.graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return any(n.op in FAKE_QUANT_OPS for n in nodes)


def _saved_model_inputs(loaded, path: str) -> list[InputSpec]:
    sig = loaded.signatures.get("serving_default")
    if sig is None:
        raise ConversionError(
            f"{path} has no serving_default signature", "export the model with a serving signature"
        )
    return [
        InputSpec(name, tuple(spec.shape), spec.dtype.name)
        for name, spec in sig.structured_input_signature[1].items()
    ]


def _converter_error(exc: Exception) -> dict:
    """The converter's useful line (it prints whole MLIR dumps), as a ConversionError payload."""
    text = str(exc)
    lines = [ln.split("error: ", 1)[1].strip() for ln in text.splitlines() if "error: " in ln]
    first = lines[0] if lines else (text.strip().splitlines() or [type(exc).__name__])[0]
    if first.startswith("loc("):  # an MLIR source location before the message
        first = first.rsplit("): ", 1)[-1]
    hint = "run with --debug to see the converter's log"
    if "TensorList" in text:
        hint = (
            "recurrent layers (LSTM/GRU) convert only with a fixed batch size or unroll=True: rebuild the "
            "model with Input(batch_size=1) or the layer with unroll=True"
        )
    return {
        "type": "ConversionError",
        "message": "the TFLite converter failed: " + first[:400],
        "hint": hint,
    }


def _write_result(job: dict, result: dict) -> None:
    Path(job["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
