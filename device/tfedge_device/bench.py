#!/usr/bin/env python3
"""tfedge device benchmark: time a .tflite model on this machine and print one JSON object.

Needs only Python 3, numpy and one TFLite runtime (``ai-edge-litert`` or ``tflite-runtime``),
never tfedge or TensorFlow, so it runs on a bare Raspberry Pi: installed with the device
package (``tfedge-bench-device``), or as two plain files copied next to each other
(``bench.py`` and ``interpreter.py``, what ``tfedge bench --target ssh://...`` and
``tfedge push`` upload). It mirrors TFLite's ``benchmark_model``: init time, first
inference, warm-up runs, then measured runs until both a minimum count and a minimum time
are reached; latencies in microseconds with a population standard deviation.

Usage:
    tfedge-bench-device model.tflite --threads 4 --runs 50 --min-secs 1
    python3 bench.py model.tflite --data eval.npz        # also reports accuracy
    python3 bench.py model.tflite --smoke golden.npz     # exit 0 if outputs match
    python3 bench.py --probe                             # which runtime works here?
    python3 bench.py model.tflite --alternates a.tflite b.tflite --rounds 5
                                  # also time a and b, alternating with model, 5 rounds

On error it still prints one JSON object, ``{"error": ..., "kind": ..., "hint": ...}``,
and exits with status 2 (runtime missing or broken) or 3 (bad model or data).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import time

if __package__:  # imported, or run as `python -m tfedge_device.bench`
    from tfedge_device import interpreter as rt
else:  # run as a plain file: its sibling interpreter.py, never another installed copy
    import interpreter as rt  # type: ignore[no-redef]

SCRIPT_VERSION = 1
# Alternates (e.g. prefixes of a big model) larger than this in all are loaded one at a time,
# at each turn, rather than all kept in memory at once.
KEEP_ALTERNATES_BYTES = 64 * 1024 * 1024


# ---------------------------------------------------------------- timing
def timed_loop(
    interp, inputs: list, min_runs: int, min_secs: float, max_secs: float, cpu: list | None = None
) -> list:
    """Invoke until ``min_runs`` and ``min_secs`` are both reached (or ``max_secs``); µs per run.

    Inputs are set outside the timed region; only ``invoke()`` is measured. With a ``cpu``
    list, the calling thread's CPU time of each run (µs) is appended to it too.
    """
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if (len(samples) >= min_runs and elapsed >= min_secs) or (elapsed > max_secs and samples):
            return samples
        values = inputs[len(samples) % len(inputs)]
        for detail, value in zip(interp.get_input_details(), values):
            interp.set_tensor(detail["index"], value)
        t0 = time.perf_counter_ns()
        c0 = time.thread_time_ns() if cpu is not None else 0
        interp.invoke()
        if cpu is not None:
            cpu.append((time.thread_time_ns() - c0) / 1000.0)
        samples.append((time.perf_counter_ns() - t0) / 1000.0)


def latency_stats(samples: list) -> dict:
    """count, min, max, mean, population std, p50, p90, p99 of ``samples`` (µs)."""
    np = rt.import_numpy()
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return {"count": 0}
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return {
        "count": int(a.size),
        "min": float(a.min()),
        "max": float(a.max()),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "p50": p50,
        "p90": p90,
        "p99": p99,
    }


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# ---------------------------------------------------------------- device conditions
def device_info() -> dict:
    """What skews numbers on a board: governor, frequency, temperature, throttling, affinity."""
    return {
        "machine": platform.machine(),
        "model": _read_text("/proc/device-tree/model"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "governor": _read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "cur_freq_khz": _read_int("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"),
        "max_freq_khz": _read_int("/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq"),
        "temperature_c": _temperature(),
        "throttled": _vcgencmd_throttled(),
    }


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").strip("\0\n ") or None
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read_text(path)
    return int(text) if text and text.isdigit() else None


def _temperature() -> float | None:
    millideg = _read_int("/sys/class/thermal/thermal_zone0/temp")
    return millideg / 1000.0 if millideg is not None else None


def _vcgencmd_throttled() -> str | None:
    """``vcgencmd get_throttled`` on a Pi (0x0 = never throttled), else None."""
    if not shutil.which("vcgencmd"):
        return None
    try:
        out = subprocess.run(
            ["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip().split("=", 1)[-1] or None
    except (OSError, subprocess.SubprocessError):
        return None


def pin_cpus(spec: str | None) -> None:
    """Pin this process to CPUs like ``taskset -c``: ``"2,3"`` or ``"0-3"``."""
    if not spec:
        return
    try:
        cpus: set[int] = set()
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
        os.sched_setaffinity(0, cpus)
    except (AttributeError, OSError, ValueError) as exc:
        raise rt.DeviceError(
            "bad_option", f"cannot pin to CPUs {spec!r}: {exc}", "list CPUs that exist, e.g. 0-3"
        ) from exc


# ---------------------------------------------------------------- the benchmark
def benchmark(
    model: str,
    threads: int | None = None,
    runs: int = 50,
    warmup: int = 1,
    min_secs: float = 1.0,
    warmup_min_secs: float = 0.5,
    max_secs: float = 150.0,
    data: str | None = None,
    save_outputs: str | None = None,
    xnnpack: bool = True,
    prefer: str | None = None,
    alternates: list | None = None,
    rounds: int = 1,
) -> dict:
    """Benchmark ``model`` and return the report as a dict (what the script prints).

    With ``alternates`` (models with the same inputs, e.g. prefixes of ``model``), the report
    also has ``sweep``: ``p50_us[r]`` (and ``min_us[r]``) is, for round ``r``, the p50 (the
    fastest run) of ``model`` then of each alternate, each timed in turn on the same inputs
    (``runs`` and ``min_secs`` each).
    """
    module, runtime = rt.find_runtime(prefer)
    runtime = dict(runtime, xnnpack=xnnpack)
    threads = threads or os.cpu_count() or 1
    rss_start = current_rss_mb()
    t0 = time.perf_counter()
    interp = rt.create_interpreter(module, runtime, model, threads, xnnpack)
    init_ms = (time.perf_counter() - t0) * 1000.0
    rss_init = current_rss_mb()
    report = {
        "script_version": SCRIPT_VERSION,
        "runtime": runtime,
        "threads": threads,
        "model_bytes": os.path.getsize(model),
        "init_ms": init_ms,
    }
    inputs = _timing_inputs(interp, data, report, save_outputs)
    report.update(_run_timings(interp, inputs, runs, warmup, min_secs, warmup_min_secs, max_secs))
    if alternates:
        keep = sum(os.path.getsize(m) for m in alternates) <= KEEP_ALTERNATES_BYTES
        load = functools.partial(rt.create_interpreter, module, runtime, threads=threads)
        others = [
            load(m, xnnpack=xnnpack) if keep else functools.partial(load, m, xnnpack=xnnpack)
            for m in alternates
        ]
        timing = (max(runs, 1), min_secs, max_secs)
        report["sweep"] = sweep([interp, *others], inputs, rounds, max(warmup, 1), timing)
    report.update(
        peak_rss_mb=rt.peak_rss_mb(),
        rss_init_delta_mb=_delta(rss_init, rss_start),
        arch=platform.machine(),
        device=device_info(),
    )
    return report


def _timing_inputs(interp, data, report: dict, save_outputs) -> list:
    if not data:
        return [rt.random_inputs(interp)]
    x, y = rt.load_data(data)
    raw, floats = rt.predict_all(interp, x)
    report["samples"] = int(len(x))
    if y is not None:
        report["accuracy"] = rt.accuracy(floats, y)
    if save_outputs:
        rt.import_numpy().save(save_outputs, raw)
    detail = interp.get_input_details()[0]
    return [[rt.prepare_input(detail, s)] for s in x[: min(len(x), 64)]]


def _run_timings(interp, inputs, runs, warmup, min_secs, warmup_min_secs, max_secs) -> dict:
    t0 = time.perf_counter_ns()
    rt.run_once(interp, inputs[0])
    first_us = (time.perf_counter_ns() - t0) / 1000.0
    warm = (
        timed_loop(interp, inputs, warmup, warmup_min_secs if warmup else 0.0, max_secs)
        if warmup
        else []
    )
    measured = timed_loop(interp, inputs, max(runs, 1), min_secs, max_secs)
    return {
        "first_us": first_us,
        "warmup_us": latency_stats(warm),
        "latency_us": latency_stats(measured),
    }


def sweep(interps: list, inputs: list, rounds: int, warmup: int, timing: tuple) -> dict:
    """Time every interpreter in turn, ``rounds`` times; per round, the p50 and min (µs) of
    each, and the min of the calling thread's CPU time (``cpu_min_us``: with one interpreter
    thread, the run's time without the time other processes took the core)."""
    np = rt.import_numpy()
    runs, min_secs, max_secs = timing
    p50s, mins, cpu_mins = [], [], []
    for _ in range(max(rounds, 1)):
        samples: list[list[float]] = []
        cpu: list[list[float]] = []
        for item in interps:  # an interpreter, or what loads one for this turn only
            interp = item() if isinstance(item, functools.partial) else item
            timed_loop(interp, inputs, warmup, 0.0, max_secs)
            cpu.append([])
            samples.append(timed_loop(interp, inputs, runs, min_secs, max_secs, cpu=cpu[-1]))
        p50s.append([float(np.percentile(s, 50)) for s in samples])
        mins.append([float(min(s)) for s in samples])
        cpu_mins.append([float(min(c)) for c in cpu])
    return {"rounds": len(p50s), "p50_us": p50s, "min_us": mins, "cpu_min_us": cpu_mins}


def _delta(after, before):
    return None if after is None or before is None else after - before


# ---------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark a .tflite model; print one JSON object.")
    p.add_argument("model", nargs="?", help="the .tflite model")
    p.add_argument(
        "--threads", type=int, default=None, help="interpreter threads (default: all CPUs)"
    )
    p.add_argument("--runs", type=int, default=50, help="minimum measured runs (default 50)")
    p.add_argument("--warmup", type=int, default=1, help="minimum warm-up runs (default 1)")
    p.add_argument(
        "--min-secs", type=float, default=1.0, help="minimum measured time (default 1 s)"
    )
    p.add_argument(
        "--warmup-min-secs", type=float, default=0.5, help="minimum warm-up time (default 0.5 s)"
    )
    p.add_argument(
        "--max-secs", type=float, default=150.0, help="stop measuring after this (default 150 s)"
    )
    p.add_argument(
        "--data", help=".npz (x, y) or .npy inputs: real inputs, and accuracy when y is given"
    )
    p.add_argument("--save-outputs", help="write the raw outputs for --data to this .npy")
    p.add_argument(
        "--no-xnnpack", action="store_true", help="use the builtin kernels without XNNPACK"
    )
    p.add_argument("--cpus", help="pin to these CPUs, like taskset -c (e.g. 2,3 or 0-3)")
    p.add_argument(
        "--alternates",
        nargs="+",
        metavar="MODEL",
        help="also time these models (same inputs), alternating with MODEL (see --rounds)",
    )
    p.add_argument(
        "--rounds", type=int, default=1, help="rounds over MODEL and --alternates (default 1)"
    )
    p.add_argument("--runtime", choices=[c[0] for c in rt.RUNTIMES], help="prefer this runtime")
    p.add_argument(
        "--smoke", metavar="GOLDEN.npz", help="compare outputs on golden x with y; exit 0 or 1"
    )
    p.add_argument("--atol", type=float, default=None, help="--smoke tolerance")
    p.add_argument("--probe", action="store_true", help="only report the runtime that works here")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> tuple[dict, int]:
    """Do what ``args`` ask; return ``(report, exit_code)``."""
    pin_cpus(args.cpus)
    if args.probe:
        _, runtime = rt.find_runtime(args.runtime)
        return {
            "runtime": runtime,
            "arch": platform.machine(),
            "python": platform.python_version(),
            "numpy": rt.import_numpy().__version__,
        }, 0
    if not args.model:
        raise rt.DeviceError(
            "model_invalid", "no model given", "usage: tfedge-bench-device MODEL.tflite [options]"
        )
    if args.smoke:
        report = rt.smoke(args.model, args.smoke, args.atol, args.threads)
        return report, 0 if report["ok"] else 1
    return benchmark(
        args.model,
        args.threads,
        args.runs,
        args.warmup,
        args.min_secs,
        args.warmup_min_secs,
        args.max_secs,
        args.data,
        args.save_outputs,
        not args.no_xnnpack,
        args.runtime,
        args.alternates,
        args.rounds,
    ), 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report, code = run(args)
    except rt.DeviceError as err:
        report, code = err.to_dict(), err.exit_code
    except Exception as exc:  # anything unexpected still answers in JSON
        report, code = (
            {
                "error": f"{type(exc).__name__}: {rt.first_line(exc)}",
                "kind": "internal",
                "hint": "",
            },
            rt.EXIT_INTERNAL,
        )
    sys.stdout.write(json.dumps(report, default=rt.json_default) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
