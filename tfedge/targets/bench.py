"""Benchmark a .tflite model on the local CPU, on emulated ARM, or on a board over SSH.

Every target runs the same standalone device script (``tfedge_device/bench.py`` of the
device package, with ``interpreter.py`` beside it), so numbers are measured the same way
everywhere; only the way there differs.

Example:
    >>> r = bench("model_int8.tflite", target="qemu", profile="rpi4", compare="model_float.tflite")
    >>> r.emulated, r.runtime["name"], round(r.speedup, 2)
    (True, 'ai-edge-litert', 1.9)
    >>> r = bench("model_int8.tflite", target="ssh://pi@raspberrypi.local", profile="rpi4")
    >>> r.latency_us.p50, r.budget.violations
    (48211.0, [])
"""

from __future__ import annotations

import os
import platform
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from tfedge.config import Config, json_schema, validate
from tfedge.errors import ProfileError, TfedgeError, UsageError
from tfedge.fsutil import sha256_file
from tfedge.targets.job import Job, check_model_file
from tfedge.targets.profiles import (
    ARMV7_HINT,
    DeviceProfile,
    check_tflite_against_profile,
    load_profile,
)
from tfedge.targets.stats import LatencyStats, speedup

DEFAULT_PROFILE = {"local": "local", "qemu": "generic-aarch64"}


@dataclass
class BudgetCheck:
    """Whether the profile's RAM and latency budgets were checked, and what broke them."""

    checked: bool
    reason: str = ""
    violations: list[str] = field(default_factory=list)


@dataclass
class BenchResult:
    """One model benchmarked on one target (latencies in microseconds)."""

    model: str
    model_bytes: int
    model_sha256: str
    target: str
    emulated: bool
    arch: str
    runtime: dict
    threads: int | None
    init_ms: float
    first_us: float
    latency_us: LatencyStats
    peak_rss_mb: float
    profile: str | None = None
    accuracy: float | None = None
    samples: int | None = None
    device: dict = field(default_factory=dict)
    budget: BudgetCheck = field(default_factory=lambda: BudgetCheck(False, "no profile"))
    note: str = ""
    threads_note: str = ""
    compare: "BenchResult | None" = None
    speedup: float | None = None
    outputs: np.ndarray | None = field(default=None, repr=False)
    sweep: dict | None = field(default=None, repr=False)  # p50s of the alternates, per round

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``tfedge bench --json``)."""
        data = {
            "model": self.model,
            "model_bytes": self.model_bytes,
            "model_sha256": self.model_sha256,
            "target": self.target,
            "emulated": self.emulated,
            "arch": self.arch,
            "runtime": self.runtime,
            "threads": self.threads,
            "threads_note": self.threads_note,
            "init_ms": self.init_ms,
            "first_us": self.first_us,
            "latency_us": self.latency_us.to_dict(),
            "peak_rss_mb": self.peak_rss_mb,
            "profile": self.profile,
            "device": self.device,
            "budget": vars(self.budget),
            "note": self.note,
        }
        if self.accuracy is not None:
            data.update(accuracy=self.accuracy, samples=self.samples)
        if self.compare is not None:
            data.update(compare=self.compare.to_dict(), speedup=self.speedup)
        return data


def bench(
    model: str | os.PathLike,
    target: str = "local",
    profile: str | DeviceProfile | None = None,
    threads: int | None = None,
    runs: int = 50,
    warmup: int = 1,
    min_secs: float = 1.0,
    data: str | os.PathLike | None = None,
    compare: str | os.PathLike | None = None,
    xnnpack: bool = True,
    cpus: str | None = None,
    keep_outputs: bool = False,
    timeout: float = 600.0,
    alternates: list[Path] | tuple[Path, ...] = (),
    rounds: int = 1,
    **ssh_options,
) -> BenchResult:
    """Benchmark ``model`` on ``target`` (``local``, ``qemu`` or ``ssh://user@host...``).

    Args:
        profile: a profile name or file; checks the model (size, full-integer, ops) before
            running, and on a real device its RAM and latency budgets after.
        threads: interpreter threads; always used when given. Else the profile's threads on
            an ssh device; on ``local`` and ``qemu`` (which runs on this host) the profile's
            threads capped at this host's cores, with ``threads_note`` saying so.
        runs, warmup, min_secs: like benchmark_model: at least ``runs`` runs and ``min_secs``.
        data: ``.npz`` (x, y) or ``.npy`` inputs; with labels the result has ``accuracy``.
        compare: a second model run the same way; ``speedup`` is its median over ours.
        xnnpack, cpus: XNNPACK on/off; pin to CPUs like ``taskset -c``.
        keep_outputs: return the raw outputs for ``data`` in ``result.outputs``.
        alternates, rounds: more models with the same inputs (prefixes of ``model``, see
            :mod:`tfedge.analyze.op_profile`), timed in turn with ``model`` for ``rounds``
            rounds in the same run; their p50s per round are in ``result.sweep``.
        ssh_options: python, key, known_hosts, connect_timeout for ssh targets.

    Raises:
        ModelLoadError, ProfileError, TargetError, BenchError, DataError, UsageError.
    """
    kind = target_kind(target)
    prof = _resolve_profile(profile, kind)
    model = check_model_file(Path(model))
    if profile is not None and prof is not None:
        check_tflite_against_profile(prof, model)
    _check_arch(prof, kind)
    threads, threads_note = pick_threads(threads, prof, kind, cpus)
    job = Job(
        model=model,
        threads=threads,
        runs=runs,
        warmup=warmup,
        min_secs=min_secs,
        data=_existing(data),
        xnnpack=xnnpack,
        cpus=cpus,
        keep_outputs=keep_outputs,
        timeout=timeout,
        alternates=tuple(check_model_file(Path(p)) for p in alternates),
        rounds=rounds,
    )
    result = _run(job, target, kind, prof, ssh_options)
    result.budget = check_budgets(result, prof if profile is not None else None, kind)
    result.threads_note = threads_note
    if compare is not None:
        other = Job(
            **{
                **vars(job),
                "model": check_model_file(Path(compare)),
                "keep_outputs": False,
                "alternates": (),
            }
        )
        result.compare = _run(other, target, kind, prof, ssh_options)
        result.compare.threads_note = threads_note
        result.speedup = speedup(result.compare.latency_us.p50, result.latency_us.p50)
    return result


def target_kind(target: str) -> str:
    """``local``, ``qemu`` or ``ssh``; anything else is a UsageError."""
    if target in ("local", "qemu"):
        return target
    if target.startswith("ssh://"):
        return "ssh"
    raise UsageError(
        f"unknown target {target!r}", "use local, qemu, or ssh://user@host[:port][/workdir]"
    )


def pick_threads(
    threads: int | None, prof: DeviceProfile | None, kind: str, cpus: str | None = None
) -> tuple[int | None, str]:
    """Interpreter threads for a run on a ``kind`` target, and a note when a profile asked more.

    ``threads`` given by the user always wins. A profile's thread count applies on its
    device (``ssh``). On ``local``, and under ``qemu`` (emulation on this host, one host
    thread per guest thread), the profile's count is capped at this host's cores (or those
    of ``cpus``): four threads on two cores measure the scheduler, not the model.

    Example:
        >>> pick_threads(None, load_profile("rpi4"), "local")  # on a 2-core host
        (2, 'profile rpi4 asks for 4 threads; this host has 2 cores')
        >>> pick_threads(None, load_profile("rpi4"), "ssh"), pick_threads(3, None, "local")
        ((4, ''), (3, ''))
    """
    if threads is not None or prof is None:
        return threads, ""  # no profile: the device script uses all the device's cores
    if kind == "ssh":
        return prof.threads, ""
    from tfedge.targets.local import host_cores

    host = host_cores(cpus)
    asked = prof.default_threads or prof.cores
    if asked is None or asked <= host:
        return asked or host, ""
    where = f"--cpus {cpus} gives" if cpus else "this host has"
    cores = f"{host} core{'s' if host > 1 else ''}"
    return host, f"profile {prof.name} asks for {asked} threads; {where} {cores}"


def _resolve_profile(profile, kind: str) -> DeviceProfile | None:
    if profile is not None:
        return load_profile(profile)
    return load_profile(DEFAULT_PROFILE[kind]) if kind in DEFAULT_PROFILE else None


def _check_arch(prof: DeviceProfile | None, kind: str) -> None:
    if prof is None:
        return
    if prof.arch == "armv7l" and kind in ("qemu", "ssh"):
        raise ProfileError(f"profile {prof.name} is a 32-bit ARM board (armv7l)", ARMV7_HINT)
    if kind == "qemu" and prof.arch != "aarch64":
        raise ProfileError(
            f"profile {prof.name} is {prof.arch}; qemu emulates aarch64 boards only",
            "pick an aarch64 profile, e.g. --profile rpi4, or use --target local",
        )


def _existing(path) -> Path | None:
    if path is None:
        return None
    from tfedge.io.npyfile import check_data_file

    return check_data_file(path)  # a FIFO, a lying header or a zip bomb: refused here


def _run(
    job: Job, target: str, kind: str, prof: DeviceProfile | None, ssh_options: dict
) -> BenchResult:
    if kind == "local":
        from tfedge.targets import local

        report, outputs = local.run(job)
        report.setdefault("emulated", False)
        label = "local"
    elif kind == "qemu":
        from tfedge.targets import qemu

        cpu = prof.cpu if prof else "cortex-a72"
        report, outputs = qemu.run(job, cpu)
        label = f"qemu:{cpu}"
    else:
        from tfedge.targets import ssh

        ssh_target = ssh.parse_target(target, **ssh_options)
        report, outputs = ssh.run(job, ssh_target)
        label = ssh_target.label
    return _result(job, report, outputs, label, prof)


def _result(job: Job, report: dict, outputs, label: str, prof: DeviceProfile | None) -> BenchResult:
    return BenchResult(
        model=str(job.model),
        model_bytes=job.model.stat().st_size,
        model_sha256=sha256_file(job.model),
        target=label,
        emulated=bool(report.get("emulated")),
        arch=report.get("arch", ""),
        runtime=report["runtime"],
        threads=report.get("threads"),
        init_ms=float(report["init_ms"]),
        first_us=float(report["first_us"]),
        latency_us=LatencyStats.from_dict(report["latency_us"]),
        peak_rss_mb=float(report["peak_rss_mb"]),
        profile=prof.name if prof else None,
        accuracy=report.get("accuracy"),
        samples=report.get("samples"),
        device=report.get("device", {}),
        note=report.get("emulation_note", ""),
        outputs=outputs,
        sweep=report.get("sweep"),
    )


# ---------------------------------------------------------------- budgets
def check_budgets(result: BenchResult, prof: DeviceProfile | None, kind: str) -> BudgetCheck:
    """Compare peak RSS and median latency with the profile, when the numbers are the device's.

    Emulated numbers are never compared with a device's budgets, nor are local numbers
    with another machine's profile.
    """
    if prof is None:
        return BudgetCheck(False, "no profile given")
    if result.emulated:
        return BudgetCheck(False, "emulated: qemu's timings and memory are not the device's")
    if kind == "local" and prof.arch not in ("native", platform.machine()):
        return BudgetCheck(
            False, f"measured on this {platform.machine()} machine, not on a {prof.name}"
        )
    return BudgetCheck(True, "", _violations(result, prof))


def _violations(result: BenchResult, prof: DeviceProfile) -> list[str]:
    found, budgets = [], prof.budgets
    if budgets.max_ram_mb is not None and result.peak_rss_mb > budgets.max_ram_mb:
        found.append(
            f"peak RSS {result.peak_rss_mb:.1f} MB is over {prof.name}'s budget of "
            f"{budgets.max_ram_mb:g} MB"
        )
    median_ms = result.latency_us.p50 / 1000.0
    if budgets.target_latency_ms is not None and median_ms > budgets.target_latency_ms:
        found.append(
            f"median latency {median_ms:.2f} ms is over {prof.name}'s target of "
            f"{budgets.target_latency_ms:g} ms"
        )
    return found


def enforce_budgets(result: BenchResult) -> None:
    """Raise ProfileError naming every broken budget (the CLI calls this after printing)."""
    if result.budget.violations:
        raise ProfileError(
            "; ".join(result.budget.violations),
            "use a smaller or int8 model, more threads, or a bigger board",
        )


# ---------------------------------------------------------------- several devices
@dataclass
class DeviceRow:
    """One device of an inventory: its result, or the error that stopped it."""

    name: str
    target: str
    profile: str | None
    result: BenchResult | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "target": self.target,
            "profile": self.profile,
            "result": self.result.to_dict() if self.result else None,
            "error": self.error,
        }


SSH_ONLY_KEYS = ("python", "key", "known_hosts", "connect_timeout")
INVENTORY_HINT = "see `tfedge profiles schema --inventory` for the format"


class InventoryDevice(Config):
    """One device of an inventory file."""

    name: str | None = Field(None, description="Row label (default: the target); unique.")
    target: str = Field(description="local, qemu, or ssh://user@host[:port][/workdir]")
    profile: str | None = Field(None, description="Device profile name or .yaml path.")
    python: str | None = Field(None, description="Python on the device (ssh targets).")
    key: str | None = Field(None, description="SSH private key file (ssh targets).")
    known_hosts: str | None = Field(None, description="known_hosts file (ssh targets).")
    threads: int | None = Field(
        None, ge=1, description="Interpreter threads; wins over the profile's."
    )
    connect_timeout: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Seconds to wait for SSH (ssh targets)."
    )

    @field_validator("target")
    @classmethod
    def _known_target(cls, value: str) -> str:
        try:
            target_kind(value)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def label(self) -> str:
        return self.name or self.target


class Inventory(Config):
    """An inventory file: the devices `tfedge bench --inventory` runs on concurrently."""

    devices: list[InventoryDevice] = Field(min_length=1, description="One entry per device.")

    @model_validator(mode="after")
    def _check_devices(self) -> Inventory:
        first: dict[str, int] = {}
        for i, device in enumerate(self.devices):
            if device.label in first:
                raise ValueError(
                    f"devices[{i}] is named {device.label!r} like devices[{first[device.label]}]"
                    " (hint: give each device its own `name:`; without one, a device is named"
                    " after its target)"
                )
            first[device.label] = i
            ssh_only = [k for k in SSH_ONLY_KEYS if getattr(device, k) is not None]
            if ssh_only and target_kind(device.target) != "ssh":
                raise ValueError(
                    f"devices[{i}]: {', '.join(ssh_only)} only appl{'y' if ssh_only[1:] else 'ies'}"
                    f" to ssh:// targets"
                    " (hint: drop them, or use target: ssh://user@host)"
                )
        return self


def inventory_schema() -> dict:
    """JSON Schema of an inventory file (``tfedge profiles schema --inventory``)."""
    return json_schema(Inventory, "tfedge bench inventory")


def load_inventory(path: str | os.PathLike) -> list[dict]:
    """Read an inventory YAML: ``devices: [{name, target, profile?, python?, key?, threads?}]``.

    Every device is checked before any runs: keys, types, targets, unique names, profiles.

    Raises:
        UsageError: the file breaks the schema (the message has the key path, e.g.
            ``devices[2].target``); ProfileError: a device's profile does not load.
    """
    from tfedge.safe_yaml import load_yaml_file

    raw = load_yaml_file(path, "inventory", UsageError, INVENTORY_HINT)
    if not isinstance(raw, dict) or raw.get("devices") in (None, []):
        raise UsageError(
            f"inventory {path} has no devices list",
            "write devices: [{name: pi1, target: ssh://...}]",
        )
    inventory = validate(Inventory, raw, f"inventory {path}", UsageError)
    for i, device in enumerate(inventory.devices):
        _check_profile(device, f"inventory {path}: devices[{i}].profile")
    return [_inventory_entry(device) for device in inventory.devices]


def _check_profile(device: InventoryDevice, where: str) -> None:
    """A misspelt profile fails before any device runs, like a misspelt target."""
    if device.profile is None:
        return
    try:
        load_profile(device.profile)
    except ProfileError as exc:
        raise ProfileError(f"{where}: {exc.message}", exc.hint) from None


def _inventory_entry(device: InventoryDevice) -> dict:
    return {**device.model_dump(exclude_none=True), "name": device.label}


def bench_inventory(
    model, inventory: str | os.PathLike | list[dict], max_workers: int = 8, **options
) -> list[DeviceRow]:
    """Benchmark ``model`` on every device of ``inventory`` concurrently; one row per device.

    A device that fails gives a row with ``error`` set; the others still run.
    """
    entries = load_inventory(inventory) if not isinstance(inventory, list) else inventory
    with ThreadPoolExecutor(max_workers=min(max_workers, len(entries))) as pool:
        return list(pool.map(lambda e: _bench_row(model, e, options), entries))


def _bench_row(model, entry: dict, options: dict) -> DeviceRow:
    row = DeviceRow(entry["name"], entry["target"], entry.get("profile"))
    ssh_keys = {
        k: entry[k] for k in ("python", "key", "known_hosts", "connect_timeout") if k in entry
    }
    kwargs = {
        **options,
        "profile": entry.get("profile", options.get("profile")),
        "threads": entry.get("threads", options.get("threads")),
    }
    if target_kind(entry["target"]) == "ssh":
        kwargs.update(ssh_keys)
    try:
        row.result = bench(model, target=entry["target"], **kwargs)
    except TfedgeError as exc:  # one board failing must not stop the others
        row.error = str(exc)
    return row


__all__ = [
    "bench",
    "bench_inventory",
    "BenchResult",
    "BudgetCheck",
    "DeviceRow",
    "LatencyStats",
    "check_budgets",
    "enforce_budgets",
    "Inventory",
    "InventoryDevice",
    "inventory_schema",
    "load_inventory",
    "pick_threads",
    "target_kind",
]
