"""The passes a recipe can name, in one explicit table.

A pass is a frozen dataclass with a ``pass_name`` and an ``apply(model, ctx)`` method (see
``tfedge.passes.base``). Adding one means writing its module and one line here; the passes
never import this module, and importing it runs nothing but the table.

Example:
    >>> build_pass("prune", {"target_sparsity": 0.75}, where="passes[0] prune")
    Prune(target_sparsity=0.75, ...)
"""

from __future__ import annotations

from tfedge.errors import RecipeError
from tfedge.passes.base import build_config, did_you_mean
from tfedge.passes.cluster import Cluster
from tfedge.passes.distill import Distill
from tfedge.passes.low_rank import LowRank
from tfedge.passes.prune import Prune
from tfedge.passes.qat import Qat

PASSES: dict[str, type] = {cls.pass_name: cls for cls in (Prune, Cluster, Qat, Distill, LowRank)}


def pass_names() -> list[str]:
    """The names recipes can use, sorted."""
    return sorted(PASSES)


def build_pass(name: str, options: dict | None, where: str = ""):
    """The pass ``name`` built from ``options``.

    Raises:
        RecipeError: unknown pass name, unknown option or a bad value, naming ``where``.
    """
    where = where or f"pass '{name}'"
    if name not in PASSES:
        raise RecipeError(f"{where}: unknown pass '{name}'", did_you_mean(name, PASSES, "passes"))
    return build_config(PASSES[name], options, where)
