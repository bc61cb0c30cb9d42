"""Bad input, tried as a new user would: one clear error line, exit 1, no file left behind."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from .conftest import assert_one_error_line


def _convert(run_cli, model, calib, out, expect=1):
    return run_cli("convert", model, "--calib", calib, "-o", out, expect=expect)


def _no_tflite_left(directory):
    leftovers = [p.name for p in directory.iterdir() if ".tflite" in p.name]
    assert leftovers == [], leftovers


def test_random_bytes_as_model(run_cli, digits, tmp_path, rng):
    bad = tmp_path / "random.keras"
    bad.write_bytes(rng.bytes(4096))
    result = _convert(run_cli, bad, digits.train, tmp_path / "o.tflite")
    assert_one_error_line(result, "not a model file")
    _no_tflite_left(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_truncated_model(run_cli, digits, tmp_path, suffix):
    from tfedge.io.models import detect_format, load_keras_model

    full = tmp_path / f"full{suffix}"
    load_keras_model(detect_format(digits.model)).save(full)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    result = _convert(run_cli, cut, digits.train, tmp_path / "o.tflite")
    assert_one_error_line(result, "damaged", "truncated")
    _no_tflite_left(tmp_path)


def test_missing_data_file(run_cli, digits, tmp_path):
    result = run_cli(
        "convert",
        digits.model,
        "--calib",
        tmp_path / "nope.npz",
        "-o",
        tmp_path / "o.tflite",
        expect=2,
    )
    assert "does not exist" in result.stderr
    _no_tflite_left(tmp_path)


@pytest.mark.parametrize("content", [b"", b"garbage, not numpy"])
def test_empty_or_broken_data_file(run_cli, digits, tmp_path, content):
    bad = tmp_path / "calib.npz"
    bad.write_bytes(content)
    result = _convert(run_cli, digits.model, bad, tmp_path / "o.tflite")
    assert_one_error_line(result, "calib.npz", "not a readable .npz")
    _no_tflite_left(tmp_path)


def test_data_with_no_samples(run_cli, digits, tmp_path):
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 8, 8, 1), np.float32))
    result = _convert(run_cli, digits.model, empty, tmp_path / "o.tflite")
    assert_one_error_line(result, "no samples")
    _no_tflite_left(tmp_path)


@pytest.mark.slow
def test_data_of_wrong_shape(run_cli, digits, tmp_path):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((10, 8, 8), np.float32))
    result = _convert(run_cli, digits.model, wrong, tmp_path / "o.tflite")
    assert_one_error_line(result, "(8, 8)", "(8, 8, 1)", "channel axis")
    _no_tflite_left(tmp_path)


def test_data_of_wrong_dtype(run_cli, digits, tmp_path):
    wrong = tmp_path / "strings.npy"
    np.save(wrong, np.array([["a"] * 4] * 3))
    result = _convert(run_cli, digits.model, wrong, tmp_path / "o.tflite")
    assert_one_error_line(result, "not numbers")
    _no_tflite_left(tmp_path)


def test_nan_in_calibration_data(run_cli, digits, tmp_path):
    x = np.load(digits.train)["x"][:20].copy()
    x[3, 0, 0, 0] = np.nan
    x[5, 1, 1, 0] = np.inf
    bad = tmp_path / "nan.npz"
    np.savez(bad, x=x)
    result = _convert(run_cli, digits.model, bad, tmp_path / "o.tflite")
    assert_one_error_line(result, "2 NaN or Inf")
    _no_tflite_left(tmp_path)


def test_unwritable_output_path(run_cli, digits, tmp_path):
    result = _convert(run_cli, digits.model, digits.train, tmp_path / "missing-dir" / "o.tflite")
    assert_one_error_line(result, "does not exist", "mkdir")


def test_unwritable_output_directory(run_cli, digits, tmp_path):
    # /proc refuses new files even to root, so this runs the same for every user.
    result = _convert(run_cli, digits.model, digits.train, "/proc/o.tflite")
    assert_one_error_line(result, "cannot write to /proc")


def test_tflite_given_to_convert(run_cli, digits_int8, digits, tmp_path):
    result = run_cli(
        "convert", digits_int8, "--calib", digits.train, "-o", tmp_path / "o.tflite", expect=2
    )
    assert_one_error_line(result, "already a TFLite model")


def test_bad_option_combination_is_a_usage_error(run_cli, digits, tmp_path):
    result = run_cli(
        "convert",
        digits.model,
        "--calib",
        digits.train,
        "--quant",
        "int16x8",
        "--io",
        "int8",
        "-o",
        tmp_path / "o.tflite",
        expect=2,
    )
    assert_one_error_line(result, "--io int8 does not fit --quant int16x8")


def test_random_bytes_to_inspect_and_evaluate(run_cli, digits, tmp_path, rng):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x1c\x00\x00\x00TFL3" + rng.bytes(200))
    assert_one_error_line(run_cli("inspect", bad, expect=1), "damaged TFLite model")
    assert_one_error_line(
        run_cli("evaluate", bad, "--data", digits.test, expect=1), "damaged TFLite model"
    )


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a model")
    proc = subprocess.run(
        [sys.executable, "-m", "tfedge", "--debug", "inspect", str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ModelLoadError" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["convert", "--help"],
        ["inspect", "--help"],
        ["evaluate", "--help"],
        ["demo", "--help"],
    ],
)
def test_help_does_not_import_tensorflow(args):
    code = (
        "import sys; from tfedge.cli.main import cli\n"
        f"try: cli({args!r}, prog_name='tfedge')\nexcept SystemExit as e: assert e.code == 0\n"
        "bad = [m for m in ('tensorflow', 'tf_keras', 'keras') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (42, "type int"),
        ([np.zeros((2, 8, 8, 1)), np.zeros(2)], "type list"),
        ((np.full((2, 8, 8, 1), np.nan), np.zeros(2, int)), "NaN"),
        ((np.zeros((3, 8, 8, 1)), np.zeros(2, int)), "3 inputs but 2 labels"),
    ],
)
def test_evaluate_api_data_of_the_wrong_form(tmp_path, data, fragment):
    """Not a TypeError: a DataError with a hint, raised before any model is loaded."""
    import tfedge
    from tfedge.errors import DataError

    with pytest.raises(DataError, match=fragment) as failed:
        tfedge.evaluate(tmp_path / "never-read.tflite", data)
    assert failed.value.hint
