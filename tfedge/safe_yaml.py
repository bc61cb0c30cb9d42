"""The one YAML loader of tfedge's configuration files: recipes, device profiles, inventories.

``yaml.safe_load`` builds no objects from tags, but an alias bomb ("billion laughs": nine
lists of nine aliases of the list before) is a few hundred bytes whose *expanded* tree has
hundreds of millions of nodes. PyYAML shares the aliased objects, so loading is cheap, but
anything that walks the result (validation printing a value, ``json.dumps``, a copy) expands
it and runs out of memory. This loader counts the nodes of the expanded tree before building
anything and refuses a document over :data:`MAX_NODES` nodes, over :data:`MAX_ALIASES`
aliases, nested deeper than :data:`MAX_DEPTH`, or holding a recursive alias.

Example:
    >>> load_yaml("a: [1, 2]", "recipe r.yaml", RecipeError, "check the file")
    {'a': [1, 2]}
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

from tfedge.errors import TfedgeError
from tfedge.fsutil import CONFIG_MAX_BYTES, read_text_file

MAX_NODES = 100_000
"""Nodes of the expanded document (each alias counts what it stands for)."""
MAX_ALIASES = 1_000
MAX_DEPTH = 100


class YamlLimitError(yaml.YAMLError):
    """A document over the loader's limits (one line, like ``problem`` of PyYAML's errors)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = None


class _Loader(yaml.SafeLoader):
    """SafeLoader that checks the composed node graph before constructing anything."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlLimitError(f"more than {MAX_ALIASES:,} aliases (*name)")
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlLimitError(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        check_expanded_size(node)
        return self.construct_document(node)


# YAML 1.2 floats: PyYAML (YAML 1.1) reads `1e-4` and `1e4` as text, which users write for
# learning rates. The resolver is added after 1.1's, so every other scalar reads as before.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def check_expanded_size(root: yaml.Node, limit: int = MAX_NODES) -> int:
    """The node count of ``root`` with every alias expanded; YamlLimitError over ``limit``.

    Shared nodes are counted once per reference, each computed once (memoised), so the
    check costs the size of the graph, not of its expansion.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            total = 1 + sum(sizes[id(c)] for c in _children(node))
            if total > limit:
                raise YamlLimitError(
                    f"expands to more than {limit:,} nodes (aliases of aliases: an alias bomb?)"
                )
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise YamlLimitError("an alias refers to a node that contains it (recursive alias)")
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise YamlLimitError("an alias refers to a node that contains it (recursive alias)")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(text: str, source: str, error: type[TfedgeError], hint: str) -> Any:
    """Parse ``text`` (from ``source``, e.g. ``recipe my.yaml``) safely, within the limits.

    Raises:
        ``error``: one line saying where the YAML is wrong or which limit it breaks.
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except YamlLimitError as exc:
        raise error(
            f"{source} is not a configuration tfedge loads: {exc.problem}",
            "write the values out instead of nesting aliases (*name); a configuration needs "
            "no more than a few thousand entries",
        ) from None
    except yaml.YAMLError as exc:
        raise error(f"{source} is not valid YAML{_where(exc)}: {_problem(exc)}", hint) from None
    except RecursionError:
        raise error(f"{source} is nested too deeply", hint) from None


def load_yaml_file(
    path: str | os.PathLike,
    what: str,
    error: type[TfedgeError],
    hint: str,
    max_bytes: int = CONFIG_MAX_BYTES,
) -> Any:
    """Read a configuration file (regular, small, UTF-8) and parse it with :func:`load_yaml`."""
    text = read_text_file(path, what, error, hint, max_bytes)
    return load_yaml(text, f"{what} {path}", error, hint)


def _where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 1}" if mark is not None else ""


def _problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc)
    return " ".join(str(problem).split())
