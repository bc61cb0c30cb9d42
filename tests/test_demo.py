"""The README's main command: the demo runs end to end on real components."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.tf]


def test_demo_runs_end_to_end(run_cli, models_root, tmp_path):
    result = run_cli("demo", "--models-dir", models_root, "--out", tmp_path / "demo")
    out = result.stdout
    assert (
        "tflite int8" in out
        and "keras 3 file -> int8" in out
        and "prune-cluster-qat int8" in out
        and "yes" in out
    )
    assert "qemu:cortex-a72 (EMULATED)" in out and "ai-edge-litert 1.4.0" in out
    assert (tmp_path / "demo" / "digits_int8.tflite").exists()
    assert "shipped to the stand-in device" in out and ": Success, model version 1" in out
    assert (tmp_path / "demo" / "device" / "current").resolve().is_file()
