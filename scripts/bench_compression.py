#!/usr/bin/env python3
"""Compression benchmark (issue #3). Prints tables and writes bench-results/compression.{json,md}.

Runs every built-in recipe on every reference model (digits, kws, vww, anomaly) through
`tfedge.optimize` and reports accuracy (MSE for the anomaly autoencoder), raw / gzip / xz bytes,
the float32-.tflite-to-gzip ratio and local latency (median of single-thread invokes). A recipe
that cannot apply to a model (distillation needs class labels; the autoencoder has none) or that
fails is a row saying so, not a crash. vww has random weights by design (no download), so its
accuracy is chance and the recipes' accuracy guard is off for it: its rows measure size and
latency. Then two experiments on the digits model:

  * distill: the teacher (the digits reference model, trained on all 1,437 training images) and a
    half-width student. The student alone and the distilled student share architecture, initial
    weights, data order, epochs, optimizer and their training set: the same 20 labelled images per
    class (200), drawn from the training split with the seed. Mean of 3 seeds.
                                                goal: gap >= 2 points, recovers >= 50% of it
    Two contrasts are measured too: T=4 instead of 8, and the earlier attempt (width 0.125, all
    1,437 images, 30 epochs), where the soft targets barely help.
  * low_rank: Dense parameters before/after and the accuracy drop after fine-tuning;
                                                goal: >= 50% fewer Dense params, <= 1.0 point drop

Goals on digits: int8 drop <= 0.5 pt; prune-cluster-qat gzip <= float32/11 and drop <= 1.0 pt
and whole run <= 90 s; max-compress gzip <= float32/18 and drop <= 1.5 pt.

Results for models, recipes (or experiments) not run this time are kept from the previous JSON file,
so `--models vww` adds the slow model to an existing run.

Usage: python scripts/bench_compression.py [--models digits kws vww anomaly] [--recipes int8 ...]
           [--seeds 0 1 2] [--skip-distill] [--skip-contrasts] [--skip-low-rank]
"""

from __future__ import annotations

import argparse
import dataclasses
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
from tfedge.errors import TfedgeError  # noqa: E402
from tfedge.optimize.recipe import builtin_recipes, load_recipe  # noqa: E402
from tfedge.zoo.reference import build_reference, reference_names, reference_paths  # noqa: E402

UNTRAINED = {
    "vww"
}  # random weights by design (no download): sizes and latency count, accuracy is chance
RECIPE_ORDER = ["int8", "prune-cluster-qat", "distill-lowrank-int8", "max-compress"]

GOALS = {  # recipe -> (max drop in points, min float32/gzip ratio, max seconds)
    "int8": (0.5, None, None),
    "prune-cluster-qat": (1.0, 11.0, 90.0),
    "max-compress": (1.5, 18.0, None),
}


def latency_us(path: str, runs: int = 300) -> float:
    """Median single-thread invoke time of a .tflite on this machine, in microseconds."""
    from tfedge.analyze.runtime import load_interpreter

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
    plan = load_recipe(recipe)
    if (
        model in UNTRAINED
    ):  # chance-level accuracy on 40 test images: the guard would only measure noise
        plan = dataclasses.replace(plan, max_accuracy_drop=None)
    started = time.perf_counter()
    result = optimize(ref.model, plan, ref.train, ref.test, work / f"{model}-{recipe}")
    seconds = round(time.perf_counter() - started, 1)
    base, final = result.stages[0], result.final
    out = Path(result.output_dir)
    row = {
        "model": model,
        "recipe": recipe,
        "stages": [s.name for s in result.stages],
        "seconds": seconds,
        "float32_bytes": base.tflite_bytes,
        "tflite_bytes": final.tflite_bytes,
        "gzip_bytes": final.gzip_bytes,
        "xz_bytes": final.xz_bytes,
        "ratio_gzip": round(base.tflite_bytes / final.gzip_bytes, 2),
        "ratio_xz": round(base.tflite_bytes / final.xz_bytes, 2),
        "sparsity": final.sparsity,
        "unique_per_channel": final.unique_weights,
        "params": final.params,
        "nonzero_params": final.nonzero_params,
        "latency_us": latency_us(str(out / "model.tflite")),
        "float32_latency_us": latency_us(str(out / base.tflite)),
    }
    if base.accuracy is not None:
        row.update(
            float_accuracy=base.accuracy,
            accuracy=final.accuracy,
            drop_points=round(100 * (base.accuracy - final.accuracy), 2),
        )
    else:
        row.update(float_mse=base.mse, mse=final.mse)
    return row


def skipped_row(model: str, recipe: str, reason: str) -> dict:
    return {"model": model, "recipe": recipe, "skipped": reason}


def not_applicable(model: str, recipe: str) -> str | None:
    """Why ``recipe`` cannot run on reference model ``model`` (None when it can)."""
    if reference_paths(model, ROOT / "models").task != "classification" and "distill" in recipe:
        return (
            "not applicable: distillation needs class labels; "
            "the anomaly model is an autoencoder (MSE)"
        )
    return None


def check_goals(row: dict) -> list[str]:
    goal = GOALS.get(row["recipe"]) if row["model"] == "digits" and "drop_points" in row else None
    if goal is None:
        return []
    max_drop, min_ratio, max_seconds = goal
    checks = [_check(f"drop {row['drop_points']} <= {max_drop}", row["drop_points"] <= max_drop)]
    if min_ratio:
        ok = row["ratio_gzip"] >= min_ratio
        checks.append(_check(f"ratio {row['ratio_gzip']} >= {min_ratio}", ok))
    if max_seconds:
        ok = row["seconds"] <= max_seconds
        checks.append(_check(f"{row['seconds']} s <= {max_seconds}", ok))
    return checks


def _check(claim: str, ok: bool) -> str:
    return f"{claim}: {'PASS' if ok else 'FAIL'}"


def _digits_context(seed: int, per_class: int | None = None, validation_split: float = 0.1):
    """The digits training data.

    All of it, or ``per_class`` labelled images per class drawn with ``seed``.
    """
    from tfedge.io.data import load_data
    from tfedge.passes import PassContext, TrainConfig

    ref = build_reference("digits", ROOT / "models")
    train, test = load_data(ref.train), load_data(ref.test)
    x, y = train.x.astype(np.float32), np.asarray(train.y)
    if per_class:
        rng = np.random.default_rng(seed)
        idx = np.concatenate(
            [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in np.unique(y)]
        )
        rng.shuffle(idx)
        x, y = x[idx], y[idx]
    return PassContext(
        x=x,
        y=y,
        train=TrainConfig(validation_split=validation_split),
        seed=seed,
        eval_x=test.x,
        eval_y=test.y,
    )


def _teacher():
    from tfedge.io.models import load_tf_keras_model

    return load_tf_keras_model(build_reference("digits", ROOT / "models").model)


DISTILL = {"width": 0.5, "per_class": 20, "epochs": 200, "temperature": 8.0, "alpha": 0.1}
DISTILL_CONTRASTS = [
    ("T=4 (otherwise the same)", {**DISTILL, "temperature": 4.0}),
    (
        "earlier attempt: width 0.125, all 1,437 training images",
        {"width": 0.125, "per_class": None, "epochs": 30, "temperature": 4.0, "alpha": 0.1},
    ),
]


def distill_experiment(
    seeds: list[int],
    width: float,
    per_class: int | None,
    epochs: int,
    temperature: float,
    alpha: float,
    name: str = "main",
) -> dict:
    """Teacher vs the same student trained alone and distilled, per seed.

    Both students share everything but the loss.
    """
    from tfedge.passes import build_pass

    started = time.perf_counter()
    teacher = _teacher()
    validation_split = (
        0.0 if per_class else 0.1
    )  # a 200-image set keeps every image for training (both arms)
    runs = []
    for seed in seeds:
        p = build_pass(
            "distill",
            {
                "width": width,
                "epochs": epochs,
                "temperature": temperature,
                "alpha": alpha,
                "compare_alone": True,
            },
        )
        metrics = p.apply(teacher, _digits_context(seed, per_class, validation_split)).metrics
        runs.append({"seed": seed, **metrics})
        print(
            f"distill [{name}] seed {seed}: alone {metrics['student_alone_accuracy']:.4f}, "
            f"distilled {metrics['student_accuracy']:.4f}",
            flush=True,
        )
    mean = {
        k: round(statistics.mean(r[k] for r in runs), 4)
        for k in ("teacher_accuracy", "student_alone_accuracy", "student_accuracy")
    }
    gap = mean["teacher_accuracy"] - mean["student_alone_accuracy"]
    recovered = (
        (mean["student_accuracy"] - mean["student_alone_accuracy"]) / gap
        if gap > 0
        else float("nan")
    )
    n_train = per_class * 10 if per_class else len(_digits_context(0).x)
    return {
        "name": name,
        "student": f"digits CNN at width {width}",
        "width": width,
        "student_params": runs[0]["student_params"],
        "teacher_params": runs[0]["teacher_params"],
        "train_images": n_train,
        "per_class": per_class,
        "validation_split": validation_split,
        "epochs": epochs,
        "temperature": temperature,
        "alpha": alpha,
        "optimizer": "adam, lr 0.001, batch 32",
        "teacher_trained_on": "all 1,437 training images (the reference model)",
        "seeds": seeds,
        "runs": runs,
        **mean,
        "gap_points": round(100 * gap, 2),
        "recovered_share": round(recovered, 3),
        "seconds": round(time.perf_counter() - started, 1),
        "goal": f"gap >= 2 points and recovered >= 0.5: "
        f"{'PASS' if gap >= 0.02 and recovered >= 0.5 else 'FAIL'}",
    }


def low_rank_experiment(param_ratio: float, epochs: int) -> dict:
    from tfedge.passes import build_pass

    teacher, ctx = _teacher(), _digits_context(0)
    dense = lambda m: sum(l.count_params() for l in m.layers if type(l).__name__ == "Dense")  # noqa: E731
    result = build_pass("low_rank", {"param_ratio": param_ratio, "epochs": epochs}).apply(
        teacher, ctx
    )
    before_acc, after_acc = ctx.accuracy(teacher), ctx.accuracy(result.model)
    fewer = 1 - dense(result.model) / dense(teacher)
    drop = round(100 * (before_acc - after_acc), 2)
    return {
        "param_ratio": param_ratio,
        "epochs": epochs,
        "layers": result.metrics["layers"],
        "dense_params_before": dense(teacher),
        "dense_params_after": dense(result.model),
        "fewer_dense_share": round(fewer, 3),
        "accuracy_before": before_acc,
        "accuracy_after": after_acc,
        "drop_points": drop,
        "goal": f">= 50% fewer and drop <= 1.0: "
        f"{'PASS' if fewer >= 0.5 and drop <= 1.0 else 'FAIL'}",
    }


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def markdown(rows: list[dict], distill: dict | None, low_rank: dict | None) -> str:
    lines = [
        "| model | recipe | accuracy (float -> final) | tflite B | gzip B | xz B "
        "| float32/gzip | float32/xz | latency µs (float32 -> final) | run s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            reason = (
                r["skipped"] if len(r["skipped"]) <= 200 else r["skipped"][:200] + "…"
            )  # full text in the JSON
            lines.append(f"| {r['model']} | {r['recipe']} | {reason} | | | | | | | |")
            continue
        acc = (
            f"{_pct(r['float_accuracy'])} -> {_pct(r['accuracy'])}"
            if "accuracy" in r
            else f"MSE {r['float_mse']:.4f} -> {r['mse']:.4f}"
        )
        lines.append(
            f"| {r['model']} | {r['recipe']} | {acc} | {r['tflite_bytes']:,} | "
            f"{r['gzip_bytes']:,} | {r['xz_bytes']:,} | {r['ratio_gzip']}x | {r['ratio_xz']}x | "
            f"{r['float32_latency_us']} -> {r['latency_us']} | {r['seconds']} |"
        )
    if distill:
        lines += [
            "",
            "Distillation (digits; teacher = the reference model; both arms: "
            "same student architecture, initial weights, data order, epochs, optimizer and "
            "training images; only the loss differs):",
            "",
            "| experiment | student params | train images | epochs | T | alpha | teacher "
            "| alone (mean) | distilled (mean) | gap pt | gap recovered "
            "| per seed: alone -> distilled | run s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for d in [distill["main"], *distill.get("contrasts", [])]:
            seeds = "; ".join(
                f"{r['seed']}: {_pct(r['student_alone_accuracy'])} -> {_pct(r['student_accuracy'])}"
                for r in d["runs"]
            )
            lines.append(
                f"| {d['name']} | {d['student_params']:,} (teacher {d['teacher_params']:,}) | "
                f"{d['train_images']:,} | {d['epochs']} | {d['temperature']:g} | {d['alpha']} | "
                f"{_pct(d['teacher_accuracy'])} | {_pct(d['student_alone_accuracy'])} | "
                f"{_pct(d['student_accuracy'])} | {d['gap_points']} | "
                f"{100 * d['recovered_share']:.0f}% | {seeds} | {d['seconds']} |"
            )
        lines += ["", f"Distillation goal (main experiment): {distill['main']['goal']}"]
    if low_rank:
        lines += [
            "",
            f"Low-rank (param_ratio {low_rank['param_ratio']}, "
            f"{low_rank['epochs']} fine-tuning epochs): "
            f"Dense parameters {low_rank['dense_params_before']:,} -> "
            f"{low_rank['dense_params_after']:,} "
            f"({100 * low_rank['fewer_dense_share']:.0f}% fewer), accuracy "
            f"{_pct(low_rank['accuracy_before'])} -> {_pct(low_rank['accuracy_after'])}. "
            f"{low_rank['goal']}",
        ]
    return "\n".join(lines) + "\n"


def _previous(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=reference_names(), choices=reference_names())
    parser.add_argument(
        "--recipes", nargs="+", default=[r for r in RECIPE_ORDER if r in builtin_recipes()]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--skip-distill", action="store_true", help="keep the previous distill results"
    )
    parser.add_argument(
        "--skip-contrasts", action="store_true", help="measure only the main distill experiment"
    )
    parser.add_argument(
        "--skip-low-rank", action="store_true", help="keep the previous low_rank result"
    )
    args = parser.parse_args()
    out = ROOT / "bench-results"
    work = Path(tempfile.mkdtemp(prefix="tfedge-bench-compression-"))
    started = time.perf_counter()
    rows = []
    try:
        for model in args.models:
            for recipe in args.recipes:
                reason = not_applicable(model, recipe)
                if reason is None:
                    try:
                        row = recipe_row(model, recipe, work)
                    except (
                        Exception
                    ) as exc:  # e.g. the accuracy guard: a row saying so, the run goes on
                        kind = "" if isinstance(exc, TfedgeError) else f"{type(exc).__name__}: "
                        row = skipped_row(
                            model, recipe, f"failed: {kind}{str(exc).splitlines()[0]}"
                        )
                else:
                    row = skipped_row(model, recipe, reason)
                row["goals"] = check_goals(row)
                rows.append(row)
                print(json.dumps(row), *row["goals"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    recipes_seconds = round(time.perf_counter() - started, 1)
    previous = _previous(
        out / "compression.json"
    )  # read late: another run may have written meanwhile
    if args.skip_distill:
        distill = previous.get("distill")
        distill = distill if isinstance(distill, dict) and "main" in distill else None
    else:
        distill = {"main": distill_experiment(args.seeds, name="main", **DISTILL)}
        if not args.skip_contrasts:
            distill["contrasts"] = [
                distill_experiment(args.seeds, name=name, **config)
                for name, config in DISTILL_CONTRASTS
            ]
    low_rank = previous.get("low_rank") if args.skip_low_rank else low_rank_experiment(0.4, 3)
    ran = {(r["model"], r["recipe"]) for r in rows}
    kept = [r for r in previous.get("rows", []) if (r["model"], r["recipe"]) not in ran]
    order = {m: i for i, m in enumerate(reference_names())}
    rows = sorted(
        kept + rows,
        key=lambda r: (
            order.get(r["model"], 99),
            RECIPE_ORDER.index(r["recipe"]) if r["recipe"] in RECIPE_ORDER else 99,
        ),
    )
    timing = {
        **previous.get("seconds", {}),
        **{
            f"recipes on {m}": round(sum(r.get("seconds", 0) for r in rows if r["model"] == m), 1)
            for m in args.models
        },
    }
    if not args.skip_distill:
        timing["distill"] = round(
            sum(d["seconds"] for d in [distill["main"], *distill.get("contrasts", [])]), 1
        )
    print(
        f"recipes: {recipes_seconds} s, whole run: {round(time.perf_counter() - started, 1)} s",
        flush=True,
    )
    out.mkdir(exist_ok=True)
    (out / "compression.json").write_text(
        json.dumps(
            {"rows": rows, "distill": distill, "low_rank": low_rank, "seconds": timing},
            indent=2,
            default=str,
        )
    )
    table = markdown(rows, distill, low_rank)
    (out / "compression.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
