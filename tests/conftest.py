"""Shared fixtures: reference models built once per session, tiny models, the CLI runner."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from tfedge.cli.main import cli  # noqa: E402


class Cli:
    """Runs ``tfedge`` in-process with click's CliRunner; stdout and stderr kept apart."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str, expect: int | None = 0):
        result = self.runner.invoke(cli, [str(a) for a in args])
        if expect is not None:
            assert result.exit_code == expect, (
                f"exit {result.exit_code}, expected {expect}\nstdout: {result.stdout}\n"
                f"stderr: {result.stderr}\nexception: {result.exception!r}"
            )
        return result


@pytest.fixture
def run_cli() -> Cli:
    return Cli()


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def digits(models_root):
    """The digits reference model, trained once per test session."""
    from tfedge.zoo.reference import build_reference

    return build_reference("digits", models_root)


@pytest.fixture(scope="session")
def digits_int8(digits, tmp_path_factory) -> Path:
    import tfedge

    out = tmp_path_factory.mktemp("digits_int8") / "digits_int8.tflite"
    tfedge.convert(digits.model, out, calib=digits.train)
    return out


@pytest.fixture(scope="session")
def float_op_model(tmp_path_factory) -> tuple[Path, Path]:
    """A tf_keras model with a Sin layer (no integer kernel), and calibration data for it.

    Saved as .h5: a Lambda layer cannot be stored in the safe .keras format.
    """
    from tfedge._tf import import_keras

    k = import_keras()
    d = tmp_path_factory.mktemp("sin")
    model = k.Sequential(
        [
            k.layers.InputLayer(input_shape=(8,)),
            k.layers.Dense(4, name="proj"),
            k.layers.Lambda(lambda t: __import__("tensorflow").math.sin(t), name="sine"),
            k.layers.Dense(3, name="head"),
        ]
    )
    model.save(d / "sin.h5")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    np.savez(d / "calib.npz", x=x)
    return d / "sin.h5", d / "calib.npz"


@pytest.fixture(scope="session")
def ota_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny full-int8 models v1, v2, v3, ``wide`` and a ``broken`` file, for the OTA tests."""
    from tests import ota_helpers

    return ota_helpers.build_models(tmp_path_factory.mktemp("ota_models"))


def assert_one_error_line(result, *fragments: str) -> None:
    """The CLI printed one clear error line naming ``fragments`` and no traceback."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for fragment in fragments:
        assert fragment.lower() in errors[0].lower(), errors[0]
