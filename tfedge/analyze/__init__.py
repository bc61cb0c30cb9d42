"""Reports on models: ``inspect`` (structure, full-integer check, compression table) and ``evaluate``."""

from __future__ import annotations

from tfedge.analyze.evaluate import CompareResult, EvalResult, compare, evaluate
from tfedge.analyze.inspect import KerasReport, TfliteReport, inspect

__all__ = [
    "CompareResult",
    "EvalResult",
    "KerasReport",
    "TfliteReport",
    "compare",
    "evaluate",
    "inspect",
]
