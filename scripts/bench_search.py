#!/usr/bin/env python3
"""Search benchmark (issue 15): ``tfedge search`` on digits against every built-in recipe.

Measures the built-in recipes (``int8``, the int8 post-training baseline, and the others)
on the target, then runs one search on the digits reference model with relative budgets
(latency <= 0.5 x the int8 post-training p50 on the same target, gzip bytes <= 0.1 x the
float32 .tflite by default). While the search runs, its study is read every ``--every``
seconds and the results so far are written (labelled partial), so a stopped run still leaves
a table; ``--report-only`` rewrites them from an existing ``--keep`` OUTDIR.

Writes ``OUT/NAME.json``, ``OUT/NAME.md``, ``OUT/NAME.svg`` (hypervolume against trials) and
``OUT/NAME-front.svg`` (score against p50 latency, as the search's report).

The hypervolume is that of the trials so far on (accuracy up, p50 down, gzip bytes down),
each axis normalised to its reference: accuracy from ``--hv-accuracy`` (0.9) to 1, latency
from 0 to the reference, gzip bytes from 0 to the reference. Two reference points:
``budgets`` (the budgets themselves: only trials that meet every budget count) and ``wide``
(1.0 x the int8 post-training p50, 1.0 x the float32 bytes).

The verdict: does one trial dominate or match every built-in on (accuracy, p50, gzip bytes),
i.e. accuracy >= and p50 <= and gzip <= each built-in's? The moonshot: a trial >= 2x faster
than int8 post-training (the search's own baseline) with at most 1 point less accuracy.

Usage:
    python scripts/bench_search.py [--target qemu --profile rpi4] [--trials 30]
        [--space FILE] [--name search-qemu] [--keep DIR] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tfedge  # noqa: E402
from tfedge.search.space import load_space  # noqa: E402

BUILTINS = ("int8", "prune-cluster-qat", "max-compress", "distill-lowrank-int8")
KEYS = ("accuracy", "score", "p50_ms", "gzip_bytes", "tflite_bytes", "peak_rss_mb")


# ---- measuring -------------------------------------------------------------------------------


def figures(row: dict | None) -> dict | None:
    """The figures compared in the table (None for none)."""
    if row is None:
        return None
    return {k: row.get(k) for k in KEYS}


def measure_builtins(names, inputs, space, work: Path, cache: Path) -> list[dict]:
    """Each built-in recipe optimized and benchmarked as a trial (cached in ``cache``)."""
    from tfedge.optimize.recipe import load_recipe
    from tfedge.search.objectives import TrialRunner

    done = json.loads(cache.read_text()) if cache.is_file() else []
    have = {row["recipe"] for row in done}
    for name in names:
        if name in have:
            continue
        print(f"built-in {name} on {inputs.target} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        measured = TrialRunner(inputs, space.measure)(load_recipe(name), work / name)
        row = {"recipe": name, **(figures(measured.to_dict()) or {})}
        row["seconds"] = round(time.monotonic() - started, 1)
        done.append(row)
        cache.write_text(json.dumps(done, indent=2) + "\n")
    return [row for row in done if row["recipe"] in names]


def run_search(args, ref, space, outdir: Path):
    from tfedge.search import search

    return search(
        ref.model,
        ref.train,
        ref.test,
        outdir,
        target=args.target,
        profile=args.profile,
        space=space,
        trials=args.trials,
        workers=args.workers,
        seed=args.seed,
        progress=True,
    )


def read_study(outdir: Path, space, target: str) -> dict | None:
    """The trials, budgets and baseline stored so far in ``outdir``'s study (None: none yet)."""
    import optuna

    from tfedge.search import study as st
    from tfedge.search.objectives import Measured, relative_budgets

    url = st.storage_url(outdir, None, 1)
    if not (outdir / st.SQLITE).is_file() and not (outdir / st.JOURNAL).is_file():
        return None
    st.quiet_optuna()
    storage = st.open_storage(url)
    names = optuna.get_all_study_names(storage)
    if not names:
        return None
    study = optuna.load_study(study_name=names[0], storage=storage)
    baseline = study.user_attrs.get("baseline")
    if not baseline:
        return None
    base = Measured.from_dict(baseline["measured"])
    budgets = [b.to_dict() for b in relative_budgets(space.budgets, base, target)]
    return {
        "study": names[0],
        "trials": st.rows(study),
        "failed": st.failures(study),
        "budgets": budgets,
        "baseline": figures(baseline["measured"]),
    }


MAX_REMEASURED = 12  # trials timed again beside the built-ins (the fastest candidates)


def remeasure(res: dict, outdir: Path, work: Path, args, space, rounds: int) -> None:
    """Time the built-ins and the trials that could cover one of them again, all in one run on
    the target, in turn, for ``rounds`` rounds, and judge the verdict on those medians.

    The search measures each trial once, minutes apart from the built-ins, on an emulator that
    shares the host: the same int8 model measured 0.66 and 0.93 ms in two runs. A trial
    "covers" a built-in when its accuracy is at least and its gzip bytes at most the
    built-in's; only the latency needs measuring side by side.
    """
    import statistics

    from tfedge.targets.bench import bench

    builtins, trials = res.get("builtins", []), res["search"]["rows"]
    picks = [t for t in trials if any(_covers_but_latency(t, b) for b in builtins)]
    picks = sorted(picks, key=lambda t: t["p50_ms"])[:MAX_REMEASURED]
    if not builtins or not picks:
        return
    models = [work / "builtins" / b["recipe"] / "model.tflite" for b in builtins]
    models += [outdir / t["model"] for t in picks]  # an absolute path stays as it is
    m = space.measure
    print(f"timing {len(models)} models in turn, {rounds} rounds ...", file=sys.stderr, flush=True)
    result = bench(
        models[0],
        target=args.target,
        profile=args.profile,
        runs=m.runs,
        warmup=m.warmup,
        min_secs=m.min_secs,
        alternates=models[1:],
        rounds=rounds,
    )
    per_round = result.sweep["p50_us"]
    medians = [statistics.median(r[i] for r in per_round) / 1000.0 for i in range(len(models))]
    timed_b = dict(zip([b["recipe"] for b in builtins], medians))
    timed_t = dict(zip([t["number"] for t in picks], medians[len(builtins) :]))
    again = [{**b, "p50_ms": timed_b[b["recipe"]]} for b in builtins]
    rows = [{**t, "p50_ms": timed_t[t["number"]]} for t in picks]
    res["interleaved"] = {
        "rounds": rounds,
        "builtins": {k: round(v, 4) for k, v in timed_b.items()},
        "trials": {str(k): round(v, 4) for k, v in timed_t.items()},
        "verdict": verdict(rows, again),
    }


def _covers_but_latency(trial: dict, builtin: dict) -> bool:
    return trial["accuracy"] >= builtin["accuracy"] and trial["gzip_bytes"] <= builtin["gzip_bytes"]


# ---- analysis --------------------------------------------------------------------------------


def area_2d(points: list[tuple[float, float]]) -> float:
    """Area of the union of boxes [0, x] x [0, y]."""
    area, top = 0.0, 0.0
    for x, y in sorted(points, reverse=True):  # widest first; each adds the strip above
        if y > top:
            area += x * (y - top)
            top = y
    return area


def hypervolume(points: list[tuple[float, float, float]]) -> float:
    """Volume of the union of boxes [0, g] (gains, larger is better), by slicing on axis 0."""
    pts = [p for p in points if min(p) > 0]
    volume = 0.0
    levels = sorted({p[0] for p in pts}, reverse=True)
    for i, level in enumerate(levels):
        below = levels[i + 1] if i + 1 < len(levels) else 0.0
        slab = [(p[1], p[2]) for p in pts if p[0] >= level]
        volume += (level - below) * area_2d(slab)
    return volume


def gains(row: dict, ref: dict) -> tuple[float, float, float]:
    """``row``'s normalised gains over the reference point (each in [0, 1] when better)."""
    low = ref["accuracy"]
    return (
        (row["accuracy"] - low) / (1.0 - low),
        1.0 - row["p50_ms"] / ref["p50_ms"],
        1.0 - row["gzip_bytes"] / ref["gzip_bytes"],
    )


def references(budgets: list[dict], ratios, accuracy: float) -> dict[str, dict]:
    """The two reference points: the budgets, and 1.0 x the int8 p50 and the float32 bytes."""
    limit = {b["name"]: b["limit"] for b in budgets}
    lat, size = limit.get("latency"), limit.get("size")
    refs: dict[str, dict] = {}
    if lat is not None and size is not None:
        refs["budgets"] = {"accuracy": accuracy, "p50_ms": lat, "gzip_bytes": size}
        refs["wide"] = {
            "accuracy": accuracy,
            "p50_ms": lat / ratios.latency,
            "gzip_bytes": size / ratios.size,
        }
    return refs


def hv_series(trials: list[dict], refs: dict[str, dict]) -> dict[str, list[float]]:
    """Hypervolume of the trials numbered <= n, for n = 0 .. the last trial."""
    last = max((t["number"] for t in trials), default=-1)
    series = {}
    for name, ref in refs.items():
        values = []
        for n in range(last + 1):
            values.append(
                round(hypervolume([gains(t, ref) for t in trials if t["number"] <= n]), 6)
            )
        series[name] = values
    return series


def covers(trial: dict, builtin: dict) -> bool:
    """``trial`` dominates or matches ``builtin`` on (accuracy, p50, gzip bytes)."""
    return (
        trial["accuracy"] >= builtin["accuracy"]
        and trial["p50_ms"] <= builtin["p50_ms"]
        and trial["gzip_bytes"] <= builtin["gzip_bytes"]
    )


def verdict(trials: list[dict], builtins: list[dict]) -> dict:
    """Which trials dominate or match every built-in; per built-in, which trials do."""
    per = {b["recipe"]: [t["number"] for t in trials if covers(t, b)] for b in builtins}
    every = [t for t in trials if builtins and all(covers(t, b) for b in builtins)]
    ok = [t for t in every if all(e <= 0 for e in t["excess"])]
    return {
        "per_builtin": per,
        "trials_covering_all": [t["number"] for t in every],
        "feasible_trials_covering_all": [t["number"] for t in ok],
        "yes": bool(every),
    }


def moonshot(trials: list[dict], baseline: dict) -> dict:
    """Trials >= 2x faster than the int8 post-training baseline at <= 1 point accuracy drop."""
    hits = [
        t
        for t in trials
        if t["p50_ms"] <= baseline["p50_ms"] / 2 and t["accuracy"] >= baseline["accuracy"] - 0.01
    ]
    fastest = min(
        (t for t in trials if t["accuracy"] >= baseline["accuracy"] - 0.01),
        key=lambda t: t["p50_ms"],
        default=None,
    )
    return {
        "hits": [t["number"] for t in hits],
        "fastest_within_1_point": fastest
        and {
            "number": fastest["number"],
            "speedup": round(baseline["p50_ms"] / fastest["p50_ms"], 3),
            "accuracy": fastest["accuracy"],
        },
    }


def formats(trials: list[dict], baseline: dict, target: str) -> dict | None:
    """The search's own answer (``fastest_formats``: per format, its fastest trial), and the
    pick under a latency budget of 1.0 x the int8 post-training p50 (``baseline``) applied
    to those trials afterwards: the most accurate format at least as fast as int8."""
    from tfedge.search.formats import fastest_formats

    found = fastest_formats(trials, target)
    if found is None:
        return None
    by = found["by_quant"]
    within = [q for q in by if by[q]["p50_ms"] <= baseline["p50_ms"]]
    pick = min(within, key=lambda q: (-by[q]["accuracy"], by[q]["p50_ms"]), default=None)
    return {**found, "pick_within_int8_latency": pick}


def analyse(res: dict, found: dict, space, hv_accuracy: float) -> None:
    """Fill ``res`` from a study read (``found``): trials, front, hypervolume, verdicts."""
    from tfedge.search import pareto

    trials = found["trials"]
    front = pareto.pareto_front(trials)
    refs = references(found["budgets"], space.budgets, hv_accuracy)
    res["search"] = {
        "study": found["study"],
        "trials": len(trials),
        "failed": len(found["failed"]),
        "failures": found["failed"],
        "budgets": found["budgets"],
        "baseline": found["baseline"],
        "front_size": len(front),
        "best": front[0] if front else None,
        "closest": [] if front else pareto.closest(trials, found["budgets"]),
        "front": [{**(figures(r) or {}), "number": r["number"]} for r in front],
        "rows": trials,
    }
    builtins = res.get("builtins", [])
    for b in builtins:
        ex = [_excess(budget, b) for budget in found["budgets"]]
        b["excess"], b["feasible"] = ex, all(e <= 0 for e in ex)
    res["hypervolume"] = {
        "reference": refs,
        "series": hv_series(trials, refs),
        "builtins": {
            name: round(hypervolume([gains(b, ref) for b in builtins]), 6)
            for name, ref in refs.items()
        },
    }
    res["verdict"] = verdict(trials, builtins)
    res["moonshot"] = moonshot(trials, found["baseline"])
    res["formats"] = formats(trials, found["baseline"], res["target"])


def _excess(budget: dict, row: dict) -> float:
    from tfedge.search.pareto import MEASURES

    return round(row[MEASURES[budget["name"]]] / budget["limit"] - 1.0, 4)


# ---- writing ---------------------------------------------------------------------------------


def cell(row: dict) -> str:
    acc = f"{100 * row['accuracy']:.2f}%" if row.get("accuracy") is not None else "-"
    return f"{acc} | {row['p50_ms']:.3f} | {row['gzip_bytes']}"


def recipe_text(recipe: dict) -> str:
    """``channels 0.45 distill (2 ep) + cluster 8 (1 ep) + int8``."""
    parts = []
    for step in recipe.get("passes", []):
        for name, opts in step.items():
            words = [name] + [
                k if v is True else str(v) for k, v in opts.items() if k != "epochs" and v
            ]
            epochs = f" ({opts['epochs']} ep)" if "epochs" in opts else ""
            parts.append(" ".join(words) + epochs)
    quant = str(recipe.get("convert", {}).get("quant"))
    parts.append("float32" if quant == "none" else quant)
    return " + ".join(parts)


def markdown(res: dict) -> str:
    where = f"{res['target']}" + (f", profile {res['profile']}" if res["profile"] else "")
    s = res.get("search")
    state = "PARTIAL (the run was stopped or is still going)" if res["partial"] else "complete"
    lines = [
        f"# Search benchmark ({res['reference']}, {where}, "
        + ("relative budgets)" if s and s["budgets"] else "no budgets)"),
        "",
        f"{res['host']}; tfedge {res['version']}; {res['date']}; {state}",
        "",
    ]
    if s is None:
        return "\n".join(lines + ["No trial measured yet."]) + "\n"
    lines += [
        f"- space: `{json.dumps(res['space'])}`",
        f"- trials: {s['trials']} measured of {res['trials_wanted']} wanted, {s['failed']} failed, "
        f"workers {res['workers']}, {res['seconds']:.0f} s" + (" so far" if res["partial"] else ""),
        f"- CPU: {res.get('cpu', '?')}"
        + (", emulated (timings are relative only; never a device's)" if res["emulated"] else ""),
        f"- int8 post-training baseline of the search: {cell(s['baseline'])} (accuracy | p50 ms "
        "| gzip B)",
        f"- Pareto front (feasible): {s['front_size']} trials",
    ]
    lines += [
        f"- budget ({b['kind']}): {b['name']} <= {b['limit']:.4g} {b['unit']} ({b['how']})"
        for b in s["budgets"]
    ]
    lines += ["", "| model | recipe | accuracy | p50 ms | gzip B | feasible |"]
    lines += ["|---|---|---|---|---|---|"]
    best = s["best"]
    if best is not None:
        lines.append(
            f"| search best (trial {best['number']}) | {recipe_text(best['recipe'])} | "
            f"{cell(best)} | yes |"
        )
    else:
        lines.append("| search best | none feasible | - | - | - | - |")
    v = res["verdict"]
    for n in v["trials_covering_all"][:3]:
        t = next(r for r in s["rows"] if r["number"] == n)
        ok = "yes" if all(e <= 0 for e in t["excess"]) else "no"
        lines.append(
            f"| trial {n} (covers every built-in) | {recipe_text(t['recipe'])} | {cell(t)} | {ok} |"
        )
    for row in res.get("builtins", []):
        ok = "yes" if row.get("feasible") else "no"
        lines.append(f"| built-in {row['recipe']} | - | {cell(row)} | {ok} |")
    hv = res["hypervolume"]
    lines += ["", "## Verdict (each measured alone, minutes apart; side by side below)", ""]
    if not res.get("builtins"):
        lines.append("No built-in measured (--builtins '').")
    elif v["yes"]:
        lines.append(
            f"YES: trial(s) {', '.join(map(str, v['trials_covering_all']))} dominate or match "
            "every built-in on (accuracy, p50, gzip bytes)"
            + (
                f"; within every budget: {', '.join(map(str, v['feasible_trials_covering_all']))}"
                if v["feasible_trials_covering_all"]
                else "; none of them within every budget"
            )
        )
    else:
        lines.append("NO: no trial dominates or matches every built-in on (accuracy, p50, gzip).")
    for name, nums in v["per_builtin"].items():
        lines.append(f"- {name}: matched or dominated by {len(nums)} trial(s) {nums[:8]}")
    lines += interleaved_lines(res)
    m = res["moonshot"]
    fast = m["fastest_within_1_point"]
    f = res["formats"]
    if f is not None:
        lines += ["", f"## Formats ({f['basis']})", ""]
        lines += [
            "| quant | trial | p50 ms | accuracy | bytes | gzip B |",
            "|---|---|---|---|---|---|",
        ]
        for quant, row in sorted(f["by_quant"].items(), key=lambda kv: kv[1]["p50_ms"]):
            lines.append(
                f"| {quant} | {row['number']} | {row['p50_ms']:.3f} | "
                f"{100 * row['accuracy']:.2f}% | {row['tflite_bytes']} | {row['gzip_bytes']} |"
            )
        by = f["by_quant"]
        line = f"The search: {f['line']} (host: {res.get('cpu', res['host'])})"
        if "int8" in by and "float32" in by:
            line += (
                f"; int8 vs float32 speed-up {by['float32']['p50_ms'] / by['int8']['p50_ms']:.2f}x"
            )
        pick = f["pick_within_int8_latency"]
        if pick is not None:
            line += (
                f". With a latency budget of 1.0 x int8 post-training "
                f"({s['baseline']['p50_ms']:.3f} ms) applied to these trials, the most accurate "
                f"format within it is {pick}"
            )
        lines += ["", line + "."]
    if res["reference"] == "digits":
        lines += [
            "",
            "Moonshot (>= 2x faster than int8 post-training at <= 1 point drop): "
            + (f"YES, trials {m['hits']}" if m["hits"] else "not reached")
            + (
                f"; fastest within 1 point: trial {fast['number']}, {fast['speedup']}x, "
                f"{100 * fast['accuracy']:.2f}%"
                if fast
                else ""
            ),
        ]
    if hv["series"]:
        lines += hv_lines(res)
    if best is None and s["closest"]:
        from tfedge.search.pareto import closest_lines

        lines += ["", "Closest trials:", ""] + [f"- {x}" for x in closest_lines(s["closest"])]
    if s["failures"]:
        lines += ["", "Failed trials:", ""]
        lines += [f"- {f['number']}: {f['error']}" for f in s["failures"]]
    lines += [
        "",
        "## All trials",
        "",
        "| trial | recipe | accuracy | p50 ms | gzip B | feasible |",
        "|---|---|---|---|---|---|",
    ]
    for t in s["rows"]:
        ok = "yes" if all(e <= 0 for e in t["excess"]) else "no"
        lines.append(f"| {t['number']} | {recipe_text(t['recipe'])} | {cell(t)} | {ok} |")
    lines += [
        "",
        "The built-ins are measured once each, before the search, on the same target with the "
        "space's benchmark settings; the search's int8 baseline is measured again by the search.",
    ]
    return "\n".join(lines) + "\n"


def interleaved_lines(res: dict) -> list[str]:
    """The side-by-side timing (``remeasure``) and the verdict on it."""
    inter = res.get("interleaved")
    if not inter:
        return []
    rows = {r["number"]: r for r in res["search"]["rows"]}
    builtins = {b["recipe"]: b for b in res.get("builtins", [])}
    v = inter["verdict"]
    lines = [
        "",
        f"## Side by side ({inter['rounds']} rounds, in turn, one run)",
        "",
        "The built-ins and the trials whose accuracy and gzip bytes match or beat a built-in's, "
        "timed again in one run on the same target, one after another, each round; the p50 is "
        "the median over the rounds.",
        "",
        "| model | accuracy | gzip B | p50 ms (measured alone) | p50 ms (side by side) |",
        "|---|---|---|---|---|",
    ]
    for name, p50 in inter["builtins"].items():
        b = builtins[name]
        lines.append(
            f"| built-in {name} | {100 * b['accuracy']:.2f}% | {b['gzip_bytes']} | "
            f"{b['p50_ms']:.3f} | {p50:.3f} |"
        )
    for number, p50 in inter["trials"].items():
        t = rows[int(number)]
        lines.append(
            f"| trial {number}: {recipe_text(t['recipe'])} | {100 * t['accuracy']:.2f}% | "
            f"{t['gzip_bytes']} | {t['p50_ms']:.3f} | {p50:.3f} |"
        )
    if v["yes"]:
        lines += [
            "",
            f"Side by side: YES, trial(s) {v['trials_covering_all']} dominate or match "
            "every built-in.",
        ]
    else:
        lines += ["", "Side by side: NO trial dominates or matches every built-in."]
    lines += [
        f"- {name}: matched or dominated by trial(s) {nums}"
        for name, nums in v["per_builtin"].items()
    ]
    return lines


def hv_lines(res: dict) -> list[str]:
    """The hypervolume section: every fifth trial and the last, then the built-ins'."""
    hv = res["hypervolume"]
    lines = [
        "",
        "## Hypervolume",
        "",
        f"Normalised (0..1) on (accuracy from {res['hv_accuracy']} to 1, p50, gzip bytes). "
        "Reference `budgets`: the budgets (only trials within them count); `wide`: 1.0 x int8 "
        "p50 and 1.0 x float32 bytes.",
        "",
        "| after trial | " + " | ".join(hv["series"]) + " |",
        "|---|" + "---|" * len(hv["series"]),
    ]
    last = max((len(x) for x in hv["series"].values()), default=0)
    for n in range(last):
        if n % 5 == 4 or n == last - 1:
            lines.append(
                f"| {n} | " + " | ".join(f"{x[n]:.4f}" for x in hv["series"].values()) + " |"
            )
    lines.append(
        "| built-ins together | " + " | ".join(f"{x:.4f}" for x in hv["builtins"].values()) + " |"
    )
    return lines


def hv_svg(res: dict) -> str:
    """Hypervolume against trials: one line per reference, the built-ins' as dashed lines."""
    w, h, m = 560, 300, 48
    hv = res["hypervolume"]
    series = hv["series"]
    n = max((len(x) for x in series.values()), default=1)
    top = max([max(x, default=0) for x in series.values()] + list(hv["builtins"].values()) + [1e-9])
    top *= 1.1

    def at(i: float, v: float) -> str:
        return f"{m + i / max(n - 1, 1) * (w - 2 * m):.1f},{h - m - v / top * (h - 2 * m):.1f}"

    colours = {"budgets": "#1f77b4", "wide": "#2ca02c"}
    parts = [
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="black"/>',
        f'<line x1="{m}" y1="{h - m}" x2="{m}" y2="{m}" stroke="black"/>',
        f'<text x="{m}" y="{m - 20}" font-size="12">hypervolume (accuracy, p50, gzip) vs trials '
        f"- {escape(res['reference'])}, {escape(res['target'])}</text>",
        f'<text x="{w / 2}" y="{h - 10}" font-size="11" text-anchor="middle">trial</text>',
    ]
    for k in range(5):
        v = top * k / 4
        parts.append(
            f'<text x="{m - 4}" y="{at(0, v).split(",")[1]}" font-size="10" '
            f'text-anchor="end">{v:.3g}</text>'
        )
    for i in range(0, n, 5):
        x = at(i, 0).split(",")[0]
        parts.append(
            f'<text x="{x}" y="{h - m + 14}" font-size="10" text-anchor="middle">{i}</text>'
        )
    for k, (name, values) in enumerate(series.items()):
        colour = colours.get(name, "#444")
        pts = " ".join(at(i, v) for i, v in enumerate(values))
        parts.append(
            f'<polyline class="hv" data-ref="{name}" fill="none" stroke="{colour}" '
            f'stroke-width="2" points="{pts}"/>'
        )
        y = at(0, hv["builtins"][name]).split(",")[1]
        parts.append(
            f'<line class="builtins" x1="{m}" y1="{y}" x2="{w - m}" y2="{y}" stroke="{colour}" '
            f'stroke-dasharray="6 4"/>'
        )
        parts.append(
            f'<text x="{w - m - 200}" y="{m + 14 * k}" font-size="10" fill="{colour}">'
            f"ref {name}: search (line), built-ins (dashed)</text>"
        )
    body = "\n".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" font-family="sans-serif">\n{body}\n</svg>\n'
    )


def write(res: dict, out: Path, name: str) -> str:
    from tfedge.search import plots

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    text = markdown(res)
    (out / f"{name}.md").write_text(text)
    if "hypervolume" in res:
        if res["hypervolume"]["series"]:
            (out / f"{name}.svg").write_text(hv_svg(res))
        s = res["search"]
        front = plots.scatter_svg(s["rows"], s["budgets"], "p50_ms")
        (out / f"{name}-front.svg").write_text(front)
    return text


# ---- main ------------------------------------------------------------------------------------


def cpu() -> str:
    """The host CPU's model name and the vector features that decide int8 against float32."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    have = [f for f in wanted if f in flags]
    return f"{model} ({', '.join(have) or 'none of ' + '/'.join(wanted)})"


def snapshot(res, outdir, space, args, start, partial: bool | None) -> str | None:
    found = read_study(outdir, space, args.target)
    res["seconds"] = round(time.monotonic() - start, 1)
    if found is None:
        return None
    # None (--report-only): partial unless the study holds every trial wanted
    res["partial"] = partial if partial is not None else len(found["trials"]) < args.trials
    analyse(res, found, space, args.hv_accuracy)
    return write(res, args.out, args.name)


def watch(stop: threading.Event, *snap_args) -> None:
    while not stop.wait(snap_args[-1]):
        try:
            snapshot(*snap_args[:-1], partial=True)
        except Exception as exc:  # noqa: BLE001  (a read while a trial writes: try again)
            print(f"(partial results not written: {exc})", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", default="digits", help="a reference model (digits, vww)")
    parser.add_argument("--target", default="local", help="local or qemu")
    parser.add_argument("--profile", default=None, help="e.g. rpi4 (with --target qemu)")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--space", default=None, help="a space .yaml (default: the default space)")
    parser.add_argument("--builtins", default=",".join(BUILTINS), help="comma-separated")
    parser.add_argument("--hv-accuracy", type=float, default=0.9)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between partial writes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--name", default=None, help="file stem (default search or search-qemu)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the search's OUTDIR here")
    parser.add_argument("--report-only", action="store_true", help="rewrite from --keep's study")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds of the side-by-side timing of the built-ins and candidates (0: none; "
        "default 7 after a search, none with --report-only)",
    )
    args = parser.parse_args()
    args.name = args.name or ("search" if args.target == "local" else f"search-{args.target}")
    start = time.monotonic()
    space = load_space(args.space)
    res: dict = {
        "host": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "version": tfedge.__version__,
        "date": time.strftime("%F"),
        "reference": args.reference,
        "target": args.target,
        "profile": args.profile,
        "emulated": args.target == "qemu",
        "cpu": cpu(),
        "workers": args.workers,
        "trials_wanted": args.trials,
        "hv_accuracy": args.hv_accuracy,
        "space": space.to_dict(),
    }
    with tempfile.TemporaryDirectory(prefix="tfedge-search-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        outdir = work / "search"
        names = [n for n in args.builtins.split(",") if n]
        if args.report_only:
            cache = work / "builtins.json"
            res["builtins"] = json.loads(cache.read_text()) if cache.is_file() else []
            earlier = args.out / f"{args.name}.json"
            if earlier.is_file():  # the run's own duration and side-by-side timing
                before = json.loads(earlier.read_text())
                start -= before.get("seconds", 0.0)
                if before.get("interleaved"):
                    res["interleaved"] = before["interleaved"]
            text = snapshot(res, outdir, space, args, start, partial=None)
            if text and args.rounds:  # time the built-ins and candidates again
                remeasure(res, outdir, work, args, space, args.rounds)
                text = snapshot(res, outdir, space, args, start, partial=None)
            print(text or "no study yet")
            return 0
        from tfedge.search.objectives import Inputs
        from tfedge.zoo.reference import build_reference

        ref = build_reference(args.reference, ROOT / "models")
        inputs = Inputs(ref.model, ref.train, ref.test, args.target, args.profile)
        res["builtins"] = measure_builtins(
            names, inputs, space, work / "builtins", work / "builtins.json"
        )
        stop = threading.Event()
        watcher = threading.Thread(
            target=watch, args=(stop, res, outdir, space, args, start, args.every), daemon=True
        )
        watcher.start()
        try:
            run_search(args, ref, space, outdir)
        finally:
            stop.set()
            watcher.join()
        snapshot(res, outdir, space, args, start, partial=False)
        if args.rounds is None or args.rounds > 0:
            remeasure(res, outdir, work, args, space, args.rounds or 7)
        text = snapshot(res, outdir, space, args, start, partial=False)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
