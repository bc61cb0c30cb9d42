"""Run a user's ``.tflite`` in a fresh child process with a timeout.

A structurally valid but malformed or hostile model can crash the TFLite runtime (SIGSEGV,
SIGABRT, SIGFPE) or hang it (a WHILE loop that never ends). Whatever runs such a file on the
host therefore runs it here, in ``python -m tfedge.analyze.isolated``: a crash or a hang
becomes one typed error naming the signal or the timeout, and tfedge itself carries on.
Inputs and outputs go by path (``.npz`` in, ``.npy`` out) through a private folder; errors
come back as one JSON line and are raised again with their own class, message and hint.

Example:
    >>> predict_tflite_isolated("model_int8.tflite", x_test).shape
    (360, 10)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tfedge import errors
from tfedge.errors import BenchError, TfedgeError
from tfedge.io.data import Inputs, num_samples
from tfedge.targets.job import last_json

BASE_TIMEOUT_S = 120.0  # start-up and interpreter creation, generous for a loaded machine
PER_SAMPLE_TIMEOUT_S = 0.5  # far above any model that fits a Raspberry-Pi-class budget
_PREFIX = "input__"  # npz keys of a dict of inputs; a single array is stored as "x"


def predict_tflite_isolated(
    path: str | os.PathLike,
    x: Inputs,
    *,
    progress: bool = False,
    threads: int | None = None,
    timeout: float | None = None,
) -> np.ndarray:
    """Float outputs of the ``.tflite`` at ``path`` for inputs ``x``, computed in a child.

    Raises:
        ModelLoadError: the file is not a valid model (checked before any child starts).
        DataError: ``x`` does not fit the model's inputs.
        BenchError: the runtime crashed (the signal is named) or took longer than ``timeout``.
    """
    from tfedge.convert.tflite_model import read_tflite

    read_tflite(path)  # a damaged file fails here, cleanly, before the interpreter sees it
    limit = timeout or BASE_TIMEOUT_S + PER_SAMPLE_TIMEOUT_S * num_samples(x)
    with tempfile.TemporaryDirectory(prefix="tfedge-predict-") as tmp:
        inputs, outputs = Path(tmp) / "x.npz", Path(tmp) / "y.npy"
        save_inputs(inputs, x)
        argv = [sys.executable, "-m", "tfedge.analyze.isolated", str(path), str(inputs)]
        argv += [str(outputs), *(["--threads", str(threads)] if threads else [])]
        argv += ["--progress"] if progress else []
        proc = _run_child(argv, limit, Path(path), capture_stderr=not progress)
        _raise_for_failure(proc, Path(path))
        return np.load(outputs, allow_pickle=False)


def save_inputs(path: Path, x: Inputs) -> None:
    """Write ``x`` (one array, or one array per input name) to an ``.npz`` the child reads."""
    arrays: dict[str, Any] = (
        {f"{_PREFIX}{k}": v for k, v in x.items()} if isinstance(x, dict) else {"x": x}
    )
    np.savez(path, **arrays)


def load_inputs(path: str | os.PathLike) -> Inputs:
    """The inverse of :func:`save_inputs`."""
    with np.load(path, allow_pickle=False) as f:
        if list(f.files) == ["x"]:
            return f["x"]
        return {name.removeprefix(_PREFIX): f[name] for name in f.files}


def _run_child(argv: list[str], timeout: float, model: Path, capture_stderr: bool):
    try:
        return subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if capture_stderr else None,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(
            f"running {model.name} took longer than {timeout:.0f} s and was stopped",
            "the model hangs the TFLite runtime (e.g. a loop that never ends): "
            "re-convert it, or check it with `tfedge bench`",
        ) from exc


def _raise_for_failure(proc: subprocess.CompletedProcess, model: Path) -> None:
    if proc.returncode < 0:
        raise BenchError(
            f"the TFLite runtime crashed ({_signal_name(-proc.returncode)}) running "
            f"{model.name}; tfedge itself is unaffected",
            "the model is malformed or hostile, or hits a runtime bug: re-convert it",
        )
    if proc.returncode != 0:
        raise _error_from(last_json(proc.stdout) or {}, proc.stderr or "", proc.returncode)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _error_from(report: dict, stderr: str, code: int) -> TfedgeError:
    cls = getattr(errors, str(report.get("kind")), None)
    if not (isinstance(cls, type) and issubclass(cls, TfedgeError)):
        cls = BenchError
    tail = " | ".join(stderr.strip().splitlines()[-2:]) or f"exit status {code}"
    message = report.get("error") or f"running the model failed: {tail}"
    return cls(message, report.get("hint", "run with --debug for details"))


# ---------------------------------------------------------------- the child
def main(argv: list[str] | None = None) -> int:
    """``python -m tfedge.analyze.isolated MODEL X.npz OUT.npy [--threads N] [--progress]``."""
    from tfedge.analyze.evaluate import predict_tflite

    parser = argparse.ArgumentParser(description="Run a .tflite model on inputs (a child).")
    parser.add_argument("model")
    parser.add_argument("inputs")
    parser.add_argument("out")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        x = load_inputs(args.inputs)
        y = predict_tflite(args.model, x, progress=args.progress, threads=args.threads)
        np.save(args.out, y)
    except TfedgeError as err:
        print(json.dumps({"error": err.message, "hint": err.hint, "kind": type(err).__name__}))
        return 1
    print(json.dumps({"samples": int(len(y))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
