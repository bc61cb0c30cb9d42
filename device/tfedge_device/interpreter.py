"""The TFLite interpreter on a board: find a runtime that works, load a model, run it.

Standard library and numpy only, plus one TFLite runtime (``ai-edge-litert`` or
``tflite-runtime``), found by *creating an interpreter* (tflite-runtime 2.14 imports under
numpy 2 but cannot create one). The benchmark script (:mod:`tfedge_device.bench`), the
smoke test and the host's ``tfedge`` (evaluate, golden files) all use this module.

It imports nothing of its package, so it also runs as a plain file next to ``bench.py``
on a board that never installed ``tfedge-device``.

Example:
    >>> interp, runtime = load_interpreter("model.tflite", threads=2)
    >>> runtime["name"], runtime["version"]
    ('ai-edge-litert', '2.3.0')
    >>> raw, floats = predict_all(interp, x)
"""

from __future__ import annotations

import base64
import platform
import resource
import sys
import zlib

EXIT_RUNTIME = 2
EXIT_INPUT = 3
EXIT_INTERNAL = 4
INSTALL_CMD = "python3 -m pip install numpy ai-edge-litert"
INSTALL_HINT = (
    "install a TFLite runtime on the device, in a virtual environment on Raspberry Pi OS 64-bit: "
    "`python3 -m venv ~/tfedge-venv && ~/tfedge-venv/bin/"
    + INSTALL_CMD.replace("python3 -m ", "")
    + "` (or `pip install 'numpy<2' tflite-runtime`), then point tfedge at that python "
    "(ssh://user@host?python=~/tfedge-venv/bin/python)"
)
ARMV7_HINT = (
    "this is a 32-bit OS (armv7l): there are no 32-bit wheels of ai-edge-litert or tflite-runtime "
    "for Python 3.11; flash the 64-bit Raspberry Pi OS "
    "(Raspberry Pi Imager -> 'Raspberry Pi OS (64-bit)')"
)
# A 656-byte float model (y = x + x, shape [1, 2]): creating an interpreter on it proves
# a runtime works, independently of the model under test.
_PROBE_MODEL = zlib.decompress(
    base64.b64decode(
        "eNplUb1Kw1AYPWljW2ioBYN0yNChc7C1upe2QiBtoRZxEKqQDBmaQo2i4EOIs6Ojj+DgID6Fg0/haDz35kst+sEhX86953w/1wEwO/L3bTThoAEbdVjkKjCZg1yG"
        "hGgZQJfwC0ARWTBFlzCJjzRNTcl3iP5kfDKcHnuT8Xw0nPUGvVmPvpb2riDzyO8uoni+uoqTaBHOr8PVZbSMsUX+mXgiHok7uf8gdc6JuvRRQW3tq7iWZkuaK4lO"
        "hbWe0dRzHg4LZefLc4oyi6lVQMfttN29/x7Ku+0eZEcSL99p+kq8Edv8H/netNlfxpwjCQMXXJneJdhjXl151oRX+z2TeQKps7iIYqXY1Nq6voWqaGX2qiX5gHsx"
        "RFPY6M/YQP5mp1LnnRp1VBcPddYg7smrXXpByEdJbnPdr/eungUyTRZlslnJ3M+Q76f0dvPHx9Bvp3oxdT8/vqFJQw=="
    )
)


class DeviceError(Exception):
    """A failure the device tools report as JSON.

    ``kind`` is runtime_missing, model_invalid, data_invalid or bad_option.
    """

    def __init__(self, kind: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.kind, self.message, self.hint = kind, message, hint

    def to_dict(self) -> dict:
        return {"error": self.message, "kind": self.kind, "hint": self.hint}

    @property
    def exit_code(self) -> int:
        return EXIT_RUNTIME if self.kind == "runtime_missing" else EXIT_INPUT


# ---------------------------------------------------------------- runtime detection
RUNTIMES = (
    ("ai-edge-litert", "ai_edge_litert.interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter"),
)


def import_numpy():
    """Return numpy, or raise DeviceError(runtime_missing) with the install command."""
    try:
        import numpy

        return numpy
    except ImportError as exc:
        raise DeviceError(
            "runtime_missing",
            f"numpy is not installed for {sys.executable} ({exc})",
            _install_hint(),
        ) from exc


def find_runtime(prefer: str | None = None):
    """Return ``(interpreter_module, runtime_info)`` for the first runtime that can run a model.

    A runtime counts only once it has created an interpreter: tflite-runtime 2.14 imports
    under numpy 2 but fails at interpreter creation.
    """
    import_numpy()
    problems = []
    for name, module_name in _ordered_candidates(prefer):
        module, problem = _try_runtime(module_name)
        if module is not None:
            return module, {"name": name, "version": _runtime_version(name, module)}
        problems.append(f"{name}: {problem}")
    raise DeviceError(
        "runtime_missing",
        "no working TFLite runtime for " + sys.executable + " (" + "; ".join(problems) + ")",
        _install_hint(),
    )


def _ordered_candidates(prefer: str | None):
    return sorted(RUNTIMES, key=lambda c: c[0] != prefer) if prefer else RUNTIMES


def _try_runtime(module_name: str):
    try:
        module = __import__(module_name, fromlist=["Interpreter"])
        interp = module.Interpreter(model_content=_PROBE_MODEL)
        interp.allocate_tensors()
        return module, ""
    except Exception as exc:  # ImportError, numpy ABI errors, missing shared libraries...
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _runtime_version(name: str, module) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        top = sys.modules.get(module.__name__.split(".")[0])
        return str(getattr(top, "__version__", "unknown"))


def _install_hint() -> str:
    return ARMV7_HINT if platform.machine() in ("armv7l", "armv6l") else INSTALL_HINT


def load_interpreter(
    path: str, threads: int | None = None, xnnpack: bool = True, prefer: str | None = None
):
    """Create and allocate an interpreter for ``path``; return ``(interpreter, runtime_info)``.

    Raises:
        DeviceError: kind ``runtime_missing`` (no runtime) or ``model_invalid`` (bad file).
    """
    module, runtime = find_runtime(prefer)
    return create_interpreter(module, runtime, path, threads, xnnpack), dict(
        runtime, xnnpack=xnnpack
    )


def create_interpreter(
    module, runtime: dict, path: str, threads: int | None = None, xnnpack: bool = True
):
    """An allocated interpreter of ``module`` (from find_runtime) for the model at ``path``."""
    _check_model_file(path)
    kwargs = {"model_path": path, "num_threads": threads}
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = (
            module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    try:
        interp = module.Interpreter(**kwargs)
        interp.allocate_tensors()
    except Exception as exc:
        raise DeviceError(
            "model_invalid",
            f"{runtime['name']} {runtime['version']} cannot load {path}: {first_line(exc)}",
            "re-convert the model; the file may be damaged or use ops "
            "this runtime version does not have",
        ) from exc
    return interp


def _check_model_file(path: str) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise DeviceError(
            "model_invalid", f"cannot read model {path}: {exc}", "check the path"
        ) from exc
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise DeviceError(
            "model_invalid",
            f"{path} is not a TFLite model (no TFL3 identifier)",
            "pass a .tflite file written by the TFLite converter",
        )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------- inputs and data
def random_inputs(interp, seed: int = 0) -> list:
    """One random value per model input, in each input's dtype and range (like benchmark_model)."""
    np = import_numpy()
    rng = np.random.default_rng(seed)
    values = []
    for detail in interp.get_input_details():
        dtype, shape = detail["dtype"], detail["shape"]
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            values.append(
                rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape).astype(dtype)
            )
        else:
            values.append(rng.random(shape, dtype=np.float32).astype(dtype))
    return values


def load_data(path: str):
    """``(x, y)`` from a .npz with ``x`` (and optionally ``y``) or a .npy of inputs (``y`` None)."""
    np = import_numpy()
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DeviceError(
            "data_invalid",
            f"cannot read data {path}: {first_line(exc)}",
            "pass a .npz with arrays x (inputs) and y (labels), or a .npy of inputs",
        ) from exc
    if isinstance(loaded, np.ndarray):
        return loaded, None
    if "x" not in loaded.files:
        raise DeviceError(
            "data_invalid",
            f"{path} has arrays {loaded.files} but no 'x'",
            "save inputs as x and labels as y: np.savez(path, x=x, y=y)",
        )
    return loaded["x"], (loaded["y"] if "y" in loaded.files else None)


def prepare_input(detail: dict, sample):
    """Fit one sample to an input: add the batch axis, quantize floats for integer inputs."""
    np = import_numpy()
    shape = tuple(int(d) for d in detail["shape"])
    value = np.asarray(sample)
    if value.shape != shape:
        if value.size != int(np.prod(shape)):
            raise DeviceError(
                "data_invalid",
                f"a sample of shape {value.shape} does not fit input "
                f"{detail['name']} of shape {list(shape)}",
                "check the data matches the model",
            )
        value = value.reshape(shape)
    return _cast(detail, value)


def _cast(detail: dict, value):
    np = import_numpy()
    dtype = detail["dtype"]
    # Data in another dtype than the input (floats, or uint8 images for an int8 input) holds real
    # values: quantize them; a plain cast would wrap (uint8 200 -> int8 -56).
    if np.issubdtype(dtype, np.integer) and value.dtype != np.dtype(dtype):
        scale, zero_point = detail["quantization"]
        if scale:
            info = np.iinfo(dtype)
            real = value.astype(np.float64)
            return np.clip(np.round(real / scale + zero_point), info.min, info.max).astype(dtype)
    return value.astype(dtype)


def run_once(interp, values) -> None:
    """One independent run: from the model's initial state, whatever ran before.

    A converted Keras LSTM (UNIDIRECTIONAL_SEQUENCE_LSTM) keeps its state in variable tensors
    from one invocation to the next; a Keras model starts every sequence from zeros.
    """
    interp.reset_all_variables()
    for detail, value in zip(interp.get_input_details(), values):
        interp.set_tensor(detail["index"], value)
    interp.invoke()


def output_of(interp):
    """The first output, dequantized to float when it is an integer tensor."""
    np = import_numpy()
    detail = interp.get_output_details()[0]
    raw = interp.get_tensor(detail["index"])
    return raw.copy(), _dequantize(detail, raw, np)


def _dequantize(detail, raw, np):
    scale, zero_point = detail["quantization"]
    if scale and np.issubdtype(raw.dtype, np.integer):
        return (raw.astype(np.float32) - zero_point) * scale
    return raw.astype(np.float32)


def predict_all(interp, x):
    """Run every sample of ``x``; return ``(raw_outputs, float_outputs)`` stacked on axis 0."""
    np = import_numpy()
    detail = interp.get_input_details()[0]
    raws, floats = [], []
    for sample in x:
        run_once(interp, [prepare_input(detail, sample)])
        raw, value = output_of(interp)
        raws.append(raw[0] if raw.shape[:1] == (1,) else raw)
        floats.append(value[0] if value.shape[:1] == (1,) else value)
    return np.stack(raws), np.stack(floats)


def accuracy(outputs, y) -> float:
    """Top-1 accuracy of ``outputs`` (N, classes) against labels (ids or one-hot)."""
    np = import_numpy()
    labels = np.asarray(y)
    if labels.ndim > 1 and labels.shape[-1] > 1:
        labels = labels.argmax(axis=-1)
    predicted = outputs.reshape(len(outputs), -1).argmax(axis=-1)
    return float((predicted == labels.reshape(-1)).mean())


# ---------------------------------------------------------------- golden check
def smoke(model: str, golden: str, atol: float | None = None, threads: int | None = None) -> dict:
    """Run golden input ``x`` and compare with expected ``y``; ``ok`` is the verdict.

    The tolerance defaults to one quantization step of an integer output (else 1e-4 + 1e-3·|y|).
    """
    np = import_numpy()
    interp, runtime = load_interpreter(model, threads)
    x, y = load_data(golden)
    if y is None:
        raise DeviceError(
            "data_invalid",
            f"golden file {golden} has no expected outputs 'y'",
            "save it as np.savez(path, x=inputs, y=expected_outputs)",
        )
    raw, floats = predict_all(interp, x)
    expected = np.asarray(y).reshape(raw.shape) if np.asarray(y).size == raw.size else None
    if expected is None:
        raise DeviceError(
            "data_invalid",
            f"golden y has shape {np.asarray(y).shape}, model outputs {raw.shape}",
            "regenerate the golden file for this model",
        )
    got = raw if np.issubdtype(expected.dtype, np.integer) else floats.reshape(raw.shape)
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    tol = atol if atol is not None else (1.0 if np.issubdtype(expected.dtype, np.integer) else None)
    ok = (
        bool(np.all(diff <= tol))
        if tol is not None
        else bool(np.allclose(got, expected, rtol=1e-3, atol=1e-4))
    )
    finite = bool(np.all(np.isfinite(floats)))
    return {
        "ok": ok and finite,
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "tolerance": tol,
        "samples": int(len(x)),
        "finite": finite,
        "runtime": runtime,
        "arch": platform.machine(),
        "peak_rss_mb": peak_rss_mb(),
    }


# ---------------------------------------------------------------- reports
def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM, else ru_maxrss) in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def json_default(value):
    """``json.dumps(..., default=json_default)``: numpy scalars and arrays as plain values."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
