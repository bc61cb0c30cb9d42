"""What a trial measures, and which budgets it must meet.

A trial runs its recipe through ``tfedge.optimize`` (the same pipeline and worker as
``tfedge optimize``, into its own folder: ``TrialRunner.build``), then benchmarks the model
on a device of the search (the target, or one of the inventory's devices:
``TrialRunner.bench``) with ``tfedge.targets.bench`` (the same code as ``tfedge bench``).
The objectives are the score (accuracy, or minus the MSE for a model without classes:
maximised), the p50 latency in ms and the gzip bytes (minimised); peak RSS and the .tflite
bytes are kept beside them.

Budgets come in two kinds (``Budgets.kind``):

- ``absolute`` on the profile's own device (an ssh target, or ``local`` when the profile
  is this machine): the profile's ``target_latency_ms``, ``max_ram_mb`` and
  ``max_model_bytes``.
- ``relative`` on a stand-in (``qemu``, or ``local`` for another device), whose timings and
  memory are not the device's: latency <= ``latency`` x the int8 post-training model's p50
  measured on the same target, gzip bytes <= ``size`` x the float32 model's .tflite bytes.

A constraint value is the relative excess, ``value / limit - 1``: <= 0 meets the budget,
0.25 is 25% over.
"""

from __future__ import annotations

import fcntl
import json
import platform
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from tfedge.search.devices import Device
from tfedge.search.space import Measure


@dataclass
class Measured:
    """One trial's figures (latency in ms, RSS in MB)."""

    score: float
    accuracy: float | None
    mse: float | None
    p50_ms: float
    peak_rss_mb: float
    tflite_bytes: int
    gzip_bytes: int
    float32_bytes: int
    seconds: float = 0.0
    model: str = ""
    bench: dict = field(default_factory=dict)

    @property
    def objectives(self) -> tuple[float, float, float]:
        return (self.score, self.p50_ms, float(self.gzip_bytes))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Measured:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


DIRECTIONS: tuple[Literal["maximize", "minimize"], ...] = ("maximize", "minimize", "minimize")


@dataclass
class Built:
    """A trial's model before it is benchmarked: its file and the figures of the build."""

    model: str
    score: float
    accuracy: float | None
    mse: float | None
    tflite_bytes: int
    gzip_bytes: int
    float32_bytes: int
    seconds: float = 0.0

    def measured(self, p50_ms: float, peak_rss_mb: float, bench: dict) -> Measured:
        """The trial's figures once the model was benchmarked."""
        return Measured(
            score=self.score,
            accuracy=self.accuracy,
            mse=self.mse,
            p50_ms=p50_ms,
            peak_rss_mb=peak_rss_mb,
            tflite_bytes=self.tflite_bytes,
            gzip_bytes=self.gzip_bytes,
            float32_bytes=self.float32_bytes,
            seconds=self.seconds,
            model=self.model,
            bench=bench,
        )


class Measurement(Protocol):
    """How a trial is measured, in two steps: ``build`` on this host, then ``bench`` on a
    device taken from the pool (``tfedge.search.devices``) for that step only.

    The real one is ``TrialRunner``; tests of the search itself pass a cheaper one.
    """

    def build(self, recipe, trial_dir: Path) -> Built: ...

    def bench(self, built: Built, device: Device, trial_dir: Path) -> Measured: ...


@dataclass
class Inputs:
    """What every trial of one study runs on."""

    model: str
    data: str
    eval_data: str
    target: str = "local"
    profile: str | None = None
    trust_model: bool = False
    ssh_options: dict = field(default_factory=dict)


class TrialRunner:
    """The real measurement: optimize into ``trial_dir``, then bench on a device.

    Called as ``runner(recipe, trial_dir)`` it does both on ``inputs.target``, holding the
    file ``lock`` (if any) while it benchmarks.
    """

    def __init__(self, inputs: Inputs, measure: Measure, lock: Path | None = None) -> None:
        self.inputs, self.measure, self.lock = inputs, measure, lock

    def __call__(self, recipe, trial_dir: Path) -> Measured:
        i = self.inputs
        built = self.build(recipe, trial_dir)
        device = Device(i.target, i.target, i.profile, ssh=dict(i.ssh_options))
        with exclusive(self.lock):
            return self.bench(built, device, trial_dir)

    def build(self, recipe, trial_dir: Path) -> Built:
        """Run ``recipe`` through ``tfedge.optimize`` into ``trial_dir``."""
        from tfedge.optimize.pipeline import optimize

        i = self.inputs
        result = optimize(
            i.model, recipe, i.data, i.eval_data, trial_dir, trust_model=i.trust_model
        )
        final = result.final
        score = final.accuracy if final.accuracy is not None else -(final.mse or 0.0)
        return Built(
            model=result.model,
            score=float(score),
            accuracy=final.accuracy,
            mse=final.mse,
            tflite_bytes=final.tflite_bytes,
            gzip_bytes=final.gzip_bytes,
            float32_bytes=result.stage("float32").tflite_bytes,
            seconds=result.seconds,
        )

    def bench(self, built: Built, device: Device, trial_dir: Path) -> Measured:
        """Benchmark the built model on ``device`` (``trial_dir/bench.json``)."""
        from tfedge.targets.bench import bench

        m = self.measure
        result = bench(
            built.model,
            runs=m.runs,
            warmup=m.warmup,
            min_secs=m.min_secs,
            **device.bench_options(),
        )
        (trial_dir / "bench.json").write_text(json.dumps(result.to_dict(), indent=2))
        figures = {"target": result.target, "emulated": result.emulated, "threads": result.threads}
        return built.measured(
            result.latency_us.p50 / 1000.0, result.peak_rss_mb, {**figures, "device": device.name}
        )


@contextmanager
def exclusive(lock: Path | None):
    """Hold an exclusive lock on the file ``lock`` (nothing when None)."""
    if lock is None:
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---- budgets ---------------------------------------------------------------------------------


@dataclass
class Budget:
    """One limit: what it bounds, its limit in that unit, and how it was set."""

    name: str  # latency, size, ram, bytes
    limit: float
    unit: str
    kind: str  # absolute or relative
    how: str  # e.g. "0.5 x int8 post-training p50 (1.20 ms) on local"

    def excess(self, m: Measured) -> float:
        """``value / limit - 1``: <= 0 within the budget."""
        value = {
            "latency": m.p50_ms,
            "size": m.gzip_bytes,
            "ram": m.peak_rss_mb,
            "bytes": m.tflite_bytes,
        }[self.name]
        return float(value) / self.limit - 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def budget_kind(target: str, profile) -> str:
    """``absolute`` when the figures are the profile's device's own, else ``relative``.

    The same rule as ``tfedge bench``'s budget check: emulated figures and another machine's
    figures are never compared with a device's budgets.
    """
    if profile is None:
        return "relative"
    if target.startswith("ssh://"):
        return "absolute"
    if target == "local" and profile.arch in ("native", platform.machine()):
        return "absolute"
    return "relative"


def absolute_budgets(profile) -> list[Budget]:
    """The profile's budgets that are set."""
    b, name = profile.budgets, profile.name
    found = []
    if b.target_latency_ms is not None:
        found.append(Budget("latency", b.target_latency_ms, "ms", "absolute", f"{name} target"))
    if b.max_ram_mb is not None:
        found.append(Budget("ram", b.max_ram_mb, "MB", "absolute", f"{name} peak RSS"))
    if b.max_model_bytes is not None:
        found.append(Budget("bytes", b.max_model_bytes, "B", "absolute", f"{name} .tflite"))
    return found


def relative_budgets(ratios, baseline: Measured, target: str) -> list[Budget]:
    """Latency and size budgets against the int8 post-training ``baseline`` on ``target``."""
    found = []
    if ratios.latency is not None:
        how = f"{ratios.latency:g} x int8 post-training p50 ({baseline.p50_ms:.3f} ms) on {target}"
        limit = ratios.latency * baseline.p50_ms
        found.append(Budget("latency", limit, "ms", "relative", how))
    if ratios.size is not None:
        how = f"{ratios.size:g} x float32 .tflite ({baseline.float32_bytes} B), gzip bytes"
        limit = ratios.size * baseline.float32_bytes
        found.append(Budget("size", limit, "B", "relative", how))
    return found


def excesses(budgets: list[Budget], m: Measured) -> list[float]:
    return [b.excess(m) for b in budgets]
