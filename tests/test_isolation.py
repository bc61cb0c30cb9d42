"""A user's .tflite runs in a fresh child with a timeout: a crash or a hang is one typed error."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfedge.analyze.evaluate import evaluate, predict
from tfedge.analyze.isolated import _raise_for_failure, load_inputs, save_inputs
from tfedge.errors import BenchError, DataError


def _test_split(digits):
    with np.load(digits.test) as f:
        return f["x"][:64], f["y"][:64]


@pytest.mark.tf
def test_isolated_and_in_process_predictions_are_identical(digits, digits_int8):
    x, _ = _test_split(digits)
    isolated = predict(str(digits_int8), x)
    here = predict(str(digits_int8), x, isolate=False)
    assert isolated.dtype == np.float32 and np.array_equal(isolated, here)
    assert evaluate(digits_int8, digits.test).accuracy > 0.9


@pytest.mark.tf
def test_an_error_in_the_child_keeps_its_type_and_message(digits_int8):
    wrong = np.zeros((4, 9, 9, 1), np.float32)
    with pytest.raises(DataError) as isolated:
        predict(str(digits_int8), wrong)
    with pytest.raises(DataError) as here:
        predict(str(digits_int8), wrong, isolate=False)
    assert (isolated.value.message, isolated.value.hint) == (here.value.message, here.value.hint)


@pytest.mark.tf
def test_a_hang_is_stopped_by_the_timeout(digits, digits_int8):
    from tfedge.analyze.isolated import predict_tflite_isolated

    x, _ = _test_split(digits)
    with pytest.raises(BenchError, match="took longer than 0 s and was stopped"):
        predict_tflite_isolated(digits_int8, x, timeout=0.01)


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGABRT, signal.SIGFPE])
def test_a_crashed_child_is_one_error_naming_the_signal(sig):
    crashed = subprocess.run(
        [sys.executable, "-c", f"import os; os.kill(os.getpid(), {int(sig)})"],
        capture_output=True,
        text=True,
    )
    with pytest.raises(BenchError, match=f"crashed \\({sig.name}\\) running m.tflite"):
        _raise_for_failure(crashed, Path("m.tflite"))


@pytest.mark.parametrize(
    "x",
    [np.arange(6.0).reshape(3, 2), {"image": np.ones((2, 4)), "x": np.zeros((2, 1))}],
    ids=["one-array", "by-name"],
)
def test_inputs_round_trip_through_the_child_file(tmp_path, x):
    save_inputs(tmp_path / "x.npz", x)
    back = load_inputs(tmp_path / "x.npz")
    if isinstance(x, dict):
        assert back.keys() == x.keys() and all(np.array_equal(back[k], x[k]) for k in x)
    else:
        assert np.array_equal(back, x)
