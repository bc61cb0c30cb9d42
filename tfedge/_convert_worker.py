"""Child process that runs the TFLite converter (see ``tfedge.convert``).

Reads a job JSON, loads the model, checks the calibration data against its input, converts
and writes the flatbuffer. Errors go back as JSON (type, message, hint); a crash of the
converter kills only this process.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import numpy as np

from ._tf import prepare_environment
from .errors import ConversionError, DataError, TfedgeError

TF_TYPES = {"int8": "int8", "uint8": "uint8", "int16": "int16", "float32": "float32"}


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    try:
        data = run(job)
    except TfedgeError as exc:
        _write_result(job, {"error": {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}})
        return 1
    except Exception as exc:  # the converter's own errors: keep the useful line
        traceback.print_exc()
        _write_result(job, {"error": _converter_error(exc)})
        return 1
    _write_result(job, {"ok": True, **data})
    return 0


def run(job: dict) -> dict:
    from .loading import detect_format, load_keras_model

    fmt = detect_format(job["model"])
    prepare_environment(legacy_keras=not fmt.is_keras3)
    from ._tf import import_tf

    tf = import_tf()
    calib = np.load(job["calib"]) if job["calib"] else None
    if fmt.kind == "savedmodel":
        converter = tf.lite.TFLiteConverter.from_saved_model(fmt.path)
        inputs = _saved_model_inputs(tf, fmt.path)
    else:
        model = load_keras_model(fmt)
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        inputs = [(tuple(i.shape), _dtype_name(i.dtype)) for i in model.inputs]
    if calib is not None:
        _check_calibration(calib, [shape for shape, _ in inputs])
        calib = calib.astype(inputs[0][1])
    _configure(tf, converter, job["quant"], job["io"], calib, job.get("progress"), job.get("progress_fd"))
    flatbuffer = converter.convert()
    Path(job["output"]).write_bytes(flatbuffer)
    return {"keras": fmt.keras, "bytes": len(flatbuffer)}


def _dtype_name(dtype) -> str:
    return getattr(dtype, "name", str(dtype))


def _check_calibration(calib: np.ndarray, input_shapes: list[tuple]) -> None:
    from .data import check_fits

    if len(input_shapes) != 1:
        raise DataError(f"the model has {len(input_shapes)} inputs; calibration data holds one array",
                        "convert a single-input model, or use --quant dynamic / float16")
    check_fits(calib, input_shapes[0], "calibration data")


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
    integer_set = ops.TFLITE_BUILTINS_INT8 if quant == "int8" else \
        ops.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
    # Keep TFLITE_BUILTINS as a fallback so that ops without integer kernels stay float and
    # verification can name them, instead of the converter failing without saying where.
    converter.target_spec.supported_ops = [integer_set, ops.TFLITE_BUILTINS]
    converter.representative_dataset = _representative(calib, progress, progress_fd)
    if io != "float32":
        converter.inference_input_type = getattr(tf, TF_TYPES[io])
        converter.inference_output_type = getattr(tf, TF_TYPES[io])


def _representative(samples: np.ndarray, progress: bool, progress_fd):
    def generate():
        for sample in _maybe_progress(samples, progress, progress_fd):
            yield [sample[None, ...]]

    return generate


def _maybe_progress(samples, progress: bool, progress_fd):
    from .progress import progress_iter

    stream = open(progress_fd, "w", closefd=False) if progress and progress_fd is not None else None
    yield from progress_iter(samples, "Calibrating", stream is not None, file=stream)


def _saved_model_inputs(tf, path: str) -> list[tuple[tuple, str]]:
    loaded = tf.saved_model.load(path)
    sig = loaded.signatures.get("serving_default")
    if sig is None:
        raise ConversionError(f"{path} has no serving_default signature", "export the model with a serving signature")
    return [(tuple(spec.shape), spec.dtype.name) for spec in sig.structured_input_signature[1].values()]


def _converter_error(exc: Exception) -> dict:
    """The converter's useful line (it prints whole MLIR dumps), as a ConversionError payload."""
    text = str(exc)
    lines = [ln.split("error: ", 1)[1].strip() for ln in text.splitlines() if "error: " in ln]
    first = lines[0] if lines else (text.strip().splitlines() or [type(exc).__name__])[0]
    if first.startswith("loc("):  # an MLIR source location before the message
        first = first.rsplit("): ", 1)[-1]
    hint = "run with --debug to see the converter's log"
    if "TensorList" in text:
        hint = ("recurrent layers (LSTM/GRU) convert only with a fixed batch size or unroll=True: rebuild the "
                "model with Input(batch_size=1) or the layer with unroll=True")
    return {"type": "ConversionError", "message": "the TFLite converter failed: " + first[:400], "hint": hint}


def _write_result(job: dict, result: dict) -> None:
    Path(job["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
