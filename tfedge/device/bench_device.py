#!/usr/bin/env python3
"""tfedge device benchmark: time a .tflite model on this machine and print one JSON object.

Standalone on purpose: it needs only Python 3, numpy and one TFLite runtime
(``ai-edge-litert`` or ``tflite-runtime``), never tfedge or TensorFlow, so it runs on a
bare Raspberry Pi. It mirrors TFLite's ``benchmark_model``: init time, first inference,
warm-up runs, then measured runs until both a minimum count and a minimum time are reached;
latencies in microseconds with a population standard deviation.

Usage:
    python3 bench_device.py model.tflite --threads 4 --runs 50 --min-secs 1
    python3 bench_device.py model.tflite --data eval.npz        # also reports accuracy
    python3 bench_device.py model.tflite --smoke golden.npz     # exit 0 if outputs match
    python3 bench_device.py --probe                             # which runtime works here?

On error it still prints one JSON object, ``{"error": ..., "kind": ..., "hint": ...}``,
and exits with status 2 (runtime missing or broken) or 3 (bad model or data).

Library use (the OTA smoke test and evaluate import it):
    >>> interp, runtime = load_interpreter("model.tflite", threads=2)
    >>> runtime["name"], runtime["version"]
    ('ai-edge-litert', '2.3.0')
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import zlib

SCRIPT_VERSION = 1
EXIT_RUNTIME = 2
EXIT_INPUT = 3
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
    "for Python 3.11; flash the 64-bit Raspberry Pi OS (Raspberry Pi Imager -> 'Raspberry Pi OS (64-bit)')"
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
    """A failure this script reports as JSON; ``kind`` is runtime_missing, model_invalid, data_invalid."""

    def __init__(self, kind: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.kind, self.message, self.hint = kind, message, hint

    def to_dict(self) -> dict:
        return {"error": self.message, "kind": self.kind, "hint": self.hint}

    @property
    def exit_code(self) -> int:
        return EXIT_RUNTIME if self.kind == "runtime_missing" else EXIT_INPUT


# ---------------------------------------------------------------- runtime detection
_CANDIDATES = (
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
    return sorted(_CANDIDATES, key=lambda c: c[0] != prefer) if prefer else _CANDIDATES


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
            f"{runtime['name']} {runtime['version']} cannot load {path}: {_first_line(exc)}",
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


def _first_line(exc: BaseException) -> str:
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
            f"cannot read data {path}: {_first_line(exc)}",
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
    if np.issubdtype(dtype, np.integer) and np.issubdtype(value.dtype, np.floating):
        scale, zero_point = detail["quantization"]
        if scale:
            info = np.iinfo(dtype)
            return np.clip(np.round(value / scale + zero_point), info.min, info.max).astype(dtype)
    return value.astype(dtype)


def run_once(interp, values) -> None:
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


# ---------------------------------------------------------------- timing
def timed_loop(interp, inputs: list, min_runs: int, min_secs: float, max_secs: float) -> list:
    """Invoke until ``min_runs`` and ``min_secs`` are both reached (or ``max_secs``); µs per run.

    Inputs are set outside the timed region; only ``invoke()`` is measured.
    """
    samples, start = [], time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if (len(samples) >= min_runs and elapsed >= min_secs) or (elapsed > max_secs and samples):
            return samples
        values = inputs[len(samples) % len(inputs)]
        for detail, value in zip(interp.get_input_details(), values):
            interp.set_tensor(detail["index"], value)
        t0 = time.perf_counter_ns()
        interp.invoke()
        samples.append((time.perf_counter_ns() - t0) / 1000.0)


def latency_stats(samples: list) -> dict:
    """count, min, max, mean, population std, p50, p90, p99 of ``samples`` (µs)."""
    np = import_numpy()
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return {"count": 0}
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return {
        "count": int(a.size),
        "min": float(a.min()),
        "max": float(a.max()),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "p50": p50,
        "p90": p90,
        "p99": p99,
    }


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


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# ---------------------------------------------------------------- device conditions
def device_info() -> dict:
    """What skews numbers on a board: governor, frequency, temperature, throttling, affinity."""
    return {
        "machine": platform.machine(),
        "model": _read_text("/proc/device-tree/model"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "governor": _read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "cur_freq_khz": _read_int("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"),
        "max_freq_khz": _read_int("/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq"),
        "temperature_c": _temperature(),
        "throttled": _vcgencmd_throttled(),
    }


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").strip("\0\n ") or None
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read_text(path)
    return int(text) if text and text.isdigit() else None


def _temperature() -> float | None:
    millideg = _read_int("/sys/class/thermal/thermal_zone0/temp")
    return millideg / 1000.0 if millideg is not None else None


def _vcgencmd_throttled() -> str | None:
    """``vcgencmd get_throttled`` on a Pi (0x0 = never throttled), else None."""
    if not shutil.which("vcgencmd"):
        return None
    try:
        out = subprocess.run(
            ["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip().split("=", 1)[-1] or None
    except (OSError, subprocess.SubprocessError):
        return None


def pin_cpus(spec: str | None) -> None:
    """Pin this process to CPUs like ``taskset -c``: ``"2,3"`` or ``"0-3"``."""
    if not spec:
        return
    try:
        cpus = set()
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
        os.sched_setaffinity(0, cpus)
    except (AttributeError, OSError, ValueError) as exc:
        raise DeviceError(
            "bad_option", f"cannot pin to CPUs {spec!r}: {exc}", "list CPUs that exist, e.g. 0-3"
        )


# ---------------------------------------------------------------- the benchmark
def benchmark(
    model: str,
    threads: int | None = None,
    runs: int = 50,
    warmup: int = 1,
    min_secs: float = 1.0,
    warmup_min_secs: float = 0.5,
    max_secs: float = 150.0,
    data: str | None = None,
    save_outputs: str | None = None,
    xnnpack: bool = True,
    prefer: str | None = None,
) -> dict:
    """Benchmark ``model`` and return the report as a dict (what the script prints)."""
    module, runtime = find_runtime(prefer)
    runtime = dict(runtime, xnnpack=xnnpack)
    threads = threads or os.cpu_count() or 1
    rss_start = current_rss_mb()
    t0 = time.perf_counter()
    interp = create_interpreter(module, runtime, model, threads, xnnpack)
    init_ms = (time.perf_counter() - t0) * 1000.0
    rss_init = current_rss_mb()
    report = {
        "script_version": SCRIPT_VERSION,
        "runtime": runtime,
        "threads": threads,
        "model_bytes": os.path.getsize(model),
        "init_ms": init_ms,
    }
    inputs = _timing_inputs(interp, data, report, save_outputs)
    report.update(_run_timings(interp, inputs, runs, warmup, min_secs, warmup_min_secs, max_secs))
    report.update(
        peak_rss_mb=peak_rss_mb(),
        rss_init_delta_mb=_delta(rss_init, rss_start),
        arch=platform.machine(),
        device=device_info(),
    )
    return report


def _timing_inputs(interp, data, report: dict, save_outputs) -> list:
    if not data:
        return [random_inputs(interp)]
    x, y = load_data(data)
    raw, floats = predict_all(interp, x)
    report["samples"] = int(len(x))
    if y is not None:
        report["accuracy"] = accuracy(floats, y)
    if save_outputs:
        import_numpy().save(save_outputs, raw)
    detail = interp.get_input_details()[0]
    return [[prepare_input(detail, s)] for s in x[: min(len(x), 64)]]


def _run_timings(interp, inputs, runs, warmup, min_secs, warmup_min_secs, max_secs) -> dict:
    t0 = time.perf_counter_ns()
    run_once(interp, inputs[0])
    first_us = (time.perf_counter_ns() - t0) / 1000.0
    warm = (
        timed_loop(interp, inputs, warmup, warmup_min_secs if warmup else 0.0, max_secs)
        if warmup
        else []
    )
    measured = timed_loop(interp, inputs, max(runs, 1), min_secs, max_secs)
    return {
        "first_us": first_us,
        "warmup_us": latency_stats(warm),
        "latency_us": latency_stats(measured),
    }


def _delta(after, before):
    return None if after is None or before is None else after - before


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


# ---------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark a .tflite model; print one JSON object.")
    p.add_argument("model", nargs="?", help="the .tflite model")
    p.add_argument(
        "--threads", type=int, default=None, help="interpreter threads (default: all CPUs)"
    )
    p.add_argument("--runs", type=int, default=50, help="minimum measured runs (default 50)")
    p.add_argument("--warmup", type=int, default=1, help="minimum warm-up runs (default 1)")
    p.add_argument(
        "--min-secs", type=float, default=1.0, help="minimum measured time (default 1 s)"
    )
    p.add_argument(
        "--warmup-min-secs", type=float, default=0.5, help="minimum warm-up time (default 0.5 s)"
    )
    p.add_argument(
        "--max-secs", type=float, default=150.0, help="stop measuring after this (default 150 s)"
    )
    p.add_argument(
        "--data", help=".npz (x, y) or .npy inputs: real inputs, and accuracy when y is given"
    )
    p.add_argument("--save-outputs", help="write the raw outputs for --data to this .npy")
    p.add_argument(
        "--no-xnnpack", action="store_true", help="use the builtin kernels without XNNPACK"
    )
    p.add_argument("--cpus", help="pin to these CPUs, like taskset -c (e.g. 2,3 or 0-3)")
    p.add_argument("--runtime", choices=[c[0] for c in _CANDIDATES], help="prefer this runtime")
    p.add_argument(
        "--smoke", metavar="GOLDEN.npz", help="compare outputs on golden x with y; exit 0 or 1"
    )
    p.add_argument("--atol", type=float, default=None, help="--smoke tolerance")
    p.add_argument("--probe", action="store_true", help="only report the runtime that works here")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> tuple[dict, int]:
    """Do what ``args`` ask; return ``(report, exit_code)``."""
    pin_cpus(args.cpus)
    if args.probe:
        _, runtime = find_runtime(args.runtime)
        return {
            "runtime": runtime,
            "arch": platform.machine(),
            "python": platform.python_version(),
            "numpy": import_numpy().__version__,
        }, 0
    if not args.model:
        raise DeviceError(
            "model_invalid", "no model given", "usage: bench_device.py MODEL.tflite [options]"
        )
    if args.smoke:
        report = smoke(args.model, args.smoke, args.atol, args.threads)
        return report, 0 if report["ok"] else 1
    return benchmark(
        args.model,
        args.threads,
        args.runs,
        args.warmup,
        args.min_secs,
        args.warmup_min_secs,
        args.max_secs,
        args.data,
        args.save_outputs,
        not args.no_xnnpack,
        args.runtime,
    ), 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report, code = run(args)
    except DeviceError as err:
        report, code = err.to_dict(), err.exit_code
    except Exception as exc:  # anything unexpected still answers in JSON
        report, code = (
            {"error": f"{type(exc).__name__}: {_first_line(exc)}", "kind": "internal", "hint": ""},
            4,
        )
    sys.stdout.write(json.dumps(report, default=_json_default) + "\n")
    sys.stdout.flush()
    return code


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
