"""Recipes: YAML files listing compression passes, validated whole before anything trains.

A recipe names its passes in order, how to train and how to convert. Unknown passes or
keys, bad values and orders that would undo earlier work are RecipeErrors, with a
"did you mean" where one fits. Built-in recipes ship in ``tfedge/optimize/recipes/`` and are used by
name.

Example:
    >>> recipe = load_recipe("prune-cluster-qat")
    >>> [p.pass_name for p in recipe.passes]
    ['prune', 'cluster', 'qat']

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
from dataclasses import dataclass, field
from pathlib import Path

from tfedge.errors import RecipeError
from tfedge.passes.base import (
    TrainConfig,
    build_config,
    check_choice,
    check_number,
    did_you_mean,
)
from tfedge.passes.registry import build_pass

SCHEMA_VERSION = 1
RECIPE_DIR = Path(__file__).parent / "recipes"
TOP_KEYS = (
    "schema_version",
    "name",
    "description",
    "passes",
    "train",
    "convert",
    "max_accuracy_drop",
    "seed",
)
QUANT_MODES = ("int8", "int16x8", "float16", "dynamic", "none")
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


@dataclass(frozen=True)
class ConvertConfig:
    """The recipe's ``convert:`` block, passed to ``tfedge.convert``."""

    section = "convert"
    quant: str = "int8"
    io: str | None = None
    calib_samples: int = 256

    def __post_init__(self):
        check_choice(self, "quant", QUANT_MODES)
        if self.io is not None:
            check_choice(self, "io", ("int8", "uint8", "int16", "float32"))
        check_number(self, "calib_samples", 1, 1 << 20, integer=True)


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: passes built, settings checked, its text and hash kept."""

    name: str
    source: str
    text: str
    passes: tuple = ()
    train: TrainConfig = field(default_factory=TrainConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    max_accuracy_drop: float | None = None
    seed: int = 0
    description: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def pass_names(self) -> list[str]:
        return [p.pass_name for p in self.passes]


def builtin_recipes() -> list[str]:
    """Names of the recipes that ship with tfedge."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path) -> Recipe:
    """Load and validate a recipe file, or a built-in recipe by name."""
    if isinstance(name_or_path, Recipe):
        return name_or_path
    path = Path(name_or_path)
    if _exists(path):
        return parse_recipe(_read(path), str(path), path.parent)
    if str(name_or_path) in builtin_recipes():
        builtin = RECIPE_DIR / f"{name_or_path}.yaml"
        return parse_recipe(_read(builtin), f"builtin:{name_or_path}", builtin.parent)
    raise RecipeError(
        f"no recipe file or built-in recipe named '{name_or_path}'",
        did_you_mean(str(name_or_path), builtin_recipes(), "built-in recipes")
        + "; or give the path of a .yaml file",
    )


def parse_recipe(text: str, source: str = "<recipe>", base_dir: Path | str = ".") -> Recipe:
    """Validate recipe ``text`` whole; RecipeError names the first problem."""
    data = _yaml(text, source)
    try:
        return _build(data, text, source, Path(base_dir))
    except RecipeError as err:
        raise RecipeError(f"recipe {source}: {err.message}", err.hint) from None


def _build(data: dict, text: str, source: str, base_dir: Path) -> Recipe:
    _check_top(data)
    passes = tuple(_build_pass(i, entry, base_dir) for i, entry in enumerate(_pass_list(data)))
    recipe = Recipe(
        name=str(data.get("name") or Path(source.replace("builtin:", "")).stem),
        source=source,
        text=text,
        passes=passes,
        train=build_config(TrainConfig, data.get("train"), "train"),
        convert=build_config(ConvertConfig, data.get("convert"), "convert"),
        max_accuracy_drop=_drop(data.get("max_accuracy_drop")),
        seed=_seed(data.get("seed", 0)),
        description=str(data.get("description") or ""),
    )
    _check_order(recipe)
    return recipe


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
    for key in data:
        if key not in TOP_KEYS:
            raise RecipeError(f"unknown key '{key}'", did_you_mean(str(key), TOP_KEYS, "keys"))
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RecipeError(
            f"schema_version must be {SCHEMA_VERSION}, got {version!r}",
            f"add `schema_version: {SCHEMA_VERSION}` at the top",
        )


def _pass_list(data: dict) -> list:
    passes = data.get("passes") or []
    if not isinstance(passes, list):
        raise RecipeError("passes must be a list", "write each pass as `- name: {options}`")
    return passes


def _build_pass(index: int, entry, base_dir: Path):
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


def _drop(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise RecipeError(
            f"max_accuracy_drop must be a number of percentage points from 0 to 100, got {value!r}",
            "e.g. max_accuracy_drop: 1.5",
        )
    return float(value)


def _seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RecipeError(f"seed must be a non-negative integer, got {value!r}", "e.g. seed: 0")
    return value


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
