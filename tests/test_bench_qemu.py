"""bench on emulated ARM: the real aarch64 Debian root under qemu-user-static, the real script.

The root is built by ``tfedge.targets.emulator.setup`` (what ``tfedge emulator setup`` runs), once,
then cached; the first session takes a minute or two, later ones reuse it.
"""

from __future__ import annotations

import numpy as np
import pytest

from tfedge.errors import BenchError, ProfileError, TargetError
from tfedge.targets import emulator
from tfedge.targets.bench import bench

FAST = dict(runs=5, warmup=1, min_secs=0.0)


def test_mirror_is_read_from_apt_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
    )
    assert emulator.apt_mirror(str(tmp_path)) == "http://mirror.example/debian"
    one_line = tmp_path / "old"
    one_line.mkdir()
    (one_line / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n"
    )
    assert emulator.apt_mirror(str(one_line)) == "http://other.example/debian"


def test_no_debian_mirror_asks_for_mirror_option(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://archive.ubuntu.example/ubuntu jammy main\n")
    with pytest.raises(TargetError) as info:
        emulator.apt_mirror(str(tmp_path))
    assert "--mirror" in info.value.hint


@pytest.mark.slow
def test_setup_is_cached_and_reused(emulator_env, run_cli, monkeypatch):
    def rebuild(*args, **kwargs):
        raise AssertionError("emulator.setup() rebuilt a cached root")

    monkeypatch.setattr(emulator, "_build", rebuild)
    again = emulator.setup()
    assert again == emulator_env
    assert (
        emulator_env.runtime in ("ai-edge-litert", "tflite-runtime")
        and emulator_env.runtime_version
    )
    assert "ready" in run_cli("emulator", "status").stdout
    assert "emulator ready" in run_cli("emulator", "setup").stdout


@pytest.mark.slow
def test_int8_outputs_under_emulation_agree_with_local_x86(emulator_env, harness_models):
    """On 200 real digits: identical top-1, and at most one int8 step apart."""
    local = bench(
        harness_models["int8"], data=harness_models["data"], keep_outputs=True, threads=1, **FAST
    )
    arm = bench(
        harness_models["int8"],
        target="qemu",
        profile="rpi4",
        data=harness_models["data"],
        keep_outputs=True,
        threads=1,
        **FAST,
    )
    assert arm.emulated and arm.arch == "aarch64" and arm.target == "qemu:cortex-a72"
    assert arm.runtime["version"] == emulator_env.runtime_version and "qemu" in arm.note
    assert local.outputs.shape == arm.outputs.shape == (200, 10) and arm.outputs.dtype == np.int8
    assert np.array_equal(local.outputs.argmax(axis=1), arm.outputs.argmax(axis=1))
    assert np.abs(local.outputs.astype(int) - arm.outputs.astype(int)).max() <= 1
    assert arm.accuracy == local.accuracy
    assert not arm.budget.checked and "emulated" in arm.budget.reason


@pytest.mark.slow
@pytest.mark.parametrize("profile, cpu", [("rpi-zero-2w", "cortex-a53"), ("rpi5", "cortex-a76")])
def test_profile_cpu_is_the_qemu_cpu(emulator_env, harness_models, run_cli, profile, cpu):
    result = run_cli(
        "bench",
        harness_models["int8"],
        "--target",
        "qemu",
        "--profile",
        profile,
        "--compare",
        harness_models["float"],
        "--runs",
        5,
        "--min-secs",
        0,
    )
    assert f"qemu:{cpu} (aarch64, EMULATED)" in result.stdout
    assert "compare     digits_float.tflite" in result.stdout
    assert "not checked: emulated" in result.stdout


@pytest.mark.slow
def test_malformed_model_under_qemu_is_a_clear_error(emulator_env, malformed_models):
    with pytest.raises(BenchError) as info:
        bench(malformed_models["truncated"], target="qemu", **FAST)
    assert "truncated.tflite" in str(info.value) and "qemu" in str(info.value)


def test_qemu_refuses_non_arm_profiles(harness_models):
    with pytest.raises(ProfileError, match="qemu emulates aarch64 boards only"):
        bench(harness_models["int8"], target="qemu", profile="local", **FAST)
