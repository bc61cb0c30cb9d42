"""tfedge: compress, convert, benchmark and ship TensorFlow Lite models to edge devices.

The public API; every function here also has a ``tfedge`` CLI command. Importing tfedge
does not import TensorFlow: each function imports it when it needs it.

Example:
    >>> import tfedge
    >>> tfedge.convert("model.keras", "model.tflite", calib="train.npz").full_integer
    True
"""

from __future__ import annotations

__version__ = "0.1.0"

# Binding the functions over the same-named subpackages is deliberate: ``tfedge.convert``
# is the function; the package ``tfedge.convert`` stays reachable through ``sys.modules``
# and ``from tfedge.convert import ...``.
from tfedge.analyze import (
    CompareResult,
    EvalResult,
    KerasReport,
    TfliteReport,
    compare,
    evaluate,
    inspect,
)
from tfedge.convert import ConvertResult, convert
from tfedge.optimize import OptimizeResult, optimize
from tfedge.targets import BenchResult, bench

__all__ = [
    "convert",
    "inspect",
    "evaluate",
    "compare",
    "bench",
    "optimize",
    "ConvertResult",
    "TfliteReport",
    "KerasReport",
    "EvalResult",
    "CompareResult",
    "BenchResult",
    "OptimizeResult",
]
