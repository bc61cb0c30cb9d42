"""Shared fixtures: reference models built once per session, tiny models, the CLI runner.

Tiers: tests marked ``tf`` need TensorFlow (they build, train or convert a model); the others
run in seconds with ``pytest -m "not tf"``, and fail if they import TensorFlow. A test is
marked ``tf`` by hand, or here when it uses one of ``TF_FIXTURES``.

Random tests draw from the ``seed`` fixture: fixed by default, printed in the header,
overridden with ``--seed N`` or ``TFEDGE_TEST_SEED=N``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from tfedge.cli.main import cli  # noqa: E402

# The harness fixtures (models for bench, the emulator, a real sshd) live in their own module.
pytest_plugins = ["tests.conftest_harness"]

DEFAULT_SEED = 20261130
TF_MODULES = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization")
# Fixtures that build models with TensorFlow: a test using one is in the ``tf`` tier.
TF_FIXTURES = frozenset(
    {"digits", "digits_int8", "float_op_model", "ota_models", "harness_models", "malformed_models"}
)
_TF_BEFORE = pytest.StashKey[bool]()


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--seed",
        type=int,
        default=None,
        help=f"seed of the random tests (default: $TFEDGE_TEST_SEED or {DEFAULT_SEED})",
    )


def _seed(config) -> int:
    chosen = config.getoption("--seed")
    return chosen if chosen is not None else int(os.environ.get("TFEDGE_TEST_SEED", DEFAULT_SEED))


def pytest_report_header(config) -> str:
    seed = _seed(config)
    return f"random tests: seed {seed} (rerun with --seed {seed} or TFEDGE_TEST_SEED={seed})"


@pytest.fixture(scope="session")
def seed(pytestconfig) -> int:
    """The seed of the random tests: see the module docstring."""
    return _seed(pytestconfig)


@pytest.fixture
def rng(seed) -> np.random.Generator:
    """A fresh generator seeded with ``seed`` for each test."""
    return np.random.default_rng(seed)


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if TF_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.tf)


def _tf_loaded() -> bool:
    return any(name in sys.modules for name in TF_MODULES)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    item.stash[_TF_BEFORE] = _tf_loaded()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    newly_loaded = not item.stash.get(_TF_BEFORE, True) and _tf_loaded()
    if newly_loaded and item.get_closest_marker("tf") is None:
        pytest.fail(
            "this test imported TensorFlow but is not marked tf: mark it "
            "@pytest.mark.tf (or use a fixture in TF_FIXTURES), or keep TensorFlow out of it",
            pytrace=False,
        )
    return result


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

    Saved as .h5: a Lambda layer cannot be stored in the safe .keras format. Its Lambda
    carries bytecode: loading it needs ``trust_model=True`` (``--trust-model``).
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
