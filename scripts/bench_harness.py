#!/usr/bin/env python3
"""Benchmark the benchmark harness itself on the MobileNetV2-0.35 reference (96x96x3, 2 classes).

1. Fidelity: the harness's median latency against LiteRT's own Python benchmark tool
   (``python -m ai_edge_litert.tools.benchmark_litert_model``), same model and threads,
   median of N alternating runs. Goal: within +-10 %.
2. int8 against float32 speed-up on the local CPU, 1 and 2 threads (goal: int8 never slower).
3. The same pair under qemu for the Cortex-A53 / A72 / A76 profiles, labelled EMULATED:
   qemu's timings, for relative comparison only, never a device's.

Prints a table and writes bench-results/harness.json and bench-results/harness.md.
Random weights, calibrated on seeded random data; the models are cached under
$XDG_CACHE_HOME/tfedge/bench-models.

Usage:
    .venv/bin/python scripts/bench_harness.py     # everything (about 5 minutes on 2 cores)
    .venv/bin/python scripts/bench_harness.py --no-qemu --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tfedge.fsutil import write_bytes_atomic  # noqa: E402
from tfedge.targets.bench import bench  # noqa: E402

QEMU_PROFILES = (("rpi3b", "cortex-a53"), ("rpi4", "cortex-a72"), ("rpi5", "cortex-a76"))
PI4_ANCHOR = (
    "Raspberry Pi 4 (ARM64, XNNPACK): int8 is 2.7x-3.2x faster than float32 for MobileNet v1/v2"
)


# ---------------------------------------------------------------- models
def model_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tfedge" / "bench-models"


def build_models() -> dict[str, Path]:
    """MobileNetV2 alpha 0.35, 96x96x3, 2 classes: float32 and full-int8 .tflite (cached)."""
    out = model_dir()
    paths = {
        "float32": out / "mobilenetv2_035_96_float32.tflite",
        "int8": out / "mobilenetv2_035_96_int8.tflite",
    }
    if all(p.is_file() for p in paths.values()):
        return paths
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.applications.MobileNetV2(
        weights=None, alpha=0.35, input_shape=(96, 96, 3), classes=2
    )
    calib = np.random.default_rng(0).uniform(-1, 1, size=(64, 96, 96, 3)).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(paths["float32"], tf.lite.TFLiteConverter.from_keras_model(model).convert())
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calib[i : i + 1]] for i in range(len(calib)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    write_bytes_atomic(paths["int8"], converter.convert())
    return paths


# ---------------------------------------------------------------- measurements
def harness_p50_us(
    model: Path, threads: int, runs: int, target: str = "local", profile: str | None = None
):
    r = bench(
        model, target=target, profile=profile, threads=threads, runs=runs, warmup=5, min_secs=0.0
    )
    return r.latency_us.p50, r


def litert_tool_median_us(model: Path, threads: int, runs: int) -> float:
    """LiteRT's own benchmark tool, shipped in ai-edge-litert: its median_ms in microseconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ai_edge_litert.tools.benchmark_litert_model",
                f"--model={model}",
                f"--num_threads={threads}",
                f"--num_runs={runs}",
                "--warmup_runs=5",
                f"--result_json={out}",
            ],
            check=True,
            capture_output=True,
        )
        return json.loads(out.read_text())["latency"]["median_ms"] * 1000.0


def fidelity(models: dict, threads: int, rounds: int, runs: int) -> list[dict]:
    rows = []
    for kind, model in models.items():
        ours, theirs = [], []
        for _ in range(rounds):  # alternate, so drift hits both tools alike
            ours.append(harness_p50_us(model, threads, runs)[0])
            theirs.append(litert_tool_median_us(model, threads, runs))
        h, t = statistics.median(ours), statistics.median(theirs)
        rows.append(
            {
                "model": kind,
                "threads": threads,
                "harness_p50_us": h,
                "litert_tool_median_us": t,
                "ratio": h / t,
                "within_10pct": abs(h / t - 1) <= 0.10,
                "rounds": rounds,
                "runs": runs,
            }
        )
    return rows


def speedup(
    models: dict,
    threads: int,
    rounds: int,
    runs: int,
    target: str = "local",
    profile: str | None = None,
) -> dict:
    """int8 (checked against ``profile``) and float32 (``--compare``), alternating.

    ``rounds`` times each.
    """
    int8, fp32 = [], []
    for _ in range(rounds):
        r = bench(
            models["int8"],
            target=target,
            profile=profile,
            threads=threads,
            runs=runs,
            warmup=5,
            min_secs=0.0,
            compare=models["float32"],
        )
        int8.append(r.latency_us.p50)
        fp32.append(r.compare.latency_us.p50)
    i, f = statistics.median(int8), statistics.median(fp32)
    return {
        "target": r.target,
        "profile": profile,
        "emulated": r.emulated,
        "runtime": f"{r.runtime['name']} {r.runtime['version']}",
        "threads": threads,
        "int8_p50_us": i,
        "float32_p50_us": f,
        "speedup": f / i,
        "int8_not_slower": i <= f,
        "rounds": rounds,
        "runs": runs,
    }


# ---------------------------------------------------------------- report
def markdown(results: dict) -> str:
    lines = [
        f"Models: MobileNetV2 alpha 0.35, 96x96x3, 2 classes (random weights); float32 "
        f"{results['model_bytes']['float32']:,} B, int8 {results['model_bytes']['int8']:,} B. "
        f"Host: {results['host']}.",
        "",
        "**Fidelity** (median of alternating runs; harness p50 vs LiteRT tool median_ms):",
        "",
        "| model | threads | harness p50 (µs) | LiteRT tool median (µs) | ratio | within ±10% |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["fidelity"]:
        lines.append(
            f"| {r['model']} | {r['threads']} | {r['harness_p50_us']:,.0f} | "
            f"{r['litert_tool_median_us']:,.0f} | {r['ratio']:.3f} | "
            f"{'yes' if r['within_10pct'] else 'NO'} |"
        )
    lines += [
        "",
        "**int8 vs float32** (median p50 of alternating runs):",
        "",
        "| target | runtime | threads | float32 p50 (µs) | int8 p50 (µs) | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["speedup"]:
        label = r["target"] + (f" ({r['profile']}, EMULATED)" if r["emulated"] else "")
        lines.append(
            f"| {label} | {r['runtime']} | {r['threads']} | {r['float32_p50_us']:,.0f} | "
            f"{r['int8_p50_us']:,.0f} | {r['speedup']:.2f}x |"
        )
    lines += [
        "",
        f"Device anchor: {PI4_ANCHOR}. Emulated rows are qemu-user timings: relative only, "
        "never a device's latency.",
    ]
    return "\n".join(lines) + "\n"


def host() -> str:
    model = ""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return f"{os.uname().machine}, {os.cpu_count()} cores{', ' + model if model else ''}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternating rounds per figure (default 5)"
    )
    parser.add_argument(
        "--runs", type=int, default=200, help="measured runs per local benchmark (default 200)"
    )
    parser.add_argument(
        "--qemu-runs", type=int, default=10, help="measured runs per emulated benchmark"
    )
    parser.add_argument(
        "--qemu-rounds", type=int, default=3, help="alternating rounds under qemu (default 3)"
    )
    parser.add_argument("--no-qemu", action="store_true", help="skip the emulated rows")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results", help="output directory")
    args = parser.parse_args()
    start = time.monotonic()
    models = build_models()
    results = {
        "host": host(),
        "model_bytes": {k: p.stat().st_size for k, p in models.items()},
        "fidelity": fidelity(models, 1, args.rounds, args.runs)
        + fidelity({"int8": models["int8"]}, 2, args.rounds, args.runs),
        "speedup": [speedup(models, t, args.rounds, args.runs) for t in (1, 2)],
        "pi4_anchor": PI4_ANCHOR,
    }
    if not args.no_qemu:
        results["speedup"] += [
            speedup(models, 1, args.qemu_rounds, args.qemu_runs, "qemu", profile)
            for profile, _ in QEMU_PROFILES
        ]
    results["seconds"] = round(time.monotonic() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out / "harness.json", json.dumps(results, indent=2).encode())
    write_bytes_atomic(args.out / "harness.md", markdown(results).encode())
    print(markdown(results))
    print(f"wrote {args.out / 'harness.json'} and harness.md in {results['seconds']} s")
    ok = all(r["within_10pct"] for r in results["fidelity"]) and all(
        r["int8_not_slower"] for r in results["speedup"] if not r["emulated"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
