"""Reports on models: ``inspect`` and ``evaluate``.

``inspect`` shows the structure, the full-integer check and the compression table;
``evaluate`` the accuracy or error on data, and ``compare`` two models on the same data.
"""

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
