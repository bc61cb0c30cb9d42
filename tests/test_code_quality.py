"""Guard rails: lint, formatting, types and import contracts, run as tests.

Each check runs its tool in a subprocess from the repository root with the configuration in
``pyproject.toml``; a red check fails with the tool's own output. Run them alone with
``pytest tests/test_code_quality.py``; fix most lint and format findings with
``ruff check --fix . && ruff format .``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, timeout: float = 300) -> None:
    """Run a tool from the repository root; fail with its output unless it exits 0.

    ``device`` goes first on the path: the device package is checked from this checkout even
    where it is not installed.
    """
    path = os.pathsep.join(filter(None, [str(ROOT / "device"), os.environ.get("PYTHONPATH")]))
    try:
        done = subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": path},
            capture_output=True,
            text=True,
            timeout=timeout,  # only guards against a hang
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args)} did not finish within {timeout} s: {exc}")
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {done.returncode}\n{done.stdout}{done.stderr}",
            pytrace=False,
        )


def test_ruff_check():
    _run("-m", "ruff", "check", "--no-fix", ".")


def test_ruff_format():
    _run("-m", "ruff", "format", "--check", "--diff", ".")


def test_mypy():
    """Type-checks the paths listed in ``[tool.mypy]``; incremental through ``.mypy_cache``."""
    _run("-m", "mypy")


def test_import_contracts():
    """The contracts in ``[tool.importlinter]`` (import-linter follows imports inside functions)."""
    _run(
        "-c",
        "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())",
        "--no-cache",
        "--no-logo",
    )
