"""Recipes: YAML files listing compression passes, validated whole before anything trains.

A recipe names its passes in order, how to train and how to convert. Every block is a
pydantic model (``tfedge.config``): unknown passes or keys, bad values and orders that would
undo earlier work are RecipeErrors naming the key path, with a "did you mean" where one fits.
Built-in recipes ship in ``tfedge/optimize/recipes/`` and are used by name.

A loaded recipe dumps back to YAML (``dump_recipe``: every option, defaults filled in) and
loads again to an equal recipe; ``canonical_sha256`` hashes that normalised content, so
comments, key order and spelt-out defaults do not change it. ``load_recipe(..., overrides)``
changes single options (``prune.target_sparsity=0.6``) before the recipe is validated.

Example:
    >>> recipe = load_recipe("prune-cluster-qat", ["prune.target_sparsity=0.6"])
    >>> [p.pass_name for p in recipe.passes], recipe.passes[0].target_sparsity
    (['prune', 'cluster', 'qat'], 0.6)

    schema_version: 1
    passes:
      - prune: {target_sparsity: 0.75, epochs: 2}
      - cluster: {clusters: 16, epochs: 1}
      - qat: {epochs: 1}
    train: {optimizer: adam, learning_rate: 0.001, batch_size: 32, validation_split: 0.1}
    convert: {quant: int8}
    max_accuracy_drop: 1.5      # percentage points against the float model, per stage
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from tfedge.config import Config, did_you_mean, json_schema, validate
from tfedge.errors import RecipeError
from tfedge.optimize.ota_base import OtaBaseConfig, resolve_paths
from tfedge.passes.base import PassConfig, TrainConfig
from tfedge.passes.registry import PASSES, build_pass, passes_json_schema

SCHEMA_VERSION = 1
RECIPE_DIR = Path(__file__).parent / "recipes"
UNDOES = {  # pass -> earlier passes whose effect it would undo
    "prune": {"cluster": "pruning a clustered model breaks its clusters; put prune before cluster"},
    "distill": {
        "prune": "distillation trains a new dense student",
        "cluster": "distillation trains a new student",
    },
    "low_rank": {
        "prune": "the SVD factors are dense",
        "cluster": "the SVD factors are not clustered",
    },
}
FILE_OPTIONS = ("student", "teacher")
LABELS = ("name", "description")  # name the recipe; not part of its canonical hash
SET_HINT = "use --set PASS.KEY=VALUE (e.g. prune.target_sparsity=0.6), train.KEY=VALUE, "
SET_HINT += "convert.KEY=VALUE or a top-level KEY=VALUE"


class ConvertConfig(Config):
    """The recipe's ``convert:`` block, passed to ``tfedge.convert``."""

    quant: Literal["int8", "int16x8", "float16", "dynamic", "none"] = Field(
        default="int8", description="quantization of the .tflite (as `tfedge convert --quant`)"
    )
    io: Literal["int8", "uint8", "int16", "float32"] | None = Field(
        default=None, description="type of the model's inputs and outputs; default: the quant's"
    )
    calib_samples: int = Field(
        default=256, ge=1, le=1 << 20, description="training samples that calibrate int8"
    )
    precision: dict[str, Literal["int16", "float"]] = Field(
        default_factory=dict,
        description="per Keras layer of an int8 model: int16 activations (int8 weights) or "
        "float32; the rest int8 (as `tfedge convert --int16 / --float`)",
    )

    @model_validator(mode="after")
    def _precision_is_for_int8(self) -> ConvertConfig:
        if self.precision and (self.quant != "int8" or self.io not in (None, "int8")):
            raise ValueError(
                f"precision applies to quant int8 with io int8, not quant {self.quant}"
                + (f" io {self.io}" if self.io else "")
                + " (hint: use quant: int8, or drop precision)"
            )
        return self

    def to_dict(self) -> dict:
        data = self.model_dump(mode="json")
        if not data["precision"]:  # the default: a recipe from before precision hashes the same
            del data["precision"]
        return data


class Recipe(Config):
    """A validated recipe: the file's blocks, with each pass built; its source and text kept.

    ``passes`` holds the built passes (``recipe.passes[0].target_sparsity``); in the file
    each is a one-key mapping ``- prune: {options}``, which is what the JSON Schema says.
    """

    model_config = ConfigDict(allow_inf_nan=False, title="tfedge recipe")

    schema_version: Literal[1] = Field(description="always 1")
    name: str = Field(default="", description="default: the file's name without .yaml")
    description: str = Field(default="", description="one line for `tfedge recipes list`")
    passes: tuple[PassConfig, ...] = ()  # the schema is passes_json_schema(): see below
    train: TrainConfig = Field(
        default=TrainConfig(), description="how every fine-tuning run trains"
    )
    convert: ConvertConfig = Field(
        default=ConvertConfig(), description="how each stage is converted to .tflite"
    )
    max_accuracy_drop: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description="percentage points a stage may lose against the float model",
    )
    seed: int = Field(default=0, ge=0, description="seed of every random choice")
    ota_base: OtaBaseConfig | None = Field(
        default=None,
        description="the .tflite devices run now: keep the delta to it small (calibration, "
        "frozen layers; see tfedge.optimize.ota_base)",
    )
    _source: str = PrivateAttr("<recipe>")
    _text: str = PrivateAttr("")

    @property
    def source(self) -> str:
        """The file it came from, or ``builtin:NAME``."""
        return self._source

    @property
    def text(self) -> str:
        """The file's text; with overrides, the dumped recipe they produced."""
        return self._text

    @property
    def sha256(self) -> str:
        """sha256 of ``text`` (the recipe.yaml written beside a run's results)."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def canonical_sha256(self) -> str:
        """sha256 of the normalised content: defaults filled in, key order, comments, name and
        description irrelevant. Two recipes that run the same have the same hash."""
        content = {k: v for k, v in self.to_dict().items() if k not in LABELS}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    @property
    def pass_names(self) -> list[str]:
        return [p.pass_name for p in self.passes]

    def to_dict(self) -> dict:
        """The recipe as a file would hold it, every option spelt out (JSON/YAML values)."""
        data = self.model_dump(mode="json", exclude={"passes"})
        data["passes"] = [{p.pass_name: p.to_dict()} for p in self.passes]
        data["convert"] = self.convert.to_dict()
        fields = [k for k in type(self).model_fields if k != "ota_base" or self.ota_base]
        return {key: data[key] for key in fields}

    def __eq__(self, other: object) -> bool:  # the content, not where it was read from
        return isinstance(other, Recipe) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.canonical_sha256)


def dump_recipe(recipe: Recipe) -> str:
    """``recipe`` as YAML that ``parse_recipe`` reads back to an equal recipe.

    Every option is spelt out; each pass's options, ``train`` and ``convert`` on one line.
    """
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(
        _Flow, lambda d, m: d.represent_mapping("tag:yaml.org,2002:map", m, flow_style=True)
    )
    data = recipe.to_dict()
    data["passes"] = [{n: _Flow(o) for n, o in entry.items()} for entry in data["passes"]]
    data["train"], data["convert"] = _Flow(data["train"]), _Flow(data["convert"])
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=100)


class _Flow(dict):
    """A mapping written on one line, ``{key: value, ...}``."""


def recipe_json_schema() -> dict:
    """JSON Schema of a recipe file, for editors (``tfedge recipes schema``).

    ``passes`` is described as the file writes it (a list of ``{name: {options}}``), built
    here rather than when the module is imported.
    """
    schema = json_schema(Recipe, "tfedge recipe")
    schema["properties"]["passes"] = {
        **passes_json_schema(),
        "default": [],
        "description": "the passes in order, each `- name: {options}`",
    }
    schema["$defs"].pop("PassConfig", None)
    return schema


def builtin_recipes() -> list[str]:
    """Names of the recipes that ship with tfedge."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path, overrides: Sequence[str] = ()) -> Recipe:
    """Load and validate a recipe file, or a built-in recipe by name.

    Args:
        name_or_path: a file, a built-in recipe's name, or a ``Recipe``.
        overrides: ``PASS.KEY=VALUE`` (``prune.target_sparsity=0.6``; ``prune[1].epochs=2``
            for the second prune pass), ``train.KEY=VALUE``, ``convert.KEY=VALUE`` or a
            top-level ``KEY=VALUE``; VALUE is YAML (``0.6``, ``true``, ``[conv*, fc1]``).
            The recipe they produce is validated whole, like a file.
    """
    if isinstance(name_or_path, Recipe):
        if not overrides:
            return name_or_path
        return _with_overrides(name_or_path.to_dict(), overrides, name_or_path.source, Path("."))
    path = Path(name_or_path)
    if _exists(path):
        return parse_recipe(_read(path), str(path), path.parent, overrides)
    if str(name_or_path) in builtin_recipes():
        builtin = RECIPE_DIR / f"{name_or_path}.yaml"
        return parse_recipe(_read(builtin), f"builtin:{name_or_path}", builtin.parent, overrides)
    raise RecipeError(
        f"no recipe file or built-in recipe named '{name_or_path}'",
        did_you_mean(str(name_or_path), builtin_recipes(), "built-in recipes")
        + "; or give the path of a .yaml file",
    )


def parse_recipe(
    text: str,
    source: str = "<recipe>",
    base_dir: Path | str = ".",
    overrides: Sequence[str] = (),
) -> Recipe:
    """Validate recipe ``text`` whole (after ``overrides``); RecipeError names the first problem."""
    data = _yaml(text, source)
    if overrides:
        return _with_overrides(data, overrides, source, Path(base_dir))
    return _validated(data, text, source, Path(base_dir))


def _with_overrides(data: dict, overrides: Sequence[str], source: str, base_dir: Path) -> Recipe:
    for item in overrides:
        apply_override(data, item)
    recipe = _validated(data, "", source, base_dir)
    listed = " ".join(f"--set {item}" for item in overrides).replace("\n", " ")
    text = f"# {source} with {listed}\n" + dump_recipe(recipe)
    recipe._text = text
    return recipe


def _validated(data: dict, text: str, source: str, base_dir: Path) -> Recipe:
    try:
        recipe = _build(data, source, base_dir)
    except RecipeError as err:
        raise RecipeError(f"recipe {source}: {err.message}", err.hint) from None
    recipe._source, recipe._text = source, text
    return recipe


def _build(data: dict, source: str, base_dir: Path) -> Recipe:
    _check_top(data)
    top = {k: v for k, v in data.items() if k != "passes" and not _empty_block(k, v)}
    top.setdefault("name", Path(source.replace("builtin:", "")).stem)
    recipe = validate(Recipe, top, "")
    passes = tuple(_build_pass(i, entry, base_dir) for i, entry in enumerate(_pass_list(data)))
    recipe = recipe.model_copy(update={"passes": passes})
    if recipe.ota_base is not None:
        recipe = recipe.model_copy(update={"ota_base": resolve_paths(recipe.ota_base, base_dir)})
    _check_order(recipe)
    return recipe


def _empty_block(key: str, value: Any) -> bool:
    """``train:`` or ``description:`` left empty means the defaults."""
    return value is None and key in ("name", "description", "train", "convert", "ota_base")


def _yaml(text: str, source: str) -> dict:
    from tfedge.safe_yaml import load_yaml

    data = load_yaml(
        text, f"recipe {source}", RecipeError, "check the indentation and the `key: value` pairs"
    )
    if not isinstance(data, dict):
        raise RecipeError(
            f"recipe {source} must be a mapping with schema_version and passes",
            "start from `tfedge recipes show prune-cluster-qat`",
        )
    return data


def _check_top(data: dict) -> None:
    keys = list(Recipe.model_fields)
    for key in data:
        if key not in keys:
            raise RecipeError(f"unknown key '{key}'", did_you_mean(str(key), keys, "keys"))
    version = data.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise RecipeError(
            f"schema_version must be {SCHEMA_VERSION}, got {version!r}",
            f"add `schema_version: {SCHEMA_VERSION}` at the top",
        )


def _pass_list(data: dict) -> list:
    passes = data.get("passes") or []
    if not isinstance(passes, list):
        raise RecipeError("passes must be a list", "write each pass as `- name: {options}`")
    return passes


def _build_pass(index: int, entry, base_dir: Path) -> PassConfig:
    if isinstance(entry, str):
        entry = {entry: {}}
    if not isinstance(entry, dict) or len(entry) != 1:
        raise RecipeError(
            f"passes[{index}] must be one `name: {{options}}` mapping, got {entry!r}",
            "e.g. `- prune: {target_sparsity: 0.75}`",
        )
    ((name, options),) = entry.items()
    options = _resolve_files(
        dict(options or {}) if isinstance(options, dict) else options, base_dir, index, name
    )
    return build_pass(str(name), options, where=f"passes[{index}] {name}")


def _resolve_files(options, base_dir: Path, index: int, name: str):
    if not isinstance(options, dict):
        return options
    for key in FILE_OPTIONS:
        if isinstance(options.get(key), str):
            try:
                path = (base_dir / options[key]).resolve()
                found = path.exists()
            except (OSError, RuntimeError):  # a name over 255 bytes, a symlink loop
                path, found = base_dir / options[key], False
            if not found:
                raise RecipeError(
                    f"passes[{index}] {name}: {key} file {path} does not exist",
                    "paths are relative to the recipe file",
                )
            options[key] = str(path)
    return options


def _check_order(recipe: Recipe) -> None:
    names = recipe.pass_names
    if "qat" in names and names.index("qat") != len(names) - 1:
        raise RecipeError(
            f"qat must be the last pass (order: {' -> '.join(names)})",
            "tfmot cannot strip QAT wrappers: move qat to the end",
        )
    if "qat" in names and recipe.convert.precision:
        raise RecipeError(
            "convert.precision re-quantizes the float model, but qat trains int8 ranges",
            "drop the qat pass, or drop convert.precision",
        )
    if "qat" in names and recipe.convert.quant != "int8":
        raise RecipeError(
            f"qat trains for int8, but convert.quant is {recipe.convert.quant}",
            "use convert: {quant: int8}, or drop the qat pass",
        )
    for i, name in enumerate(names):
        for earlier in names[:i]:
            if earlier in UNDOES.get(name, {}):
                raise RecipeError(
                    f"{name} after {earlier} would undo it: {UNDOES[name][earlier]}",
                    f"put {name} before {earlier}",
                )


# ---- overrides (--set) --------------------------------------------------------------------

BLOCKS: dict[str, type[Config]] = {
    "train": TrainConfig,
    "convert": ConvertConfig,
    "ota_base": OtaBaseConfig,
}

_TARGET = re.compile(
    r"^(?P<head>[A-Za-z_][\w-]*)(?:\[(?P<index>\d+)\])?(?:\.(?P<key>[A-Za-z_]\w*))?$"
)


def apply_override(data: dict, item: str) -> None:
    """Set one ``TARGET=VALUE`` in the raw recipe ``data`` (a mapping read from YAML).

    Raises:
        RecipeError: a malformed override, or a pass or key the recipe does not have.
    """
    from tfedge.safe_yaml import load_yaml

    target, equals, raw = str(item).partition("=")
    match = _TARGET.match(target.strip())
    if not equals or match is None:
        raise RecipeError(f"override '{item}' is not TARGET=VALUE", SET_HINT)
    value = load_yaml(raw.strip() or "null", f"override '{item}'", RecipeError, SET_HINT)
    head, index, key = match["head"], match["index"], match["key"]
    if key is None:
        _set_top(data, item, head, value, index)
    elif head in BLOCKS and index is None:
        _set_block(data, item, head, key, value)
    else:
        _set_pass(data, item, head, None if index is None else int(index), key, value)


def _set_top(data: dict, item: str, key: str, value: Any, index: str | None) -> None:
    keys = [k for k in Recipe.model_fields if k != "passes" and k not in BLOCKS]
    if key in PASSES or key in BLOCKS:
        raise RecipeError(f"override '{item}' names {key} but no option", SET_HINT)
    if key not in keys or index is not None:
        raise RecipeError(
            f"override '{item}': unknown key '{key}'",
            did_you_mean(key, keys + ["PASS.KEY", "train.KEY", "convert.KEY"], "keys"),
        )
    data[key] = value


def _set_block(data: dict, item: str, block: str, key: str, value: Any) -> None:
    cls = BLOCKS[block]
    if key not in cls.model_fields:
        raise RecipeError(
            f"override '{item}': {block} has no option '{key}'",
            did_you_mean(key, cls.model_fields, "options"),
        )
    if block == "ota_base" and isinstance(value, str) and key in ("model", "calibration_data"):
        value = str(Path(value).resolve())  # a path on the command line: from the current folder
    current = data.get(block)
    data[block] = {**(current if isinstance(current, dict) else {}), key: value}


def _set_pass(data: dict, item: str, name: str, index: int | None, key: str, value: Any) -> None:
    entries: list = data["passes"] if isinstance(data.get("passes"), list) else []
    where = [i for i, entry in enumerate(entries) if _entry_name(entry) == name]
    if not where:
        present = sorted({str(_entry_name(e)) for e in entries} | {"train", "convert"})
        hint = did_you_mean(name, present, "passes and blocks of this recipe")
        what = "pass" if name in PASSES else "pass or block"
        raise RecipeError(f"override '{item}': the recipe has no {what} '{name}'", hint)
    if index is None and len(where) > 1:
        raise RecipeError(
            f"override '{item}': the recipe has {len(where)} {name} passes "
            f"(passes[{'], passes['.join(map(str, where))}])",
            f"say which, counting from 0: {name}[0].{key}=... or {name}[1].{key}=...",
        )
    if index is not None and index >= len(where):
        raise RecipeError(
            f"override '{item}': the recipe has {len(where)} {name} pass(es)",
            f"count from 0: {name}[0] is the first",
        )
    fields = PASSES[name].model_fields
    if key not in fields:
        raise RecipeError(
            f"override '{item}': {name} has no option '{key}'",
            did_you_mean(key, fields, "options"),
        )
    if isinstance(value, str) and key in FILE_OPTIONS:
        value = str(Path(value).resolve())  # a path on the command line: from the current folder
    position = where[index or 0]
    entry = entries[position]
    options = ({} if isinstance(entry, str) else entry[name]) or {}
    if isinstance(options, dict):  # else validation reports the malformed options
        entries[position] = {name: {**options, key: value}}


def _entry_name(entry: Any) -> Any:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and len(entry) == 1:
        return next(iter(entry))
    return None


# ---- files --------------------------------------------------------------------------------


def _exists(path: Path) -> bool:
    """Whether ``path`` names something on disk (a FIFO or a folder too: _read refuses it)."""
    try:
        return path.exists() and (path.suffix in (".yaml", ".yml") or not path.is_dir())
    except OSError:  # e.g. a name over 255 bytes: _read says so
        return True


def _read(path: Path) -> str:
    from tfedge.fsutil import read_text_file

    return read_text_file(
        path, "recipe", RecipeError, "give the path of a recipe .yaml file (UTF-8 text)"
    )
