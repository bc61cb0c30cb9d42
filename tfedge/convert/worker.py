"""Child process that runs the TFLite converter (see ``tfedge.convert.converter``).

Reads a job JSON, loads the model, checks the calibration data against its inputs, converts
and writes the flatbuffer. Errors go back as JSON (type, message, hint); a crash of the
converter kills only this process.

A model with several inputs is calibrated with one dict per sample keyed by input name: the
converter's signature keeps the Keras input names, while the order of its input tensors may
differ from the Keras model's.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

from tfedge._tf import prepare_environment
from tfedge.convert.keras3_ops import integer_friendly_keras3_ops
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
KERAS_MODEL_TYPE = 2  # conversion_metadata's ModelType.KERAS_MODEL
# Layers the converter lowers to a loop over time steps (a TensorList sized by the batch): they
# convert only from a signature with a fixed batch size.
RECURRENT_LAYERS = {
    "RNN",
    "SimpleRNN",
    "LSTM",
    "GRU",
    "LSTMV1",
    "GRUV1",
    "Bidirectional",
    "ConvLSTM1D",
    "ConvLSTM2D",
    "ConvLSTM3D",
}


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    _die_with_parent(job_path, job.get("parent_pid"))
    try:
        data = run(job)
    except TfedgeError as exc:
        _write_result(
            job, {"error": {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}}
        )
        return 1
    except Exception as exc:  # the converter's own errors: keep the useful line
        traceback.print_exc()
        _write_result(job, {"error": converter_error(exc)})
        return 1
    _write_result(job, {"ok": True, **data})
    return 0


def _die_with_parent(job_path: str, parent: int | None) -> None:
    """Linux: end this worker when tfedge ends, even by SIGKILL, and leave nothing behind.

    The kernel sends SIGTERM when the parent dies (``PR_SET_PDEATHSIG``); the parent can no
    longer clean up then, so the worker removes the ``.part`` output and the job folder.
    ``parent`` is the pid tfedge wrote into the job: a parent that died while this worker was
    still importing is noticed too (its own ``getppid()`` would already be the reaper's).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = parent or os.getppid()

    def orphaned(signum, frame):
        if _parent_gone(parent):
            import shutil

            with contextlib.suppress(OSError, ValueError):
                output = json.loads(Path(job_path).read_text()).get("output")
                if output:
                    Path(output).unlink(missing_ok=True)
            shutil.rmtree(Path(job_path).parent, ignore_errors=True)
        signal.signal(signum, signal.SIG_DFL)  # die of the signal, as without this handler
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, orphaned)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent or not _alive(parent):  # it died before prctl took effect
        orphaned(int(signal.SIGTERM), None)


def _parent_gone(parent: int, wait: float = 2.0) -> bool:
    """Whether ``parent`` ended, waiting up to ``wait`` seconds for it to finish ending.

    The death signal comes when the *thread* of tfedge that started this worker ends: while
    a SIGKILL takes down tfedge's other threads, ``getppid()`` still names tfedge.
    """
    import time

    deadline = time.monotonic() + wait
    while os.getppid() == parent and _alive(parent):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def run(job: dict) -> dict:
    from tfedge.io.models import detect_format, load_keras_model

    fmt = detect_format(job["model"])
    prepare_environment(legacy_keras=not fmt.is_keras3)
    model = fmt.path if fmt.kind == "savedmodel" else load_keras_model(fmt)
    calib = _load_samples(job["calib"]) if job["calib"] else None
    flatbuffer, qat_ranges = convert_model(
        model,
        job["quant"],
        job["io"],
        calib,
        bool(job.get("progress")),
        job.get("progress_fd"),
        batch_size=job.get("batch_size"),
        sparse=bool(job.get("sparse")),
    )
    Path(job["output"]).write_bytes(flatbuffer)
    return {"keras": fmt.keras, "bytes": len(flatbuffer), "qat_ranges": qat_ranges}


def convert_model(
    model,
    quant: str,
    io: str,
    samples=None,
    progress: bool = False,
    progress_fd=None,
    *,
    batch_size: int | None = None,
    sparse: bool = False,
) -> tuple[bytes, bool]:
    """Convert in this process: a loaded Keras model, or a SavedModel directory given by path.

    ``samples`` are the calibration inputs (an array, or a dict keyed by input name). Returns
    the flatbuffer and whether a QAT model converted from its learned ranges. The caller is a
    disposable child (this worker, or the optimize worker): a converter crash ends only it.

    A Keras model with recurrent layers converts from a signature with batch size
    ``batch_size`` (default 1): the converter cannot size their time loop for a dynamic batch.
    Other models keep their dynamic batch unless ``batch_size`` is given. ``sparse`` (float
    modes only) stores weights with enough zeros in TFLite's sparse format (DENSIFY ops).
    """
    from tfedge._tf import import_tf

    tf = import_tf()
    batch = None
    with contextlib.ExitStack() as stack:
        keras3 = type(model).__module__.split(".")[0] == "keras"
        if keras3:
            stack.enter_context(integer_friendly_keras3_ops())
        if isinstance(model, (str, os.PathLike)):
            path = str(model)
            inputs, qat = _inspect_saved_model(path)
        else:
            inputs = keras_input_specs(model)
            qat = any(type(layer).__name__ in QAT_LAYERS for layer in model.layers)
            batch = batch_size or (1 if recurrent_layers(model) else None)
            if quant in ("int8", "int16x8"):
                check_integer_recurrent(model, quant)
            if batch is not None:
                inputs = with_batch(inputs, batch)
        if batch is not None and not keras3:
            traced = _fixed_batch_function(tf, model, inputs)  # tf_keras: trace, no export
            make = lambda: tf.lite.TFLiteConverter.from_concrete_functions([traced], model)  # noqa: E731
        elif batch is not None:  # Keras 3: export with the fixed signature
            path = stack.enter_context(tempfile.TemporaryDirectory(prefix="tfedge-batch-"))
            path += "/model"
            fixed_batch_savedmodel(model, inputs, path)
            make = lambda: tf.lite.TFLiteConverter.from_saved_model(path)  # noqa: E731
        elif isinstance(model, (str, os.PathLike)):
            make = lambda: tf.lite.TFLiteConverter.from_saved_model(path)  # noqa: E731
        elif not keras3 and (lean := _lean_savedmodel(tf, model, inputs, stack)):
            make = lambda: _keras_converter(tf, lean)  # noqa: E731
        else:
            make = lambda: tf.lite.TFLiteConverter.from_keras_model(model)  # noqa: E731
        calib = _calibration(samples, inputs) if samples is not None else None
        flatbuffer = _convert_qat_ranges(tf, make(), io) if qat and quant == "int8" else None
        if flatbuffer is not None:
            return flatbuffer, True
        converter = make()
        _configure(tf, converter, quant, io, calib, progress, progress_fd)
        if sparse:
            optimizations = [o for o in converter.optimizations if o != tf.lite.Optimize.DEFAULT]
            if quant == "float16":  # DEFAULT is what applies supported_types=[float16]
                optimizations.insert(0, tf.lite.Optimize.DEFAULT)
            converter.optimizations = [*optimizations, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        return converter.convert(), False


def recurrent_layers(model) -> list[str]:
    """``"name (Class)"`` of each recurrent layer with a time loop (not unrolled) of a Keras
    model, nested models included."""
    found = []
    for layer in getattr(model, "layers", []):
        kind = type(layer).__name__
        inner = layer.layer if kind == "TimeDistributed" else layer
        if type(inner).__name__ in RECURRENT_LAYERS and not _unrolled(inner):
            found.append(f"'{layer.name}' ({kind})")
        elif hasattr(layer, "layers"):
            found += recurrent_layers(layer)
    return found


def _unrolled(layer) -> bool:
    inner = getattr(layer, "forward_layer", None)  # Bidirectional
    return bool(getattr(inner if inner is not None else layer, "unroll", False))


def check_integer_recurrent(model, quant: str) -> None:
    """Refuse, naming the layer, a recurrent layer the converter cannot quantize to ``quant``.

    A time loop the converter keeps as a WHILE op (every Keras 3 recurrent layer, a tf_keras
    GRU or SimpleRNN) crashes its calibration; a tf_keras LSTM becomes the fused
    UNIDIRECTIONAL_SEQUENCE_LSTM op, which has an int8 kernel but no int16x8 one. Unrolled
    layers are plain ops.
    """
    blocked = [
        f"'{layer.name}' ({type(layer).__name__})"
        for layer in _all_layers(model)
        if type(layer).__name__ in RECURRENT_LAYERS and not _integer_recurrent_ok(layer, quant)
    ]
    if blocked:
        raise ConversionError(
            f"--quant {quant} cannot quantize recurrent layer {blocked[0]}"
            + (f" and {len(blocked) - 1} more" if len(blocked) > 1 else "")
            + ": the TFLite converter keeps its time loop as a WHILE op it cannot calibrate",
            "build the layer with unroll=True (same weights) for full-integer, or convert "
            "with --quant dynamic or --quant float16",
        )


def _integer_recurrent_ok(layer, quant: str) -> bool:
    if getattr(layer, "unroll", False):
        return True
    inner = getattr(layer, "forward_layer", None) or getattr(layer, "layer", None)
    if inner is not None and inner is not layer:  # Bidirectional / TimeDistributed
        return _integer_recurrent_ok(inner, quant)
    keras2 = type(layer).__module__.split(".")[0] == "tf_keras"
    # The fused LSTM op has int8 kernels only: int16x8 leaves it float, with float I/O.
    return keras2 and type(layer).__name__ == "LSTM" and quant == "int8"


def _all_layers(model) -> list:
    out = []
    for layer in getattr(model, "layers", []):
        out += _all_layers(layer) if hasattr(layer, "layers") else [layer]
    return out


def with_batch(inputs: list[InputSpec], batch: int) -> list[InputSpec]:
    return [InputSpec(i.name, (batch, *i.shape[1:]), i.dtype) for i in inputs]


def fixed_batch_savedmodel(model, inputs: list[InputSpec], path: str) -> None:
    """Save ``model`` as a SavedModel whose serving signature has the shapes of ``inputs``.

    Keras 3 exports with an input signature; a tf_keras model is saved with a traced
    signature (its weights as variables, frozen by the converter).
    """
    from tfedge._tf import import_tf

    tf = import_tf()
    if type(model).__module__.split(".")[0] == "keras":
        keras3_savedmodel(model, path, inputs)
        return
    tf.saved_model.save(model, path, signatures=_fixed_batch_function(tf, model, inputs))


def keras3_savedmodel(model, path: str, inputs: list[InputSpec] | None = None) -> None:
    """Export a Keras 3 model for the converter, with the fixed shapes of ``inputs`` when given,
    its layer normalization traced without a float NEG (``tfedge.convert.keras3_ops``)."""
    from tfedge._tf import import_tf

    options = {}
    if inputs is not None:
        tf = import_tf()
        options["input_signature"] = [tf.TensorSpec(i.shape, i.dtype, name=i.name) for i in inputs]
    with integer_friendly_keras3_ops():
        model.export(path, verbose=False, **options)


def _fixed_batch_function(tf, model, inputs: list[InputSpec]):
    """A tf_keras model's inference traced for the shapes of ``inputs`` (named after them)."""
    specs = [tf.TensorSpec(i.shape, i.dtype, name=i.name) for i in inputs]

    @tf.function(input_signature=specs)
    def serve(*args):
        return model(args[0] if len(args) == 1 else list(args), training=False)

    return serve.get_concrete_function()


def _lean_savedmodel(tf, model, inputs: list[InputSpec], stack) -> str | None:
    """A tf_keras model's inference alone saved as a SavedModel (its path), for the converter.

    ``from_keras_model`` saves the Keras model itself, and tf_keras then also traces every
    layer's call functions so that Keras could reload it, which the converter never reads:
    EfficientNetB0 (32 px, int8) converts in 11 s this way against 26 s. The signature is the
    one Keras writes (inputs named after the model's inputs, outputs after ``output_names``),
    so the flatbuffer has the same tensors and signature. ``None`` (the caller falls back to
    ``from_keras_model``) for a model this cannot save.
    """
    specs = [tf.TensorSpec(i.shape, i.dtype, name=i.name) for i in inputs]

    @tf.function(input_signature=specs)
    def serve(*args):
        out = model(args[0] if len(args) == 1 else list(args), training=False)
        if isinstance(out, dict):
            return out
        return dict(zip(model.output_names, tf.nest.flatten(out), strict=True))

    module = tf.Module()
    module.variables_of_model = list(model.variables)
    path = stack.enter_context(tempfile.TemporaryDirectory(prefix="tfedge-lean-")) + "/model"
    try:
        signature = serve.get_concrete_function()
        tf.saved_model.save(module, path, signatures={"serving_default": signature})
    except Exception:  # noqa: BLE001  (from_keras_model then saves it its own way)
        return None
    return path


def _keras_converter(tf, lean: str):
    """A converter of ``_lean_savedmodel``'s SavedModel whose ``.tflite`` says, as
    ``from_keras_model``'s does, that it was converted from a Keras model (the only byte in
    which the two differ)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(lean)
    metadata = getattr(converter, "_metadata", None)
    if metadata is not None and getattr(metadata, "environment", None) is not None:
        metadata.environment.modelType = KERAS_MODEL_TYPE
    return converter


def _convert_qat_ranges(tf, converter, io: str) -> bytes | None:
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
    if io != "float32":
        converter.inference_input_type = getattr(tf, TF_TYPES[io])
        converter.inference_output_type = getattr(tf, TF_TYPES[io])
    try:
        flatbuffer = converter.convert()
    except Exception:  # noqa: BLE001  (the calibrated conversion below reports the converter's error)
        return None
    if find_float_ops(parse_tflite(flatbuffer)):
        return None
    return flatbuffer


def _load_samples(path: str):
    """The calibration samples the parent saved: one array (x) or one array per input name."""
    with np.load(path, allow_pickle=False) as f:
        loaded = {name: f[name] for name in f.files}
    return loaded["x"] if list(loaded) == ["x"] else loaded


def _calibration(x, inputs: list[InputSpec]) -> dict[str, np.ndarray]:
    """The calibration samples per input name, checked against the inputs, cast to their dtypes."""
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
    """One sample at a time: a list for one input, a dict by signature input name for several."""
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


def _inspect_saved_model(path: str) -> tuple[list[InputSpec], bool]:
    """The serving inputs of a SavedModel, and whether it holds training-time quantization (QAT).

    Read from ``saved_model.pb`` alone: loading the SavedModel would restore its variables and
    rebuild its functions only to look at them.
    """
    from tensorflow.python.saved_model import loader_impl

    meta = loader_impl.parse_saved_model(path).meta_graphs[0]
    sig = meta.signature_def.get("serving_default")
    if sig is None:
        raise ConversionError(
            f"{path} has no serving_default signature", "export the model with a serving signature"
        )
    graph = meta.graph_def
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    return [_input_spec(name, info) for name, info in sorted(sig.inputs.items())], bool(
        ops & FAKE_QUANT_OPS
    )


def _input_spec(name: str, info) -> InputSpec:
    from tfedge._tf import import_tf

    shape = (
        ()
        if info.tensor_shape.unknown_rank
        else tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
    )
    return InputSpec(name, shape, import_tf().dtypes.as_dtype(info.dtype).name)


def converter_error(exc: Exception) -> dict:
    """The converter's useful line (it prints whole MLIR dumps), as a ConversionError payload."""
    text = str(exc)
    lines = [ln.split("error: ", 1)[1].strip() for ln in text.splitlines() if "error: " in ln]
    first = lines[0] if lines else (text.strip().splitlines() or [type(exc).__name__])[0]
    if first.startswith("loc("):  # an MLIR source location before the message
        first = first.rsplit("): ", 1)[-1]
    hint = "run with --debug to see the converter's log"
    if "TensorList" in text:
        hint = (
            "recurrent layers (LSTM/GRU) convert only with a fixed batch size or unroll=True: "
            "convert the Keras file (tfedge then uses batch size 1, or --batch-size N), or "
            "export the SavedModel with a fixed batch size"
        )
    return {
        "type": "ConversionError",
        "message": "the TFLite converter failed: " + first[:400],
        "hint": hint,
    }


def _write_result(job: dict, result: dict) -> None:
    Path(job["result"]).write_text(json.dumps(result))


def _exit_now(code: int) -> None:
    """End without the interpreter's and TensorFlow's shutdown (a second or more).

    The result is written; the parent is waiting on this exit, and until it comes the parent's
    ``.part`` output would outlive a SIGKILL of the parent with no one left to remove it.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _watch_parent(job_path: str) -> None:
    """Leave a small watcher behind: if tfedge dies (even by SIGKILL) after this worker ended
    but before it renamed or removed the ``.part`` output, the watcher removes the ``.part``
    and the job folder. It ends as soon as the ``.part`` is gone (tfedge's normal path)."""
    if not sys.platform.startswith("linux"):
        return
    import shutil
    import time

    try:
        job = json.loads(Path(job_path).read_text())
        output, parent = Path(job["output"]), int(job["parent_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if os.fork() != 0:
        return
    os.closerange(0, 1024)  # hold no pipe of tfedge's open (its stderr, the progress fd)
    while output.exists():
        if not _alive(parent):  # tfedge is gone and left the .part: remove it
            output.unlink(missing_ok=True)
            shutil.rmtree(Path(job_path).parent, ignore_errors=True)
            break
        time.sleep(0.1)
    os._exit(0)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a killed process not yet reaped by its parent counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


if __name__ == "__main__":
    code = main(sys.argv[1])
    _watch_parent(sys.argv[1])
    _exit_now(code)
