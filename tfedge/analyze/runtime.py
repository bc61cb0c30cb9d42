"""The TFLite interpreter on this machine: ai-edge-litert, else tflite-runtime.

The detection logic lives in the device package (:mod:`tfedge_device.interpreter`: it must
run on a bare board without tfedge); the host side uses the very same code and turns its
errors into tfedge's typed errors.
"""

from __future__ import annotations

from tfedge._tf import quiet_native_stderr
from tfedge.errors import BenchError, ModelLoadError
from tfedge_device import interpreter as device


def load_interpreter(path: str, threads: int | None = None, xnnpack: bool = True):
    """An allocated interpreter for ``path`` and the runtime that made it: ``(interp, info)``."""
    try:
        with quiet_native_stderr():  # LiteRT announces its delegates on stderr
            return device.load_interpreter(path, threads=threads, xnnpack=xnnpack)
    except device.DeviceError as exc:
        cls = BenchError if exc.kind == "runtime_missing" else ModelLoadError
        raise cls(exc.message, exc.hint) from exc
