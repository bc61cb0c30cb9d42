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

# Binding the functions over the same-named submodules is deliberate: ``tfedge.convert``
# is the function, ``tfedge.convert`` the module stays reachable through ``sys.modules``.
from .bench import BenchResult, bench  # noqa: E402
from .convert import ConvertResult, convert  # noqa: E402
from .evaluate import CompareResult, EvalResult, compare, evaluate  # noqa: E402
from .inspect import KerasReport, TfliteReport, inspect  # noqa: E402
from .pipeline import OptimizeResult, optimize  # noqa: E402

__all__ = [
    "convert", "inspect", "evaluate", "compare", "bench", "optimize",
    "ConvertResult", "TfliteReport", "KerasReport", "EvalResult", "CompareResult", "BenchResult", "OptimizeResult",
]
