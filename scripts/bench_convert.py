#!/usr/bin/env python3
"""Conversion benchmark (issue: foundation).

Prints a table and writes bench-results/convert.{json,md}.

Measures, on the reference models:
  * int8 .tflite bytes against the structural floor (int8 weights, int32 biases, per-channel
    scales and zero points), and the int8/float32 size ratio;      goal: within 10% of the floor
  * digits accuracy drop float -> int8;                              goal: <= 0.5 points
  * `tfedge convert` wall time / a plain TFLiteConverter script with the same settings, both
    fresh processes from the same file (median of 3);                goal: <= 1.15
  * `tfedge --help` wall time (median of 5);                         goal: <= 0.5 s

Usage: python scripts/bench_convert.py [--models digits kws vww anomaly] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tfedge import convert, evaluate  # noqa: E402
from tfedge.convert.tflite_model import read_tflite  # noqa: E402
from tfedge.zoo.reference import build_reference, reference_names  # noqa: E402

PLAIN_CONVERTER = """
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"; os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf, tf_keras
model = tf_keras.models.load_model(sys.argv[1], compile=False)
x = np.load(sys.argv[2])["x"].astype(np.float32)
idx = np.random.default_rng(0).choice(len(x), size=min(256, len(x)), replace=False)
c = tf.lite.TFLiteConverter.from_keras_model(model)
c.optimizations = [tf.lite.Optimize.DEFAULT]
c.representative_dataset = lambda: ([x[i:i + 1]] for i in idx)
c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
c.inference_input_type = tf.int8; c.inference_output_type = tf.int8
open(sys.argv[3], "wb").write(c.convert())
"""


def structural_floor(path: Path) -> int:
    """Bytes the tensors need at least: constant data plus 4-byte scales and 8-byte zero points."""
    model = read_tflite(path)
    return sum(t.nbytes for t in model.tensors) + sum(12 * len(t.scale) for t in model.tensors)


def size_row(name: str, work: Path) -> dict:
    ref = build_reference(name, ROOT / "models")
    f32 = convert(ref.model, work / f"{name}_f32.tflite", quant="none")
    i8 = convert(ref.model, work / f"{name}_int8.tflite", calib=ref.train)
    floor = structural_floor(Path(i8.output))
    row = {
        "model": name,
        "float32_bytes": f32.size_bytes,
        "int8_bytes": i8.size_bytes,
        "floor_bytes": floor,
        "over_floor_pct": round(100 * (i8.size_bytes / floor - 1), 2),
        "int8_float_ratio": round(i8.size_bytes / f32.size_bytes, 3),
        "full_integer": i8.full_integer,
    }
    if ref.task == "classification" and name == "digits":
        acc_f = evaluate(ref.model, ref.test).accuracy
        acc_q = evaluate(i8.output, ref.test).accuracy
        row.update(
            float_accuracy=acc_f,
            int8_accuracy=acc_q,
            accuracy_drop_points=round(100 * (acc_f - acc_q), 2),
        )
    return row


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def convert_overhead(work: Path, repeats: int) -> dict:
    ref = build_reference("digits", ROOT / "models")
    plain = work / "plain.py"
    plain.write_text(PLAIN_CONVERTER)
    tfedge_cmd = [
        sys.executable,
        "-m",
        "tfedge",
        "convert",
        ref.model,
        "--calib",
        ref.train,
        "-o",
        str(work / "t.tflite"),
    ]
    plain_cmd = [sys.executable, str(plain), ref.model, ref.train, str(work / "p.tflite")]
    t_tfedge, t_plain = [], []
    for _ in range(repeats):  # alternate so drift hits both alike
        t_tfedge.append(timed(tfedge_cmd))
        t_plain.append(timed(plain_cmd))
    a, b = statistics.median(t_tfedge), statistics.median(t_plain)
    return {
        "tfedge_convert_s": round(a, 2),
        "plain_converter_s": round(b, 2),
        "ratio": round(a / b, 3),
    }


def help_time(repeats: int = 5) -> float:
    return round(
        statistics.median(
            timed([sys.executable, "-m", "tfedge", "--help"]) for _ in range(repeats)
        ),
        3,
    )


def markdown(rows: list[dict], overhead: dict, help_s: float) -> str:
    lines = [
        "| model | float32 bytes | int8 bytes | structural floor | over floor | int8/float32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['model']} | {r['float32_bytes']:,} | {r['int8_bytes']:,} | {r['floor_bytes']:,} | "
        f"{r['over_floor_pct']}% | {r['int8_float_ratio']} |"
        for r in rows
    ]
    digits = next((r for r in rows if "accuracy_drop_points" in r), None)
    lines.append("")
    if digits:
        lines.append(
            f"- digits accuracy: float {digits['float_accuracy']:.4f}, "
            f"int8 {digits['int8_accuracy']:.4f}, "
            f"drop {digits['accuracy_drop_points']} points (goal <= 0.5)"
        )
    lines.append(
        f"- `tfedge convert` {overhead['tfedge_convert_s']} s vs plain TFLiteConverter "
        f"{overhead['plain_converter_s']} s: ratio {overhead['ratio']} (goal <= 1.15)"
    )
    lines.append(f"- `tfedge --help`: {help_s} s (goal <= 0.5 s)")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=reference_names())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    out_dir = ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = [size_row(name, work) for name in args.models]
        overhead = convert_overhead(work, args.repeats)
    help_s = help_time()
    table = markdown(rows, overhead, help_s)
    print(table)
    (out_dir / "convert.json").write_text(
        json.dumps({"models": rows, "convert_time": overhead, "help_s": help_s}, indent=2)
    )
    (out_dir / "convert.md").write_text(table)


if __name__ == "__main__":
    main()
