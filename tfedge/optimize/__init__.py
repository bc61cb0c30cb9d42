"""``optimize``: a YAML recipe of passes run in order, then a verified conversion.

Example:
    >>> from tfedge.optimize import optimize
    >>> optimize("model.keras", "out/", recipe="prune-cluster-qat", train="train.npz").accuracy
    0.9861
"""

from __future__ import annotations

from tfedge.optimize.pipeline import OptimizeResult, optimize

__all__ = ["OptimizeResult", "optimize"]
