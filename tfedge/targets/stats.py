"""Latency statistics, computed the way TFLite's ``benchmark_model`` does (population std).

The device script computes the same numbers itself (it cannot import tfedge); this module
reads them back into a typed value and combines results on the host.

Example:
    >>> s = LatencyStats.from_samples([100.0, 110.0, 120.0])
    >>> s.count, s.p50, round(s.std, 2)
    (3, 110.0, 8.16)
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import numpy as np

FIELDS = ("count", "min", "max", "mean", "std", "p50", "p90", "p99")


@dataclass(frozen=True)
class LatencyStats:
    """Latency over ``count`` runs, in microseconds."""

    count: int
    min: float
    max: float
    mean: float
    std: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def from_samples(cls, samples) -> "LatencyStats":
        a = np.asarray(samples, dtype=np.float64)
        if a.size == 0:
            raise ValueError("no latency samples")
        p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
        return cls(
            int(a.size),
            float(a.min()),
            float(a.max()),
            float(a.mean()),
            float(a.std()),
            p50,
            p90,
            p99,
        )

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyStats":
        missing = [f for f in FIELDS if f not in data]
        if missing:
            raise ValueError(f"latency report lacks {', '.join(missing)}")
        return cls(int(data["count"]), *(float(data[f]) for f in FIELDS[1:]))

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def p50_ms(self) -> float:
        return self.p50 / 1000.0


def speedup(baseline_us: float, candidate_us: float) -> float:
    """How many times faster ``candidate`` is than ``baseline`` (>1 means faster)."""
    if candidate_us <= 0:
        raise ValueError("latency must be positive")
    return baseline_us / candidate_us


def median(values) -> float:
    return float(statistics.median(values))
