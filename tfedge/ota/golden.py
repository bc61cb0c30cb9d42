"""Golden inputs and expected outputs for a model, made on the host before it ships.

The device smoke test (``tfedge_device.interpreter.smoke``) runs ``x`` and compares the raw
outputs with ``y`` within one quantization step. Inputs are seeded random values in each
input's dtype and range (as TFLite's benchmark_model does), or the first samples of a given
``.npz``. The model is a user's file, so it runs in a fresh child process with a timeout
(``python -m tfedge_device.golden``): a crash or a hang becomes one typed error.

Example:
    >>> blob = golden_npz("kws_int8.tflite", samples=4)
    >>> sorted(np.load(io.BytesIO(blob)).files)
    ['x', 'y']
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from tfedge.errors import BenchError
from tfedge.targets.job import parse_report
from tfedge_device import child_env

DEFAULT_SAMPLES = 4
TIMEOUT = 120.0


def golden_npz(
    model: str | Path,
    data: str | Path | None = None,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    timeout: float = TIMEOUT,
) -> bytes:
    """The bytes of a compressed ``.npz`` with golden inputs ``x`` and raw outputs ``y``.

    Raises:
        DataError: ``data`` cannot be read or does not fit the model.
        BenchError: the model cannot be loaded, crashes the interpreter, or takes longer
            than ``timeout`` seconds.  TargetError: no working TFLite runtime here.
    """
    with tempfile.TemporaryDirectory(prefix="tfedge-golden-") as tmp:
        out = Path(tmp) / "golden.npz"
        argv = [sys.executable, "-m", "tfedge_device.golden", str(model), str(out)]
        argv += ["--samples", str(samples), "--seed", str(seed)]
        argv += ["--data", str(data)] if data is not None else []
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, env=child_env()
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(
                f"making the golden outputs of {model} took longer than {timeout:.0f} s",
                "the model hangs the interpreter here: check it with `tfedge bench`",
            ) from exc
        parse_report(proc.stdout, proc.stderr, proc.returncode, Path(model), "this machine")
        return out.read_bytes()
