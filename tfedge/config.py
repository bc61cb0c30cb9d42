"""One validation layer for the host's data files: recipes, pass options, profiles, inventories.

Every block of such a file is a pydantic model deriving from ``Config``: unknown keys are
refused, types are strict (``true`` is not a number, ``"3"`` is not an integer; an integer is
a fine float), ranges and choices are declared on the fields (``Field(ge=0, le=1)``,
``Literal[...]``), so that ``model_json_schema()`` describes the file for editors.

``validate`` builds one and turns pydantic's first error into the project's typed error
(``RecipeError`` by default) in the project's words: the key path, what is wrong, and a hint
("did you mean ..." for a misspelt key or value, the allowed range for a number).

Example:
    >>> class Prune(Config):
    ...     target_sparsity: float = Field(0.5, ge=0, lt=1)
    >>> validate(Prune, {"target_sparsity": 1.5}, "passes[0] prune")
    Traceback (most recent call last):
    RecipeError: passes[0] prune: target_sparsity = 1.5 is out of range (hint: use a value
    >= 0 and < 1)

The device package keeps its own dependency-free checks (it runs on boards without pydantic).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Strict,
    ValidationError,
    WithJsonSchema,
)

from tfedge.errors import RecipeError, TfedgeError

C = TypeVar("C", bound=BaseModel)


class Config(BaseModel):
    """Base of every validated block: frozen, strict, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _names(value: Any) -> Any:
    """One name is a list of one; a YAML list becomes a tuple (the field stays hashable)."""
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, list) else value


# Layer names, glob patterns or class names: `layers: conv*` or `layers: [conv1, fc*]`.
Names = Annotated[
    tuple[str, ...],
    Strict(False),
    BeforeValidator(_names),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]


def validate(cls: type[C], data: Any, where: str, error: type[TfedgeError] = RecipeError) -> C:
    """``cls`` built from ``data`` (a mapping), or ``error`` naming ``where`` and the key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(
            f"{where}: expected a mapping of options, got {type(data).__name__}",
            "write options as `key: value` lines or `{key: value}`",
        )
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        message, hint = describe(exc.errors()[0], cls, where)
        raise error(message, hint) from None


def did_you_mean(word: str, choices: Iterable[str], kind: str) -> str:
    """A hint for an unknown ``word``: the closest of ``choices``, or all of them."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.5)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"known {kind}: {', '.join(sorted(choices))}"


def describe(err: Any, cls: type[BaseModel], where: str) -> tuple[str, str]:
    """(message, hint) for one pydantic error dict."""
    loc = tuple(err.get("loc", ()))
    path = _path(loc)
    prefix = f"{where}: " if where else ""
    kind = err.get("type", "")
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        known = _fields_at(cls, loc[:-1])
        inside = f"{_path(loc[:-1])}: " if len(loc) > 1 else ""  # e.g. "devices[2]: "
        message = f"{prefix}{inside}unknown option '{loc[-1]}'"
        return message, did_you_mean(str(loc[-1]), known, "options")
    if kind == "missing":
        return f"{prefix}{path} is required", f"add `{loc[-1]}:`"
    if kind == "literal_error":
        choices = _literal_choices(ctx.get("expected", ""))
        return (
            f"{prefix}{path} = {value!r} is not one of {', '.join(choices)}",
            did_you_mean(str(value), choices, "values"),
        )
    if kind in ("string_too_short", "string_too_long"):
        short = kind == "string_too_short"
        limit = ctx.get("min_length" if short else "max_length")
        plural = "" if limit == 1 else "s"
        hint = f"write {'at least' if short else 'at most'} {limit} character{plural}"
        return f"{prefix}{path} = {value!r} is too {'short' if short else 'long'}", hint
    if kind == "string_pattern_mismatch":
        return f"{prefix}{path} = {value!r} has a wrong form", f"match {ctx.get('pattern')}"
    if kind in _RANGE:
        return f"{prefix}{path} = {value} is out of range", _range_hint(cls, loc, ctx)
    if kind in _TYPES:
        return f"{prefix}{path} must be {_TYPES[kind]}, got {value!r}", _type_hint(kind, value)
    if kind in ("value_error", "assertion_error"):
        text = str(ctx.get("error", err.get("msg", "")))
        message, _, hint = text.partition(" (hint: ")
        return f"{prefix}{path + ': ' if path else ''}{message}", hint.rstrip(")")
    return f"{prefix}{path}: {err.get('msg', 'invalid value')}", "see the schema for this file"


_RANGE = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "too_short",
    "too_long",
}
_TYPES = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _type_hint(kind: str, value: Any = None) -> str:
    if kind == "float_type" and isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        return f"write {value.strip()} without quotes"
    return {
        "bool_type": "write true or false",
        "string_type": "write text, e.g. a layer name",
        "tuple_type": "e.g. [conv*, fc1]",
        "list_type": "write a YAML list",
        "dict_type": "write `key: value` lines",
        "model_type": "write `key: value` lines",
        "model_attributes_type": "write `key: value` lines",
    }.get(kind, "write a plain number, without quotes")


_EXPONENT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")  # '1e-4', quoted


def _path(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _fields_at(cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model reached by following ``loc`` from ``cls`` (best effort)."""
    model: Any = cls
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            continue  # a list index, or a union branch name
        model = _model_in(field.annotation)
    return list(getattr(model, "model_fields", {}))


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _range_hint(cls: type[BaseModel], loc: tuple, ctx: dict) -> str:
    """'use a value >= 0 and < 1', with both bounds of the field where it declares them."""
    bounds = dict(ctx)
    field = None
    if loc and isinstance(loc[-1], str):
        owner = _owner_of(cls, loc[:-1])
        field = getattr(owner, "model_fields", {}).get(loc[-1])
    for meta in getattr(field, "metadata", ()):
        for key in ("gt", "ge", "lt", "le", "min_length", "max_length"):
            if getattr(meta, key, None) is not None:
                bounds[key] = getattr(meta, key)
    parts = [f"{sign} {bounds[key]}" for key, sign in _SIGNS if key in bounds]
    if "min_length" in bounds or "max_length" in bounds:
        low, high = bounds.get("min_length", 0), bounds.get("max_length", "any")
        return f"give between {low} and {high} items"
    return "use a value " + " and ".join(parts) if parts else "see the schema for this file"


_SIGNS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _owner_of(cls: type[BaseModel], loc: tuple) -> Any:
    model: Any = cls
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is not None:
            model = _model_in(field.annotation)
    return model


def _literal_choices(expected: str) -> list[str]:
    """``"'a', 'b' or 'c'"`` -> ``['a', 'b', 'c']``."""
    text = expected.replace(" or ", ", ")
    return [part.strip().strip("'\"") for part in text.split(",") if part.strip()]


def json_schema(cls: type[BaseModel], title: str) -> dict:
    """The JSON Schema of ``cls`` for editors (draft 2020-12, as pydantic writes it)."""
    schema = cls.model_json_schema()
    schema["title"] = title
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
