"""Run the device script on emulated ARM: the cached aarch64 root under qemu-user-static.

qemu-user shares this machine's file system, so model, data and outputs need no copying.
Every report is marked emulated: its timings and memory are qemu's, good for functional
parity and relative comparisons only.

Example:
    >>> report, _ = run(Job(Path("model.tflite"), threads=4), cpu="cortex-a53")
    >>> report["emulated"], report["qemu_cpu"]
    (True, 'cortex-a53')
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from tfedge.errors import TargetError
from tfedge.targets import emulator
from tfedge.targets.job import DEVICE_SCRIPT, Job, parse_report
from tfedge.targets.local import _call
from tfedge.targets.profiles import QEMU_CPUS

EMULATION_NOTE = (
    "emulated with qemu-user on {host}: timings and memory are qemu's, for functional parity "
    "and relative comparisons only, never for device budgets"
)


def run(job: Job, cpu: str = "cortex-a72") -> tuple[dict, np.ndarray | None]:
    """Benchmark ``job`` under qemu with CPU model ``cpu``; return report and raw outputs."""
    check_cpu(cpu)
    env = emulator.require()
    with tempfile.TemporaryDirectory(prefix="tfedge-qemu-") as tmp:
        outputs = os.path.join(tmp, "outputs.npy") if job.keep_outputs and job.data else None
        args = [
            str(DEVICE_SCRIPT),
            *job.script_args(
                str(job.model.resolve()),
                _abs(job.data),
                outputs,
                [str(path.resolve()) for path in job.alternates],
            ),
        ]
        where = f"qemu {cpu} ({env.runtime} {env.runtime_version})"
        report = parse_report(
            *_call(env.command(cpu, args), job.timeout, env.env()), job.model, where
        )
        report.update(
            emulated=True,
            qemu_cpu=cpu,
            emulation_note=EMULATION_NOTE.format(host=os.uname().machine),
        )
        return report, (np.load(outputs) if outputs else None)


def check_cpu(cpu: str) -> None:
    if cpu not in QEMU_CPUS:
        raise TargetError(f"qemu has no CPU model {cpu!r}", f"use one of {', '.join(QEMU_CPUS)}")


def _abs(path) -> str | None:
    return str(path.resolve()) if path else None
