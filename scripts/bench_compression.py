#!/usr/bin/env python3
"""Compression benchmark (issue #3). Prints a table and writes bench-results/compression.{json,md}.

Runs every built-in recipe on the reference models through `tfedge.optimize` and reports
accuracy, raw / gzip / xz bytes, the float32-.tflite-to-gzip ratio and local latency (median
of single-thread invokes). Then two experiments on the digits model:

  * distill: a width-0.125 student trained alone vs distilled (same architecture, seed, epochs
    and optimizer), mean of 3 seeds;           goal: recovers >= 50% of the teacher gap
  * low_rank: Dense parameters before/after and the accuracy drop after fine-tuning;
                                                goal: >= 50% fewer Dense params, <= 1.0 point drop

Goals on digits: int8 drop <= 0.5 pt; prune-cluster-qat gzip <= float32/11 and drop <= 1.0 pt
and whole run <= 90 s; max-compress gzip <= float32/18 and drop <= 1.5 pt.

Usage: python scripts/bench_compression.py [--models digits kws anomaly] [--seeds 0 1 2] [--skip-distill]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tfedge import optimize  # noqa: E402
from tfedge.recipe import builtin_recipes  # noqa: E402
from tfedge.reference import build_reference  # noqa: E402

GOALS = {  # recipe -> (max drop in points, min float32/gzip ratio, max seconds)
    "int8": (0.5, None, None),
    "prune-cluster-qat": (1.0, 11.0, 90.0),
    "max-compress": (1.5, 18.0, None),
}


def latency_us(path: str, runs: int = 300) -> float:
    """Median single-thread invoke time of a .tflite on this machine, in microseconds."""
    from tfedge.runtime import load_interpreter

    interp, _ = load_interpreter(path, threads=1)
    detail = interp.get_input_details()[0]
    interp.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    for _ in range(20):
        interp.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - start)
    return round(1e6 * statistics.median(times), 1)


def recipe_row(model: str, recipe: str, work: Path) -> dict:
    ref = build_reference(model, ROOT / "models")
    started = time.perf_counter()
    result = optimize(ref.model, recipe, ref.train, ref.test, work / f"{model}-{recipe}")
    seconds = round(time.perf_counter() - started, 1)
    base, final = result.stages[0], result.final
    out = Path(result.output_dir)
    row = {"model": model, "recipe": recipe, "stages": [s.name for s in result.stages], "seconds": seconds,
           "float32_bytes": base.tflite_bytes, "tflite_bytes": final.tflite_bytes, "gzip_bytes": final.gzip_bytes,
           "xz_bytes": final.xz_bytes, "ratio_gzip": round(base.tflite_bytes / final.gzip_bytes, 2),
           "ratio_xz": round(base.tflite_bytes / final.xz_bytes, 2), "sparsity": final.sparsity,
           "unique_per_channel": final.unique_weights, "params": final.params, "nonzero_params": final.nonzero_params,
           "latency_us": latency_us(str(out / "model.tflite")),
           "float32_latency_us": latency_us(str(out / base.tflite))}
    if base.accuracy is not None:
        row.update(float_accuracy=base.accuracy, accuracy=final.accuracy,
                   drop_points=round(100 * (base.accuracy - final.accuracy), 2))
    else:
        row.update(float_mse=base.mse, mse=final.mse)
    return row


def check_goals(row: dict) -> list[str]:
    goal = GOALS.get(row["recipe"]) if row["model"] == "digits" else None
    if goal is None:
        return []
    max_drop, min_ratio, max_seconds = goal
    checks = [f"drop {row['drop_points']} <= {max_drop}: {'PASS' if row['drop_points'] <= max_drop else 'FAIL'}"]
    if min_ratio:
        checks.append(f"ratio {row['ratio_gzip']} >= {min_ratio}: {'PASS' if row['ratio_gzip'] >= min_ratio else 'FAIL'}")
    if max_seconds:
        checks.append(f"{row['seconds']} s <= {max_seconds}: {'PASS' if row['seconds'] <= max_seconds else 'FAIL'}")
    return checks


def _digits_context(seed: int):
    from tfedge.data import load_data
    from tfedge.passes import PassContext, TrainConfig

    ref = build_reference("digits", ROOT / "models")
    train, test = load_data(ref.train), load_data(ref.test)
    return PassContext(x=train.x.astype(np.float32), y=train.y, train=TrainConfig(), seed=seed,
                       eval_x=test.x, eval_y=test.y)


def _teacher():
    from tfedge.loading import load_tf_keras_model

    return load_tf_keras_model(build_reference("digits", ROOT / "models").model)


def distill_experiment(seeds: list[int], width: float, epochs: int) -> dict:
    from tfedge.passes import build_pass

    teacher = _teacher()
    runs = []
    for seed in seeds:
        p = build_pass("distill", {"width": width, "epochs": epochs, "temperature": 4.0, "alpha": 0.1,
                                   "compare_alone": True})
        runs.append(p.apply(teacher, _digits_context(seed)).metrics)
    mean = {k: round(statistics.mean(r[k] for r in runs), 4)
            for k in ("teacher_accuracy", "student_alone_accuracy", "student_accuracy")}
    gap = mean["teacher_accuracy"] - mean["student_alone_accuracy"]
    recovered = (mean["student_accuracy"] - mean["student_alone_accuracy"]) / gap if gap > 0 else float("nan")
    return {"student": f"digits CNN at width {width}", "student_params": runs[0]["student_params"],
            "teacher_params": runs[0]["teacher_params"], "epochs": epochs, "temperature": 4.0, "alpha": 0.1,
            "seeds": seeds, "runs": runs, **mean, "gap_points": round(100 * gap, 2),
            "recovered_share": round(recovered, 3),
            "goal": f"gap >= 2 points and recovered >= 0.5: "
                    f"{'PASS' if gap >= 0.02 and recovered >= 0.5 else 'FAIL'}"}


def low_rank_experiment(param_ratio: float, epochs: int) -> dict:
    from tfedge.passes import build_pass

    teacher, ctx = _teacher(), _digits_context(0)
    dense = lambda m: sum(l.count_params() for l in m.layers if type(l).__name__ == "Dense")  # noqa: E731
    result = build_pass("low_rank", {"param_ratio": param_ratio, "epochs": epochs}).apply(teacher, ctx)
    before_acc, after_acc = ctx.accuracy(teacher), ctx.accuracy(result.model)
    fewer = 1 - dense(result.model) / dense(teacher)
    drop = round(100 * (before_acc - after_acc), 2)
    return {"param_ratio": param_ratio, "epochs": epochs, "layers": result.metrics["layers"],
            "dense_params_before": dense(teacher), "dense_params_after": dense(result.model),
            "fewer_dense_share": round(fewer, 3), "accuracy_before": before_acc, "accuracy_after": after_acc,
            "drop_points": drop, "goal": f">= 50% fewer and drop <= 1.0: "
                                         f"{'PASS' if fewer >= 0.5 and drop <= 1.0 else 'FAIL'}"}


def markdown(rows: list[dict], distill: dict | None, low_rank: dict | None) -> str:
    lines = ["| model | recipe | accuracy (float -> final) | tflite B | gzip B | xz B | float32/gzip | float32/xz "
             "| latency µs (float32 -> final) | run s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = (f"{100 * r['float_accuracy']:.2f}% -> {100 * r['accuracy']:.2f}%" if "accuracy" in r
               else f"MSE {r['float_mse']:.4f} -> {r['mse']:.4f}")
        lines.append(f"| {r['model']} | {r['recipe']} | {acc} | {r['tflite_bytes']:,} | {r['gzip_bytes']:,} | "
                     f"{r['xz_bytes']:,} | {r['ratio_gzip']}x | {r['ratio_xz']}x | {r['float32_latency_us']} -> "
                     f"{r['latency_us']} | {r['seconds']} |")
    if distill:
        lines += ["", f"Distillation ({distill['student']}, {distill['student_params']:,} vs "
                      f"{distill['teacher_params']:,} params, {distill['epochs']} epochs, T={distill['temperature']}, "
                      f"alpha={distill['alpha']}, mean of seeds {distill['seeds']}): teacher "
                      f"{100 * distill['teacher_accuracy']:.2f}%, student alone "
                      f"{100 * distill['student_alone_accuracy']:.2f}%, distilled {100 * distill['student_accuracy']:.2f}%"
                      f"; recovered {100 * distill['recovered_share']:.0f}% of the gap. {distill['goal']}"]
    if low_rank:
        lines += ["", f"Low-rank (param_ratio {low_rank['param_ratio']}, {low_rank['epochs']} fine-tuning epochs): "
                      f"Dense parameters {low_rank['dense_params_before']:,} -> {low_rank['dense_params_after']:,} "
                      f"({100 * low_rank['fewer_dense_share']:.0f}% fewer), accuracy "
                      f"{100 * low_rank['accuracy_before']:.2f}% -> {100 * low_rank['accuracy_after']:.2f}%. "
                      f"{low_rank['goal']}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits", "kws", "anomaly"])
    parser.add_argument("--recipes", nargs="+", default=builtin_recipes())
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--distill-width", type=float, default=0.125)
    parser.add_argument("--distill-epochs", type=int, default=30)
    parser.add_argument("--skip-distill", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tfedge-bench-compression-"))
    rows = []
    try:
        for model in args.models:
            for recipe in args.recipes:
                if model == "anomaly" and recipe.startswith("distill"):
                    continue  # distillation needs class labels; the autoencoder has none
                rows.append(recipe_row(model, recipe, work))
                print(json.dumps(rows[-1]), *check_goals(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    distill = None if args.skip_distill else distill_experiment(args.seeds, args.distill_width, args.distill_epochs)
    low_rank = low_rank_experiment(0.4, 3)
    for row in rows:
        row["goals"] = check_goals(row)
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "compression.json").write_text(json.dumps({"rows": rows, "distill": distill, "low_rank": low_rank},
                                                     indent=2, default=str))
    table = markdown(rows, distill, low_rank)
    (out / "compression.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
