"""Fixtures for the runtime-harness tests (profiles, bench on local / qemu / ssh).

A pytest plugin, loaded for the whole suite by ``pytest_plugins`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests import harness_helpers as hh


@pytest.fixture(scope="session")
def harness_models(tmp_path_factory) -> dict[str, Path]:
    """float32 and full-int8 digits CNNs (trained a few epochs) and 200 real test digits."""
    return hh.build_digits_models(tmp_path_factory.mktemp("harness_models"))


@pytest.fixture(scope="session")
def malformed_models(tmp_path_factory, harness_models) -> dict[str, Path]:
    return hh.write_malformed(tmp_path_factory.mktemp("malformed"), harness_models["int8"])


@pytest.fixture(scope="session")
def emulator_env():
    """The cached aarch64 root, built by the same code as ``tfedge emulator setup`` (once)."""
    from tfedge.targets import emulator

    return emulator.setup(log=lambda msg: print(f"[emulator] {msg}", file=sys.stderr))


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real OpenSSH server on a loopback port with a temporary host key and user key."""
    if not os.path.exists(hh.SSHD):
        pytest.fail(f"{hh.SSHD} is missing: run scripts/dev.sh setup (installs openssh-server)")
    server = hh.start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def ssh_home(tmp_path, monkeypatch) -> Path:
    """An empty $HOME, so the test never reads the real ~/.ssh (no keys, no known_hosts)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home
