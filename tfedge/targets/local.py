"""Run the device script on this machine, in a subprocess with the local runtime.

The subprocess is the firewall: a malformed or hostile ``.tflite`` that crashes the
interpreter kills only the child, and tfedge reports a BenchError.

Example:
    >>> report, outputs = run(Job(Path("model.tflite"), threads=2))
    >>> report["latency_us"]["p50"]
    534.2
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tfedge.errors import BenchError
from tfedge.targets.job import DEVICE_SCRIPT, Job, parse_report

WHERE = "the local CPU"


def run(job: Job, python: str | None = None) -> tuple[dict, np.ndarray | None]:
    """Benchmark ``job`` locally; return the script's report and (if kept) the raw outputs."""
    with tempfile.TemporaryDirectory(prefix="tfedge-bench-") as tmp:
        outputs = os.path.join(tmp, "outputs.npy") if job.keep_outputs and job.data else None
        argv = [
            python or sys.executable,
            str(DEVICE_SCRIPT),
            *job.script_args(
                str(job.model),
                str(job.data) if job.data else None,
                outputs,
                [str(path) for path in job.alternates],
            ),
        ]
        report = parse_report(*_call(argv, job.timeout, _env()), job.model, WHERE)
        return report, (np.load(outputs) if outputs else None)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _call(
    argv: list[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[str, str, int]:
    """Run ``argv``; return (stdout, stderr, returncode); a timeout becomes a BenchError."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(
            f"the benchmark timed out after {timeout:.0f} s",
            "lower --runs/--min-secs, or raise the timeout",
        ) from exc
    except OSError as exc:
        raise BenchError(f"cannot start {argv[0]}: {exc}", "check the interpreter path") from exc
    return out.stdout, out.stderr, out.returncode


def host_cores(cpus: str | None = None) -> int:
    """CPUs a benchmark may use here: those of ``cpus`` (``"2,3"``, ``"0-3"``, like
    ``taskset -c``), else those this process may run on (taskset and cpusets count)."""
    if cpus:
        try:
            return len(_cpu_set(cpus)) or 1
        except ValueError:
            pass  # the device script refuses a bad spec with its own message
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _cpu_set(spec: str) -> set[int]:
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def script_path() -> Path:
    return DEVICE_SCRIPT
