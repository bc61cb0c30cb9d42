"""The passes a recipe can name, in one explicit table.

A pass is a ``PassConfig`` (a frozen pydantic model of its options) with a ``pass_name`` and
an ``apply(model, ctx)`` method (see ``tfedge.passes.base``). Adding one means writing its
module and one line here; the passes never import this module, and importing it runs
nothing but the table.

Example:
    >>> build_pass("prune", {"target_sparsity": 0.75}, where="passes[0] prune")
    Prune(target_sparsity=0.75, ...)
"""

from __future__ import annotations

import inspect
import re

from tfedge.config import did_you_mean
from tfedge.errors import RecipeError
from tfedge.passes.base import PassConfig, build_config
from tfedge.passes.channels import Channels
from tfedge.passes.cluster import Cluster
from tfedge.passes.distill import Distill
from tfedge.passes.low_rank import LowRank
from tfedge.passes.prune import Prune
from tfedge.passes.qat import Qat

PASSES: dict[str, type[PassConfig]] = {
    cls.pass_name: cls for cls in (Channels, Prune, Cluster, Qat, Distill, LowRank)
}


def pass_names() -> list[str]:
    """The names recipes can use, sorted."""
    return sorted(PASSES)


def pass_class(name: str, where: str = "") -> type[PassConfig]:
    """The class of pass ``name``; RecipeError with "did you mean" for an unknown name."""
    if name not in PASSES:
        prefix = f"{where}: " if where else ""
        raise RecipeError(f"{prefix}unknown pass '{name}'", did_you_mean(name, PASSES, "passes"))
    return PASSES[name]


def build_pass(name: str, options: dict | None, where: str = "") -> PassConfig:
    """The pass ``name`` built from ``options``.

    Raises:
        RecipeError: unknown pass name, unknown option or a bad value, naming ``where``.
    """
    where = where or f"pass '{name}'"
    return build_config(pass_class(name, where), options, where)


def passes_json_schema() -> dict:
    """The schema of a recipe's ``passes:`` list: each item one ``{name: {options}}`` mapping
    (options may be left empty) or a bare pass name."""
    entries: list[dict] = [
        {
            "type": "object",
            "properties": {name: {"anyOf": [_options_schema(cls), {"type": "null"}]}},
            "required": [name],
            "additionalProperties": False,
        }
        for name, cls in sorted(PASSES.items())
    ]
    entries.append({"enum": pass_names()})
    return {"type": "array", "items": {"anyOf": entries}}


def _options_schema(cls: type[PassConfig]) -> dict:
    """The pass's schema, each option described by its line under ``Args:`` (editors show it)."""
    schema = cls.model_json_schema()
    summary, args = _docstring(cls.__doc__ or "")
    schema.update(title=f"{cls.pass_name} options", description=summary)
    for name, text in args.items():
        if name in schema["properties"]:
            schema["properties"][name]["description"] = text
    return schema


def _docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(first paragraph, {option: its text}) of a Google-style class docstring."""
    head, _, rest = inspect.cleandoc(doc).partition("Args:")
    args: dict[str, str] = {}
    name = ""
    for line in rest.splitlines():
        match = re.match(r"^    (\w+): (.*)", line)
        if match:
            name = match[1]
            args[name] = match[2]
        elif name and line.strip():
            args[name] += " " + line.strip()
    for key, text in list(args.items()):  # "layers: a; layer_types: b" names two options
        first, _, second = text.partition("; ")
        other = re.match(r"^(\w+): (.*)", second)
        if other:
            args[key], args[other[1]] = first, other[2]
    return " ".join(head.split("\n\n")[0].split()), args
