"""Keras model -> verified TFLite model.

The conversion itself runs in a child process (``tfedge.convert.worker``) so that a
converter crash becomes a ConversionError instead of killing tfedge. The parent then
reads the flatbuffer and verifies that every op computes in integer before the file is
renamed into place.

Example:
    >>> result = convert("model.keras", "model.tflite", calib="train.npz")
    >>> result.full_integer
    True
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfedge import errors
from tfedge.convert.keras_layers import keras_layers
from tfedge.convert.layer_names import KerasLayers
from tfedge.convert.sparse import SparseCheck, check_model
from tfedge.convert.tflite_model import read_tflite
from tfedge.convert.verify import FloatOp, find_float_ops, float_io
from tfedge.errors import ConversionError, UsageError, VerificationError
from tfedge.fsutil import atomic_path, check_not_input, check_writable
from tfedge.io.data import Dataset, Inputs, draw_samples, load_data, num_samples
from tfedge.io.models import check_model_safe, detect_format, trusting

QUANT_MODES = ("int8", "int16x8", "float16", "dynamic", "none")
IO_TYPES = ("int8", "uint8", "int16", "float32")
FULL_INTEGER_MODES = ("int8", "int16x8")
SPARSE_MODES = ("none", "float16")  # --sparse: XNNPACK's sparse kernels are float-only
DEFAULT_IO = {
    "int8": "int8",
    "int16x8": "int16",
    "float16": "float32",
    "dynamic": "float32",
    "none": "float32",
}
ALLOWED_IO = {"int8": {"int8", "uint8", "float32"}, "int16x8": {"int16", "float32"}}


@dataclass
class ConvertResult:
    """What ``convert`` wrote and what verification found."""

    output: str
    size_bytes: int
    quant: str
    io: str
    full_integer: bool
    float_ops: list[FloatOp] = field(default_factory=list)
    calib_samples: int = 0
    seconds: float = 0.0
    keras: str = ""
    sparse: bool = False  # --sparse was asked
    sparse_tensors: int = 0  # weight tensors the converter stored sparse
    xnnpack_sparse: SparseCheck | None = None  # with --sparse: XNNPACK's sparse pattern

    def to_dict(self) -> dict:
        return asdict(self)


def convert(
    model,
    output: str | os.PathLike,
    *,
    calib=None,
    quant: str = "int8",
    io: str | None = None,
    calib_samples: int = 256,
    seed: int = 0,
    allow_float_ops: bool = False,
    profile=None,
    progress: bool = False,
    in_process: bool = False,
    trust_model: bool = False,
    batch_size: int | None = None,
    sparse: bool = False,
) -> ConvertResult:
    """Convert ``model`` to TFLite at ``output`` and verify it.

    Args:
        model: path to a ``.keras``/``.h5`` file or SavedModel directory, or an in-memory
            tf_keras model (e.g. a quantization-aware one from ``tfedge optimize``).
        output: the ``.tflite`` path; written atomically, never half-written.
        calib: calibration data for ``int8``/``int16x8``: a path, a Dataset, an array of inputs,
            or for a model with several inputs a dict of arrays keyed by input name.
        quant: one of ``int8``, ``int16x8``, ``float16``, ``dynamic``, ``none``.
        io: input/output type; defaults to integer for full-integer modes.
        calib_samples: how many calibration samples to draw (seeded).
        seed: the seed for drawing calibration samples.
        allow_float_ops: keep a model that still computes some ops in float.
        profile: a device profile name, path or DeviceProfile to check the result against.
        progress: show a calibration progress bar on stderr.
        in_process: run the converter in this process instead of a child. Only for a process
            that is itself a disposable child (the optimize worker): in-memory models then
            convert directly, without a SavedModel export.
        trust_model: load Keras layers that carry Python code (Lambda); without it such a
            model is refused before anything runs it.
        batch_size: convert from a signature with this fixed batch size. By default a model
            with recurrent layers (LSTM, GRU, ...) converts with batch size 1 (the converter
            cannot size their time loop otherwise) and any other model keeps a dynamic batch.
        sparse: store weights with enough zeros sparse (the converter's EXPERIMENTAL_SPARSITY,
            the format XNNPACK's sparse float kernels read); ``quant`` none or float16 only.
            The result counts the sparse tensors and says whether the model matches
            XNNPACK's sparse pattern (``tfedge.convert.sparse``).

    Returns:
        ConvertResult.

    Raises:
        UsageError, ModelLoadError, DataError, ConversionError, VerificationError, ProfileError.
    """
    with trusting(trust_model):
        return _convert(
            model,
            output,
            calib,
            quant,
            io,
            calib_samples,
            seed,
            allow_float_ops,
            profile,
            progress,
            in_process,
            batch_size,
            sparse,
        )


def _convert(
    model,
    output,
    calib,
    quant: str,
    io: str | None,
    calib_samples: int,
    seed: int,
    allow_float_ops: bool,
    profile,
    progress: bool,
    in_process: bool,
    batch_size: int | None,
    sparse: bool = False,
) -> ConvertResult:
    started = time.perf_counter()
    io = _check_options(quant, io, calib, calib_samples)
    _check_sparse(sparse, quant)
    if batch_size is not None and batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {batch_size}", "try --batch-size 1")
    check_not_input(output, [model, calib if quant in FULL_INTEGER_MODES else None])
    output = check_writable(output)
    device_profile = _load_profile(profile)
    samples = _calibration_samples(calib, quant, calib_samples, seed)
    with (
        tempfile.TemporaryDirectory(prefix="tfedge-convert-") as work,
        atomic_path(output) as tmp_out,
    ):
        if in_process:
            keras = _convert_here(model, tmp_out, quant, io, samples, batch_size, sparse)
        else:
            source, keras = _model_source(model, Path(work), batch_size, quant)
            job = _job(source, tmp_out, quant, io, samples, Path(work), progress)
            job["batch_size"] = batch_size
            job["sparse"] = sparse
            _run_worker(job, Path(work))
        report = read_tflite(tmp_out)
        float_ops = verify_converted(
            report, quant, io, allow_float_ops, device_profile, keras_layers(model)
        )
    return ConvertResult(
        output=str(output),
        size_bytes=report.size_bytes,
        quant=quant,
        io=io,
        full_integer=not float_ops,
        float_ops=float_ops,
        calib_samples=0 if samples is None else num_samples(samples),
        seconds=round(time.perf_counter() - started, 3),
        keras=keras,
        sparse=sparse,
        sparse_tensors=sum(1 for t in report.tensors if t.sparsity is not None),
        xnnpack_sparse=check_model(report) if sparse else None,
    )


def _check_sparse(sparse: bool, quant: str) -> None:
    if sparse and quant not in SPARSE_MODES:
        raise UsageError(
            f"--sparse applies to float models, not --quant {quant}",
            "convert with --quant none or --quant float16 (XNNPACK's sparse kernels are "
            "float-only), or drop --sparse",
        )


def _check_options(quant: str, io: str | None, calib, calib_samples: int) -> str:
    if quant not in QUANT_MODES:
        raise UsageError(f"unknown --quant '{quant}'", f"choose one of {', '.join(QUANT_MODES)}")
    io = io or DEFAULT_IO[quant]
    if io not in IO_TYPES:
        raise UsageError(f"unknown --io '{io}'", f"choose one of {', '.join(IO_TYPES)}")
    allowed = ALLOWED_IO.get(quant, {"float32"})
    if io not in allowed:
        raise UsageError(
            f"--io {io} does not fit --quant {quant}", f"use --io {' or '.join(sorted(allowed))}"
        )
    if quant in FULL_INTEGER_MODES and calib is None:
        raise UsageError(
            f"--quant {quant} needs calibration data", "pass --calib train.npz (inputs in array x)"
        )
    if calib_samples <= 0:
        raise UsageError(
            f"--calib-samples must be positive, got {calib_samples}", "try --calib-samples 256"
        )
    return io


def _load_profile(profile):
    if profile is None:
        return None
    from tfedge.targets.profiles import load_profile

    return profile if hasattr(profile, "budgets") else load_profile(profile)


def _calibration_samples(calib, quant: str, count: int, seed: int) -> Inputs | None:
    if quant not in FULL_INTEGER_MODES:
        return None
    if isinstance(calib, Dataset):
        calib = calib.x
    x = calib if isinstance(calib, (np.ndarray, dict)) else load_data(calib).x
    return draw_samples(x, count, seed)


def _model_source(
    model, work: Path, batch_size: int | None = None, quant: str = "none"
) -> tuple[str, str]:
    """A path the worker can load, and the Keras major version it was saved with.

    In-memory models go to the worker as a SavedModel: tf_keras cannot reload
    quantization-aware (QAT) models from ``.keras`` or ``.h5``, and a SavedModel keeps
    the layer names in the op names. One with recurrent layers (or a ``batch_size``) gets a
    fixed-batch signature (see ``tfedge.convert.worker.convert_model``).
    """
    if isinstance(model, (str, os.PathLike)):
        fmt = detect_format(model)
        if fmt.kind == "tflite":
            raise UsageError(
                f"{model} is already a TFLite model",
                "pass the Keras model (.keras, .h5 or SavedModel)",
            )
        check_model_safe(fmt)  # here too, so the refusal costs no worker start
        if fmt.kind == "savedmodel" and batch_size is not None:
            raise UsageError(
                "--batch-size applies to Keras models, not to a SavedModel's signature",
                "pass the .keras/.h5 file, or export the SavedModel with a fixed batch size",
            )
        return str(model), fmt.keras
    path = work / "savedmodel"
    from tfedge.convert import worker
    from tfedge.io.data import keras_input_specs

    batch = batch_size or (1 if worker.recurrent_layers(model) else None)
    if quant in FULL_INTEGER_MODES:
        worker.check_integer_recurrent(model, quant)
    keras3 = type(model).__module__.split(".")[0] == "keras"
    if batch is not None:
        inputs = worker.with_batch(keras_input_specs(model), batch)
        worker.fixed_batch_savedmodel(model, inputs, str(path))
        return str(path), "3" if keras3 else "2"
    if keras3:
        worker.keras3_savedmodel(model, str(path))
        return str(path), "3"
    model.save(str(path), save_format="tf")
    return str(path), "2"


def _convert_here(
    model, out: Path, quant: str, io: str, samples, batch_size=None, sparse: bool = False
) -> str:
    """Convert here (see ``convert(in_process=True)``); returns the model's Keras major version."""
    from tfedge.convert.worker import convert_model, converter_error

    keras = ""
    if isinstance(model, (str, os.PathLike)):
        fmt = detect_format(model)
        if fmt.kind != "savedmodel":
            from tfedge.io.models import load_keras_model

            model = load_keras_model(fmt)
        keras = fmt.keras
    else:
        keras = "3" if type(model).__module__.split(".")[0] == "keras" else "2"
    try:
        flatbuffer, _ = convert_model(
            model, quant, io, samples, batch_size=batch_size, sparse=sparse
        )
    except errors.TfedgeError:
        raise
    except Exception as exc:  # the converter's own errors: keep the useful line
        err = converter_error(exc)
        raise ConversionError(err["message"], err["hint"]) from None
    out.write_bytes(flatbuffer)
    return keras


def _job(source: str, out: Path, quant: str, io: str, samples, work: Path, progress: bool) -> dict:
    calib_path = None
    if samples is not None:
        calib_path = str(work / "calib.npz")
        np.savez(calib_path, **(samples if isinstance(samples, dict) else {"x": samples}))
    return {
        "model": source,
        "output": str(out),
        "quant": quant,
        "io": io,
        "calib": calib_path,
        "result": str(work / "result.json"),
        "progress": progress,
        "parent_pid": os.getpid(),
    }


def _run_worker(job: dict, work: Path) -> None:
    job_path = work / "job.json"
    log_path = work / "worker.log"
    debug = os.environ.get("TFEDGE_DEBUG") == "1"
    progress_fd = os.dup(2)
    job["progress_fd"] = progress_fd
    job_path.write_text(json.dumps(job))
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.run(
                [sys.executable, "-m", "tfedge.convert.worker", str(job_path)],
                stdout=None if debug else log,
                stderr=None if debug else log,
                pass_fds=(progress_fd,),
                env=os.environ.copy(),
            )
    finally:
        os.close(progress_fd)
    _raise_worker_error(proc.returncode, Path(job["result"]), log_path)


def _raise_worker_error(returncode: int, result_path: Path, log_path: Path) -> None:
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    if "error" in result:
        err = result["error"]
        cls = getattr(errors, err.get("type", ""), ConversionError)
        raise cls(err["message"], err.get("hint", ""))
    if returncode == 0 and result.get("ok"):
        return
    if returncode < 0:
        name = signal.Signals(-returncode).name
        raise ConversionError(
            f"the TFLite converter crashed ({name})",
            "this model's layers are not supported by the converter; try --quant none, "
            "or run with --debug for its log",
        )
    tail = (
        log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
    )
    raise ConversionError(
        f"the TFLite converter failed (exit {returncode}){': ' + tail[0] if tail else ''}",
        "run with --debug to see the converter's log",
    )


def _check_full_integer(quant: str, float_ops: list[FloatOp], allow_float_ops: bool) -> None:
    if quant not in FULL_INTEGER_MODES or not float_ops or allow_float_ops:
        return
    listed = "; ".join(op.describe() for op in float_ops[:8])
    more = f" and {len(float_ops) - 8} more" if len(float_ops) > 8 else ""
    raise VerificationError(
        f"the converted model still computes {len(float_ops)} op(s) in float: {listed}{more}",
        "replace those layers with ones that have integer kernels, "
        "or pass --allow-float-ops to keep them",
        float_ops=float_ops,
    )


def verify_converted(
    report,
    quant: str,
    io: str,
    allow_float_ops: bool = False,
    profile=None,
    layers: KerasLayers | None = None,
) -> list[FloatOp]:
    """What ``convert`` (and so ``optimize``) checks on a converted model before keeping it.

    Returns the float ops (empty for a full-integer model), named after the Keras ``layers``
    when given (``keras_layers(model)``).

    Raises:
        VerificationError: a full-integer mode left float compute or float I/O.
        ProfileError: the model breaks ``profile``'s size, full-integer or op limits.
    """
    float_ops = find_float_ops(report, layers)
    _check_full_integer(quant, float_ops, allow_float_ops)
    _check_io(quant, io, report)
    if profile is not None:
        _check_profile(profile, report, float_ops)
    return float_ops


def _check_io(quant: str, io: str, report) -> None:
    floats = float_io(report) if quant in FULL_INTEGER_MODES and io != "float32" else []
    if floats:
        names = ", ".join(t.name for t in floats[:4])
        raise VerificationError(
            f"--io {io} was asked, but {len(floats)} model input/output(s) are float: {names}",
            "re-run the conversion; if it persists, convert with --io float32",
        )


def _check_profile(profile, report, float_ops: list[FloatOp]) -> None:
    from tfedge.targets.profiles import check_model_against_profile

    check_model_against_profile(
        profile,
        report.size_bytes,
        not float_ops,
        [op.describe() for op in float_ops],
        {op.name for op in report.ops},
    )
