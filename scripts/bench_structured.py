#!/usr/bin/env python3
"""Structured (channel) pruning benchmark (issue: faster, not only smaller).

Prints a table and writes bench-results/structured.{json,md}.

Measures:
  * vww (MobileNetV2 alpha 0.35, 96x96, synthetic data): the ``channels`` pass down to half
    the MACs, then int8, against the unpruned int8 model: p50 latency on the local CPU, same
    run, alternating, several rounds;                           goal >= 1.5x, moonshot >= 1.9x
    the same pair under qemu Cortex-A72 (EMULATED: relative only), MACs and parameters read
    from both .tflite files, and the host's CPU features;
  * digits (real data): half the MACs removed, fine-tuned, with and without distillation;
                                                                goal <= 1 point drop
  * kws (synthetic data): >= 2x fewer MACs, accuracy (synthetic, so only indicative);
  * low_rank with default options on a digits MLP and the anomaly autoencoder: share of the
    Dense parameters cut and the drop after fine-tuning;  goal >= 40% cut at <= 1 point.

  * where the time goes: per-layer profile (bench --op-profile) of both vww models, locally
    (and under qemu with --qemu-op-profile).

Usage: python scripts/bench_structured.py [--rounds 5] [--runs 200] [--no-qemu] [--quick]
       [--qemu-op-profile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tfedge  # noqa: E402
from tfedge.optimize.pipeline import optimize  # noqa: E402
from tfedge.targets.bench import bench  # noqa: E402
from tfedge.zoo.reference import build_reference  # noqa: E402

CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def recipe(passes: str, drop: float = 100.0) -> str:
    return (
        "schema_version: 1\n"
        f"passes:\n{passes}"
        "train: {optimizer: adam, learning_rate: 0.001, batch_size: 32, validation_split: 0.1}\n"
        "convert: {quant: int8}\n"
        f"max_accuracy_drop: {drop}\n"
    )


def run_recipe(name: str, text: str, work: Path, model: str | None = None) -> dict:
    """``text`` applied to reference ``name`` (or ``model`` with its data); the stages' figures."""
    ref = build_reference(name, ROOT / "models")
    path = work / f"{name}-{abs(hash(text)) % 10**8}.yaml"
    path.write_text(text)
    start = time.monotonic()
    result = optimize(model or ref.model, str(path), ref.train, ref.test, work / path.stem)
    int8, final = result.stage("int8"), result.final
    metrics = next(s.metrics for s in result.stages if s.metrics)
    return {
        "model": name,
        "recipe": text.split("passes:\n", 1)[1].split("train:", 1)[0].strip(),
        "int8_accuracy": int8.accuracy,
        "final_accuracy": final.accuracy,
        "int8_mse": int8.mse,
        "final_mse": final.mse,
        "drop_points": None
        if int8.accuracy is None or final.accuracy is None
        else round(100 * (int8.accuracy - final.accuracy), 2),
        "int8_tflite": str(Path(result.output_dir) / int8.tflite),
        "final_tflite": result.model,
        "metrics": summary(metrics),
        "seconds": round(time.monotonic() - start, 1),
    }


def summary(metrics: dict) -> dict:
    """The pass's figures without its per-group / per-layer tables (low_rank: Dense totals)."""
    out = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
    layers = metrics.get("layers")
    if isinstance(layers, dict):
        out["dense_params_before"] = sum(v["params_before"] for v in layers.values())
        out["dense_params_after"] = sum(v["params_after"] for v in layers.values())
    return out


def tflite_figures(path: str) -> dict:
    info = tfedge.inspect(path)
    return {"macs": info.macs, "params": info.parameters, "bytes": os.path.getsize(path)}


def alternating(thin: str, base: str, rounds: int, runs: int, target: str, profile=None) -> dict:
    """The thinned and the unpruned int8 models, benchmarked in turn ``rounds`` times."""
    t, b = [], []
    for _ in range(rounds):
        r = bench(
            thin, target=target, profile=profile, runs=runs, warmup=5, min_secs=0.0, compare=base
        )
        t.append(r.latency_us.p50)
        b.append(r.compare.latency_us.p50)
    return {
        "target": r.target,
        "emulated": r.emulated,
        "runtime": f"{r.runtime['name']} {r.runtime['version']}",
        "threads": r.threads,
        "base_p50_us": statistics.median(b),
        "thin_p50_us": statistics.median(t),
        "speedup": statistics.median(b) / statistics.median(t),
        "spread_pct": round(100 * (max(t) - min(t)) / statistics.median(t), 1),
        "rounds": rounds,
    }


def op_profiles(base: str, thin: str, target: str, profile=None) -> dict:
    """Where the time goes, per Keras layer, in the unpruned and the thinned int8 models."""
    from tfedge.analyze.op_profile import op_profile

    out = {}
    for name, path in (("int8", base), ("channels int8", thin)):
        prof = op_profile(path, target=target, profile=profile, threads=1, rounds=5)
        out[name] = prof.to_dict()
    return out


def profile_table(profiles: dict, top: int = 10) -> list[str]:
    """The ``top`` layers of the unpruned model by time, before and after."""
    before, after = profiles["int8"], profiles["channels int8"]
    ms_after = {row["name"]: row["p50_us"] / 1000 for row in after["rows"]}
    label = before.get("target", "?") + (" (EMULATED)" if before.get("emulated") else "")
    lines = [
        f"**Per layer, {label}, 1 thread** (p50 of 5 rounds; whole model "
        f"{before['total_us'] / 1000:.3f} -> {after['total_us'] / 1000:.3f} ms)",
        "",
        "| layer | int8 ms | share | channels int8 ms |",
        "|---|---:|---:|---:|",
    ]
    for row in before["rows"][:top]:
        now = ms_after.get(row["name"])
        lines.append(
            f"| {row['name']} | {row['p50_us'] / 1000:.3f} | {row['share']:.1%} | "
            f"{'-' if now is None else f'{now:.3f}'} |"
        )
    return lines + [""]


def host() -> str:
    model, flags = "", set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            if key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    features = ", ".join(f for f in CPU_FEATURES if f in flags) or "none of " + "/".join(
        CPU_FEATURES
    )
    return f"{os.uname().machine}, {os.cpu_count()} cores, {model or 'unknown CPU'}; {features}"


def score(row: dict, stage: str) -> str:
    """Accuracy, or the MSE of a model without classes."""
    accuracy = row[f"{stage}_accuracy"]
    return f"{accuracy:.4f}" if accuracy is not None else f"MSE {row[f'{stage}_mse']:.4g}"


def markdown(res: dict) -> str:
    lines = [f"Host: {res['host']}. tfedge {res['version']}, {res['date']}.", ""]
    v = res["vww"]
    lines += [
        "**MobileNetV2-0.35, 96x96 (vww reference): channels to half the MACs, then int8** "
        "(median p50 of alternating rounds)",
        "",
        "| model | MACs | params | bytes |",
        "|---|---:|---:|---:|",
        *(
            f"| {k} | {f['macs']:,} | {f['params']:,} | {f['bytes']:,} |"
            for k, f in (("int8", v["int8"]), ("channels int8", v["thin"]))
        ),
        "",
        "| target | runtime | threads | int8 p50 (µs) | channels int8 p50 (µs) | speed-up | "
        "spread |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in v["speed"]:
        label = r["target"] + (" (EMULATED)" if r["emulated"] else "")
        lines.append(
            f"| {label} | {r['runtime']} | {r['threads']} | {r['base_p50_us']:,.0f} | "
            f"{r['thin_p50_us']:,.0f} | {r['speedup']:.2f}x | {r['spread_pct']}% |"
        )
    lines.append("")
    for profiles in v.get("op_profile", []):
        lines += profile_table(profiles)
    lines += [
        "**Accuracy after fine-tuning** (drop against the unpruned int8 model)",
        "",
        "| model | recipe | kept | int8 acc / MSE | final acc / MSE | drop (pts) | time (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["accuracy"]:
        m = r["metrics"]
        kept = (
            f"{m['macs_after'] / m['macs_before']:.0%}"
            if "macs_after" in m
            else f"{m.get('dense_params_after', 0) / max(m.get('dense_params_before', 1), 1):.0%}"
            " of factorised params"
        )
        drop = "-" if r["drop_points"] is None else r["drop_points"]
        lines.append(
            f"| {r['model']} | `{r['recipe'].replace(chr(10), ' ')}` | {kept} | "
            f"{score(r, 'int8')} | {score(r, 'final')} | {drop} | "
            f"{r['seconds']} |"
        )
    lines += ["", "kws and vww data are synthetic: their accuracies only show the pass runs."]
    return "\n".join(lines) + "\n"


CHANNELS = "  - channels: {{target_macs: 0.5, epochs: {epochs}{extra}}}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--runs", type=int, default=200, help="runs per local benchmark")
    parser.add_argument("--qemu-runs", type=int, default=10, help="runs per emulated benchmark")
    parser.add_argument("--qemu-rounds", type=int, default=3, help="rounds under qemu")
    parser.add_argument("--no-qemu", action="store_true", help="skip the emulated rows")
    parser.add_argument(
        "--qemu-op-profile", action="store_true", help="also profile per layer under qemu (13 min)"
    )
    parser.add_argument("--quick", action="store_true", help="1 epoch everywhere (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    epochs = 1 if args.quick else 4
    start = time.monotonic()
    res: dict = {"host": host(), "version": tfedge.__version__, "date": time.strftime("%F")}
    with tempfile.TemporaryDirectory(prefix="tfedge-structured-") as tmp:
        work = Path(tmp)
        vww = run_recipe("vww", recipe(CHANNELS.format(epochs=1, extra="")), work)
        speed = [
            alternating(vww["final_tflite"], vww["int8_tflite"], args.rounds, args.runs, "local")
        ]
        if not args.no_qemu:
            speed.append(
                alternating(
                    vww["final_tflite"],
                    vww["int8_tflite"],
                    args.qemu_rounds,
                    args.qemu_runs,
                    "qemu",
                    "rpi4",
                )
            )
        pair = (vww["int8_tflite"], vww["final_tflite"])
        profiles = [op_profiles(*pair, "local")]
        if args.qemu_op_profile:
            profiles.append(op_profiles(*pair, "qemu", "rpi4"))
        res["vww"] = {
            "int8": tflite_figures(vww["int8_tflite"]),
            "thin": tflite_figures(vww["final_tflite"]),
            "speed": speed,
            "op_profile": profiles,
        }
        res["accuracy"] = [
            vww,
            run_recipe("digits", recipe(CHANNELS.format(epochs=epochs, extra="")), work),
            run_recipe(
                "digits", recipe(CHANNELS.format(epochs=epochs, extra=", distill: true")), work
            ),
            run_recipe("kws", recipe(CHANNELS.format(epochs=epochs, extra="")), work),
            run_recipe("digits", recipe("  - low_rank: {}\n"), work),
            run_recipe("anomaly", recipe("  - low_rank: {}\n"), work),
        ]
        for row in res["accuracy"]:
            row.pop("int8_tflite"), row.pop("final_tflite")
    res["seconds"] = round(time.monotonic() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "structured.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    text = markdown(res)
    (args.out / "structured.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
