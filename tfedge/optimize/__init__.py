"""``optimize``: a YAML recipe of passes run in order, then a verified conversion.

Example:
    >>> from tfedge.optimize import optimize
    >>> optimize("model.keras", "out/", recipe="prune-cluster-qat", train="train.npz").accuracy
    0.9861
"""

from __future__ import annotations

from tfedge.optimize.pipeline import OptimizeResult, optimize
from tfedge.optimize.plan import OptimizePlan, format_plan, plan_optimize

__all__ = ["OptimizePlan", "OptimizeResult", "format_plan", "optimize", "plan_optimize"]
