"""Golden inputs and expected outputs for a model, made on the host before it ships.

The device smoke test (``tfedge_device.interpreter.smoke``) runs ``x`` and compares the raw
outputs with ``y`` within one quantization step. Inputs are seeded random values in each
input's dtype and range (as TFLite's benchmark_model does), or the first samples of a given
``.npz``.

Example:
    >>> blob = golden_npz("kws_int8.tflite", samples=4)
    >>> sorted(np.load(io.BytesIO(blob)).files)
    ['x', 'y']
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tfedge.errors import DataError
from tfedge_device import interpreter as device

DEFAULT_SAMPLES = 4


def golden_npz(
    model: str | Path, data: str | Path | None = None, samples: int = DEFAULT_SAMPLES, seed: int = 0
) -> bytes:
    """The bytes of a compressed ``.npz`` with golden inputs ``x`` and raw outputs ``y``."""
    from tfedge.analyze.runtime import load_interpreter

    interp, _ = load_interpreter(str(model), threads=1)
    x = _inputs(interp, data, samples, seed)
    raw, _ = device.predict_all(interp, x)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x, y=raw)
    return buffer.getvalue()


def _inputs(interp, data, samples: int, seed: int) -> np.ndarray:
    if data is None:
        return np.stack([device.random_inputs(interp, seed + i)[0] for i in range(samples)])
    try:
        x, _ = device.load_data(str(data))
    except device.DeviceError as exc:
        raise DataError(exc.message, exc.hint) from exc
    return np.asarray(x)[:samples]
