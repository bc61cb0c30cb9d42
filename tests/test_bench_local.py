"""bench on the local CPU: the real device script in a subprocess with the real LiteRT runtime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tfedge.errors import BenchError, ModelLoadError, ProfileError, UsageError
from tfedge.targets.bench import bench, bench_inventory
from tfedge.targets.job import DEVICE_FILES, DEVICE_SCRIPT
from tfedge.targets.profiles import PROFILES_DIR
from tfedge.targets.stats import LatencyStats
from tfedge_device import bench as bench_device
from tfedge_device import interpreter

SCRIPT = DEVICE_SCRIPT
FAST = dict(runs=20, warmup=1, min_secs=0.05)
JSON_KEYS = {
    "target",
    "emulated",
    "arch",
    "runtime",
    "threads",
    "init_ms",
    "first_us",
    "latency_us",
    "peak_rss_mb",
}


def run_script(*args, env=None, python=sys.executable, script=SCRIPT, cwd=None):
    out = subprocess.run(
        [python, str(script), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd
    )
    return json.loads(out.stdout.strip().splitlines()[-1]), out.returncode


def native_profile(tmp_path: Path, **budgets) -> Path:
    data = yaml.safe_load((PROFILES_DIR / "local.yaml").read_text())
    data["budgets"].update(budgets)
    path = tmp_path / "here.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_device_stats_match_host_stats():
    samples = list(np.random.default_rng(1).gamma(2.0, 100.0, size=257))
    assert LatencyStats.from_dict(bench_device.latency_stats(samples)) == LatencyStats.from_samples(
        samples
    )
    s = LatencyStats.from_samples([100.0, 110.0, 120.0])
    assert (s.count, s.p50, round(s.std, 3)) == (
        3,
        110.0,
        8.165,
    )  # population std, like benchmark_model


def test_device_script_is_standalone(tmp_path):
    """bench.py needs only interpreter.py beside it: copied alone to a folder, it runs."""
    assert SCRIPT.resolve() == Path(bench_device.__file__).resolve()
    assert set(DEVICE_FILES) == {"bench.py", "interpreter.py"}
    for path in DEVICE_FILES.values():
        source = path.read_text()
        assert "import tfedge\n" not in source and "from tfedge." not in source
        assert "from tfedge_device." not in source.replace("from tfedge_device.interpreter", "")
        assert "tensorflow" not in source.replace("TensorFlow Lite", "")
        shutil.copy(path, tmp_path / path.name)
    report, code = run_script("--probe", script=tmp_path / "bench.py", cwd=tmp_path)
    assert code == 0 and report["runtime"]["name"] in ("ai-edge-litert", "tflite-runtime")
    assert not (Path(__file__).parent.parent / "scripts" / "tfedge_bench_device.py").exists()


def test_probe_reports_the_working_runtime():
    report, code = run_script("--probe")
    assert code == 0 and report["runtime"]["name"] in ("ai-edge-litert", "tflite-runtime")


def test_missing_runtime_gives_the_install_command(tmp_path):
    only_numpy = tmp_path / "site"
    only_numpy.mkdir()
    os.symlink(Path(np.__file__).parent, only_numpy / "numpy")
    env = {"PYTHONPATH": str(only_numpy), "PATH": os.environ.get("PATH", "")}
    out = subprocess.run(
        [sys.executable, "-S", str(SCRIPT), "--probe"], capture_output=True, text=True, env=env
    )
    report, code = json.loads(out.stdout), out.returncode
    assert code == interpreter.EXIT_RUNTIME and report["kind"] == "runtime_missing"
    assert "pip install numpy ai-edge-litert" in report["hint"]


def test_local_bench_reports_like_benchmark_model(harness_models):
    r = bench(
        harness_models["int8"], data=harness_models["data"], keep_outputs=True, threads=1, **FAST
    )
    data = r.to_dict()
    assert JSON_KEYS <= set(data) and data["target"] == "local" and data["emulated"] is False
    assert set(data["latency_us"]) == {"count", "min", "max", "mean", "std", "p50", "p90", "p99"}
    assert (
        r.latency_us.count >= 20
        and r.latency_us.min <= r.latency_us.p50 <= r.latency_us.p99 <= r.latency_us.max
    )
    assert r.threads == 1 and r.runtime["version"] and r.peak_rss_mb > 0 and r.init_ms > 0
    assert r.samples == 200 and r.accuracy > 0.8
    assert r.outputs.shape == (200, 10) and r.outputs.dtype == np.int8


def test_compare_reports_the_speedup(harness_models):
    r = bench(harness_models["int8"], compare=harness_models["float"], threads=1, **FAST)
    assert r.compare.model.endswith("digits_float.tflite")
    assert r.speedup == pytest.approx(r.compare.latency_us.p50 / r.latency_us.p50)


def test_xnnpack_switch_and_core_pinning(harness_models):
    r = bench(harness_models["int8"], xnnpack=False, cpus="0", threads=1, **FAST)
    assert r.runtime["xnnpack"] is False and r.device["affinity"] == [0]


def test_malformed_models_become_clear_errors(malformed_models, run_cli):
    with pytest.raises(ModelLoadError, match="not a TFLite model"):
        bench(malformed_models["garbage"], **FAST)
    with pytest.raises(BenchError) as info:
        bench(malformed_models["truncated"], **FAST)
    assert "truncated.tflite" in str(info.value)
    result = run_cli("bench", malformed_models["truncated"], "--runs", 5, expect=1)
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr


def test_profile_budgets_are_checked_on_the_machine_they_describe(
    harness_models, tmp_path, run_cli
):
    tiny_latency = native_profile(tmp_path, target_latency_ms=0.0001, max_ram_mb=1)
    result = run_cli(
        "bench",
        harness_models["int8"],
        "--profile",
        tiny_latency,
        "--runs",
        5,
        "--min-secs",
        0,
        expect=1,
    )
    assert "latency us" in result.stdout  # the numbers are printed before the failure
    assert "median latency" in result.stderr and "over local's target of 0.0001 ms" in result.stderr
    assert "peak RSS" in result.stderr and "budget of 1 MB" in result.stderr
    r = bench(harness_models["int8"], profile="rpi4", **FAST)  # x86 numbers are not a Pi's
    assert not r.budget.checked and "not on a rpi4" in r.budget.reason


def test_profile_size_and_integer_checks_run_before_benchmarking(harness_models, tmp_path):
    with pytest.raises(ProfileError, match=r"bytes, over local's budget of 1,000 bytes"):
        bench(
            harness_models["int8"], profile=native_profile(tmp_path, max_model_bytes=1000), **FAST
        )
    with pytest.raises(ProfileError, match="requires a full-integer model"):
        bench(harness_models["float"], profile="rpi3b", **FAST)


def test_cli_json_output(harness_models, run_cli):
    result = run_cli(
        "bench",
        harness_models["int8"],
        "--data",
        harness_models["data"],
        "--threads",
        1,
        "--runs",
        10,
        "--min-secs",
        0,
        "--json",
    )
    data = json.loads(result.stdout)
    assert JSON_KEYS | {"accuracy"} <= set(data) and data["runtime"]["name"]


def test_smoke_mode_checks_golden_outputs(harness_models, tmp_path):
    x = np.load(harness_models["data"])["x"][:8]
    expected = bench(
        harness_models["int8"], data=harness_models["data"], keep_outputs=True, **FAST
    ).outputs[:8]
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    np.savez(good, x=x, y=expected)
    np.savez(bad, x=x, y=(expected.astype(np.int16) + 5).clip(-128, 127).astype(np.int8))
    report, code = run_script(harness_models["int8"], "--smoke", good)
    assert code == 0 and report["ok"] and report["max_abs_diff"] <= 1
    report, code = run_script(harness_models["int8"], "--smoke", bad)
    assert code == 1 and not report["ok"]


def test_inventory_runs_devices_concurrently_one_row_each(harness_models, tmp_path):
    inventory = tmp_path / "devices.yaml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "devices": [
                    {"name": "here", "target": "local", "threads": 1},
                    {
                        "name": "gone",
                        "target": "ssh://nobody@127.0.0.1:1",
                        "known_hosts": str(tmp_path / "none"),
                    },
                ]
            }
        )
    )
    rows = bench_inventory(harness_models["int8"], inventory, **FAST)
    assert [r.name for r in rows] == ["here", "gone"]
    assert rows[0].result.latency_us.count >= 20 and rows[0].error is None
    assert rows[1].result is None and "known_hosts" in rows[1].error
    inventory.write_text(yaml.safe_dump({"devices": [{"name": "typo", "target": "ftp://nowhere"}]}))
    with pytest.raises(UsageError, match="unknown target 'ftp://nowhere'"):
        bench_inventory(harness_models["int8"], inventory)


# ---------------------------------------------------------------- inventory files (no TF)
@pytest.mark.parametrize(
    ("devices", "error", "fragment", "hint"),
    [
        (
            [{"target": "local"}, {"name": "b", "target": "qemu"}, {"target": "ftp://x"}],
            UsageError,
            "devices[2].target: unknown target 'ftp://x'",
            "ssh://user@host",
        ),
        (
            [{"name": "pi", "target": "ssh://a@h"}, {"name": "pi", "target": "ssh://b@h"}],
            UsageError,
            "devices[1] is named 'pi' like devices[0]",
            "its own `name:`",
        ),
        (
            [{"target": "local"}, {"target": "local", "threads": 1}],
            UsageError,
            "devices[1] is named 'local' like devices[0]",
            "named after its target",
        ),
        (
            [{"target": "local", "thread": 2}],
            UsageError,
            "devices[0]: unknown option 'thread'",
            "'threads'?",
        ),
        (
            [{"target": "local", "threads": 0}],
            UsageError,
            "devices[0].threads = 0 is out of range",
            ">= 1",
        ),
        (
            [{"target": "local", "threads": "2"}],
            UsageError,
            "devices[0].threads must be an integer",
            "quotes",
        ),
        (
            [{"target": "local", "key": "id"}],
            UsageError,
            "devices[0]: key only applies to ssh://",
            "drop",
        ),
        ([{"name": "pi"}], UsageError, "devices[0].target is required", "add `target:`"),
        (["local"], UsageError, "devices[0] must be a mapping, got 'local'", "key: value"),
        ([], UsageError, "has no devices list", "devices: [{name: pi1"),
        (
            [{"target": "local"}, {"name": "pi", "target": "ssh://pi@h", "profile": "rpi44"}],
            ProfileError,
            "devices[1].profile: unknown device profile 'rpi44'",
            "rpi4",
        ),
    ],
)
def test_inventory_errors_name_the_device_and_key(tmp_path, devices, error, fragment, hint):
    from tfedge.targets.bench import load_inventory

    inventory = tmp_path / "devices.yaml"
    inventory.write_text(yaml.safe_dump({"devices": devices}))
    with pytest.raises(error) as info:
        load_inventory(inventory)
    assert info.value.message.startswith(f"inventory {inventory}")
    assert fragment in info.value.message and hint in info.value.hint, info.value


def test_inventory_entries_are_named_and_typed(tmp_path):
    from tfedge.targets.bench import load_inventory

    inventory = tmp_path / "devices.yaml"
    inventory.write_text(
        "devices:\n"
        "  - {target: local, profile: rpi4, threads: 2}\n"
        "  - {name: pi, target: 'ssh://pi@pi.local', key: id_ed25519, connect_timeout: 5}\n"
    )
    assert load_inventory(inventory) == [
        {"name": "local", "target": "local", "profile": "rpi4", "threads": 2},
        {"name": "pi", "target": "ssh://pi@pi.local", "key": "id_ed25519", "connect_timeout": 5.0},
    ]


# ---------------------------------------------------------------- a profile's threads here
def test_profile_threads_are_capped_at_this_hosts_cores():
    from tfedge.targets.bench import pick_threads
    from tfedge.targets.local import host_cores
    from tfedge.targets.profiles import load_profile

    rpi4, here = load_profile("rpi4"), host_cores()
    for kind in ("local", "qemu"):  # qemu runs the guest's threads on this host's cores
        threads, note = pick_threads(None, rpi4, kind)
        assert threads == min(4, here) and bool(note) == (here < 4)
        assert pick_threads(None, rpi4, kind, cpus="0") == (
            1,
            "profile rpi4 asks for 4 threads; --cpus 0 gives 1 core",
        )
    assert pick_threads(None, rpi4, "ssh") == (4, "")  # on the device itself: the profile's
    assert pick_threads(8, rpi4, "local") == (8, "")  # the user's --threads always wins
    assert pick_threads(None, load_profile("local"), "local") == (here, "")
    assert host_cores("0-1,3") == 3


def test_local_bench_says_why_it_runs_fewer_threads_than_the_profile(tmp_path):
    from tfedge.cli.bench import format_result

    from . import hostile_tflite

    model = hostile_tflite.write(tmp_path / "m.tflite", hostile_tflite.base())
    r = bench(model, profile="rpi4", cpus="0", runs=2, warmup=0, min_secs=0)
    assert r.threads == 1 and r.device["affinity"] == [0]
    assert r.to_dict()["threads_note"] == "profile rpi4 asks for 4 threads; --cpus 0 gives 1 core"
    assert "note        threads: 1 (profile rpi4 asks for 4 threads;" in format_result(r)
    explicit = bench(model, profile="rpi4", cpus="0", threads=2, runs=2, warmup=0, min_secs=0)
    assert explicit.threads == 2 and explicit.to_dict()["threads_note"] == ""
