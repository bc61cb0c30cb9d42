"""Recipes round-trip, hash their normalised content, take overrides and print a JSON Schema.

No TensorFlow: everything here is validation.
"""

from __future__ import annotations

import json
import pickle
import re

import pytest

from tests.conftest import assert_one_error_line
from tfedge.errors import RecipeError
from tfedge.optimize.recipe import (
    builtin_recipes,
    dump_recipe,
    load_recipe,
    parse_recipe,
    recipe_json_schema,
)
from tfedge.passes import build_pass

EVERY_PASS = """\
# every pass, with options of every kind
schema_version: 1
name: everything
description: "all passes: the round trip's worst case"
passes:
  - distill: {student: student.keras, features: [[fc1, fc1]], alpha: 0.5, compare_alone: true}
  - channels: {keep: 0.75, round_to: 4, criterion: l2, epochs: 1}
  - low_rank: {energy: 0.95, epochs: 0, layer_types: Dense}
  - prune: {structure: "2:4", layers: [conv*, fc1], min_weights: 10}
  - cluster: {clusters: 8, preserve_sparsity: false, learning_rate: 1.0e-5}
  - qat
train: {optimizer: sgd, batch_size: 16, batchnorm: keep}
convert: {quant: int8, io: uint8}
max_accuracy_drop: 2.5
seed: 7
"""


@pytest.fixture
def every_pass(tmp_path):
    (tmp_path / "student.keras").write_bytes(b"PK")
    path = tmp_path / "every.yaml"
    path.write_text(EVERY_PASS)
    return path


def _round_trip(recipe):
    again = parse_recipe(dump_recipe(recipe), "dumped.yaml")
    assert again == recipe
    assert again.to_dict() == recipe.to_dict()
    assert again.canonical_sha256 == recipe.canonical_sha256
    assert [p.where for p in again.passes] == [p.where for p in recipe.passes]
    return again


@pytest.mark.parametrize("name", builtin_recipes())
def test_builtin_recipes_round_trip(name):
    _round_trip(load_recipe(name))


def test_a_recipe_with_every_pass_round_trips(every_pass, tmp_path):
    recipe = load_recipe(every_pass)
    assert sorted(recipe.pass_names) == [
        "channels",
        "cluster",
        "distill",
        "low_rank",
        "prune",
        "qat",
    ]
    again = _round_trip(recipe)
    assert again.passes[0].student == str(tmp_path / "student.keras")
    assert again.passes[0].features == (("fc1", "fc1"),)
    assert again.passes[1].keep == 0.75 and again.passes[1].criterion == "l2"
    assert again.passes[3].structure == "2:4" and again.passes[3].layers == ("conv*", "fc1")
    assert again.passes[2].layer_types == ("Dense",)
    assert again.convert.io == "uint8" and again.seed == 7 and again.max_accuracy_drop == 2.5


def test_equal_options_are_equal_passes_wherever_they_stand():
    alone = build_pass("prune", {"target_sparsity": 0.5})
    placed = build_pass("prune", {"target_sparsity": 0.5}, where="passes[2] prune")
    assert alone == placed and alone.where == "pass 'prune'"
    assert pickle.loads(pickle.dumps(placed)).where == "passes[2] prune"  # to the worker
    assert alone != build_pass("prune", {"target_sparsity": 0.6})


# ---- canonical hash -------------------------------------------------------------------------

PLAIN = "schema_version: 1\npasses:\n  - prune: {target_sparsity: 0.75}\n  - qat: {}\n"
SAME = [
    "# a comment\n" + PLAIN + "# another\n",
    # key order, flow vs block style, explicit defaults, int for float, a bare pass name
    "passes:\n  - prune:\n      epochs: 2\n      target_sparsity: 0.75\n"
    "      schedule: polynomial\n      initial_sparsity: 0\n"
    "  - qat\ntrain: {optimizer: adam, learning_rate: 0.001}\nconvert: {quant: int8}\n"
    "seed: 0\nschema_version: 1\n",
    PLAIN + "name: other\ndescription: labels are not content\n",
]
DIFFERENT = [
    PLAIN.replace("0.75", "0.7"),
    PLAIN + "seed: 1\n",
    PLAIN + "max_accuracy_drop: 3\n",
    PLAIN + "train: {batch_size: 64}\n",
    "schema_version: 1\npasses:\n  - prune: {target_sparsity: 0.75}\n  - qat: {epochs: 2}\n",
]


@pytest.mark.parametrize("text", SAME)
def test_canonical_hash_ignores_comments_order_defaults_and_labels(text):
    plain = parse_recipe(PLAIN, "a.yaml")
    other = parse_recipe(text, "b.yaml")
    assert other.canonical_sha256 == plain.canonical_sha256
    assert other.sha256 != plain.sha256  # the text hash still sees the difference


@pytest.mark.parametrize("text", DIFFERENT)
def test_canonical_hash_changes_with_any_setting(text):
    assert parse_recipe(text).canonical_sha256 != parse_recipe(PLAIN).canonical_sha256


# ---- overrides --------------------------------------------------------------------------------


def test_overrides_change_the_recipe_and_its_hash():
    base = load_recipe("prune-cluster-qat")
    changed = load_recipe(
        "prune-cluster-qat",
        [
            "prune.target_sparsity=0.6",
            "qat.epochs=2",
            "prune.layers=[conv*, fc1]",
            "cluster.per_channel=true",
            "train.learning_rate=0.0001",
            "convert.calib_samples=64",
            "max_accuracy_drop=3",
            "seed=5",
        ],
    )
    prune, cluster = changed.passes[0], changed.passes[1]
    assert prune.target_sparsity == 0.6 and prune.layers == ("conv*", "fc1")
    assert prune.epochs == base.passes[0].epochs  # untouched options stay
    assert cluster.per_channel is True and changed.train.learning_rate == 1e-4
    assert changed.convert.calib_samples == 64 and changed.seed == 5
    assert changed.canonical_sha256 != base.canonical_sha256
    # the text written beside a run's results is the overridden recipe, and reads back equal
    assert changed.text.startswith("# builtin:prune-cluster-qat with --set prune.target_sparsity")
    assert parse_recipe(changed.text) == changed
    # the same change written in a file hashes the same
    same = load_recipe(
        "prune-cluster-qat", ["prune.target_sparsity=0.60", "qat.epochs=2", "seed=5"]
    )
    assert load_recipe(same, ["prune.layers=[conv*, fc1]"]).canonical_sha256 != (
        same.canonical_sha256
    )


def test_a_repeated_pass_is_addressed_by_its_index(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("schema_version: 1\npasses:\n  - prune: {epochs: 1}\n  - prune\n")
    recipe = load_recipe(path, ["prune[1].epochs=3", "prune[0].target_sparsity=0.25"])
    assert [p.epochs for p in recipe.passes] == [1, 3]
    assert recipe.passes[0].target_sparsity == 0.25
    with pytest.raises(RecipeError, match="has 2 prune passes") as err:
        load_recipe(path, ["prune.epochs=3"])
    assert "prune[0].epochs" in err.value.hint
    with pytest.raises(RecipeError, match="has 2 prune pass"):
        load_recipe(path, ["prune[2].epochs=3"])


BAD_OVERRIDES = [
    ("prune.target_sparsity", "is not TARGET=VALUE", "--set PASS.KEY=VALUE"),
    ("prune..epochs=2", "is not TARGET=VALUE", "--set PASS.KEY=VALUE"),
    ("=2", "is not TARGET=VALUE", "--set PASS.KEY=VALUE"),
    ("prune=2", "names prune but no option", "--set PASS.KEY=VALUE"),
    ("prnue.epochs=2", "no pass or block 'prnue'", "did you mean 'prune'"),
    ("distill.epochs=2", "no pass 'distill'", "cluster, convert, prune, qat, train"),
    ("prune.epoch=2", "prune has no option 'epoch'", "did you mean 'epochs'"),
    ("train.optimiser=sgd", "train has no option 'optimiser'", "did you mean 'optimizer'"),
    ("max_acuracy_drop=2", "unknown key 'max_acuracy_drop'", "did you mean 'max_accuracy_drop'"),
    ("prune.layers=[a, b", "not valid YAML", "--set PASS.KEY=VALUE"),
    # the overridden recipe is validated whole, like a file
    ("prune.target_sparsity=1.5", "passes[0] prune: target_sparsity = 1.5 is out of range", "<"),
    ("qat.epochs=two", "passes[2] qat: epochs must be an integer", "plain number"),
    ("convert.quant=float16", "qat trains for int8", "drop the qat pass"),
    ("train.optimizer=adm", "train.optimizer = 'adm' is not one of", "did you mean 'adam'"),
    # a quoted number is text
    ("train.learning_rate='1e-4'", "must be a number, got '1e-4'", "write 1e-4 without quotes"),
]


@pytest.mark.parametrize(("item", "message", "hint"), BAD_OVERRIDES)
def test_bad_overrides_say_what_and_how(item, message, hint):
    with pytest.raises(RecipeError) as err:
        load_recipe("prune-cluster-qat", [item])
    assert message in err.value.message
    assert hint in err.value.hint


def test_cli_show_and_check_take_overrides(run_cli):
    shown = run_cli("recipes", "show", "int8", "--set", "convert.quant=float16", "--full")
    recipe = parse_recipe(shown.stdout)
    assert recipe.convert.quant == "float16" and recipe.train.batch_size == 32
    checked = run_cli("recipes", "check", "int8", "--json", "--set", "seed=3")
    data = json.loads(checked.stdout)
    assert data["canonical_sha256"] == load_recipe("int8", ["seed=3"]).canonical_sha256
    assert data["recipe"]["seed"] == 3
    assert_one_error_line(
        run_cli("recipes", "check", "int8", "--set", "seed", expect=1), "seed", "--set"
    )


# ---- JSON Schema --------------------------------------------------------------------------------


def test_schema_is_json_and_forbids_unknown_keys(run_cli):
    schema = json.loads(run_cli("recipes", "schema").stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["additionalProperties"] is False and schema["required"] == ["schema_version"]
    assert set(schema["properties"]) == {
        "schema_version",
        "name",
        "description",
        "passes",
        "train",
        "convert",
        "max_accuracy_drop",
        "seed",
        "ota_base",
    }
    entries = schema["properties"]["passes"]["items"]["anyOf"]
    names = {name for e in entries for name in e.get("properties", {})}
    assert names == {"channels", "prune", "cluster", "qat", "distill", "low_rank"}
    assert all(e["additionalProperties"] is False for e in entries if "properties" in e)


def _valid(schema: dict, value, root: dict | None = None) -> bool:  # noqa: C901, PLR0911
    """A JSON Schema check of the keywords the recipe schema uses (``jsonschema`` is not a
    dependency)."""
    root = root or schema
    if "$ref" in schema:
        return _valid(root["$defs"][schema["$ref"].split("/")[-1]], value, root)
    if "anyOf" in schema and not any(_valid(s, value, root) for s in schema["anyOf"]):
        return False
    if "const" in schema and value != schema["const"]:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    kind = schema.get("type")
    types = {
        "object": dict,
        "array": list,
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "null": type(None),
    }
    if kind and not isinstance(value, types[kind]):
        return False
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    for key, ok in (
        ("minimum", lambda lim: value >= lim),
        ("maximum", lambda lim: value <= lim),
        ("exclusiveMinimum", lambda lim: value > lim),
        ("exclusiveMaximum", lambda lim: value < lim),
        ("minItems", lambda lim: len(value) >= lim),
        ("maxItems", lambda lim: len(value) <= lim),
    ):
        if key in schema and not ok(schema[key]):
            return False
    if isinstance(value, dict):
        props = schema.get("properties", {})
        if any(k not in value for k in schema.get("required", ())):
            return False
        if schema.get("additionalProperties") is False and set(value) - set(props):
            return False
        return all(_valid(props[k], v, root) for k, v in value.items() if k in props)
    if isinstance(value, list):
        prefix = schema.get("prefixItems", [])
        items = schema.get("items")
        return all(
            _valid(prefix[i] if i < len(prefix) else items or {}, v, root)
            for i, v in enumerate(value)
        )
    return True


def _file(text: str):
    from tfedge.safe_yaml import load_yaml

    return load_yaml(text, "test", RecipeError, "")


@pytest.mark.parametrize("name", builtin_recipes())
def test_builtin_recipes_and_their_dumps_match_the_schema(name):
    schema = recipe_json_schema()
    recipe = load_recipe(name)
    assert _valid(schema, _file(recipe.text))
    assert _valid(schema, _file(dump_recipe(recipe)))


def test_every_pass_recipe_matches_the_schema(every_pass):
    assert _valid(recipe_json_schema(), _file(every_pass.read_text()))


SCHEMA_REJECTS = [
    "schema_version: 1\npasss: []\n",
    "passes: []\n",
    "schema_version: 2\n",
    "schema_version: 1\npasses:\n  - prnue: {}\n",
    "schema_version: 1\npasses:\n  - prune: {target_sparsity: 1.5}\n",
    "schema_version: 1\npasses:\n  - prune: {epochs: two}\n",
    "schema_version: 1\npasses:\n  - prune: {}\n    cluster: {}\n",
    "schema_version: 1\npasses:\n  - cluster: {init: kmeans}\n",
    "schema_version: 1\ntrain: {optimiser: adam}\n",
    "schema_version: 1\nconvert: {quant: int9}\n",
    "schema_version: 1\nmax_accuracy_drop: lots\n",
]


@pytest.mark.parametrize("text", SCHEMA_REJECTS)
def test_the_schema_rejects_what_the_loader_rejects(text):
    assert not _valid(recipe_json_schema(), _file(text))
    with pytest.raises(RecipeError):
        parse_recipe(text)


def test_schema_help_names_the_editor_hook(run_cli):
    out = run_cli("recipes", "schema", "--help").stdout
    assert re.search(r"yaml-language-server: \$schema=", out)


def test_every_option_is_described_for_the_editor():
    """Each pass option's description comes from its docstring's ``Args:`` line."""
    schema = recipe_json_schema()
    blocks = [schema["$defs"]["TrainConfig"], schema["$defs"]["ConvertConfig"], schema]
    for entry in schema["properties"]["passes"]["items"]["anyOf"]:
        for options in entry.get("properties", {}).values():
            blocks.append(options["anyOf"][0])
    undescribed = [
        f"{block['title']}.{name}"
        for block in blocks
        for name, prop in block["properties"].items()
        if not prop.get("description")
    ]
    assert len(blocks) == 9 and undescribed == []
    prune = blocks[
        3 + sorted(["channels", "cluster", "distill", "low_rank", "prune", "qat"]).index("prune")
    ]
    assert prune["properties"]["min_weights"]["description"].startswith("prune only kernels")


def test_exponent_numbers_are_numbers_as_in_yaml_1_2():
    """PyYAML (YAML 1.1) reads `1e-4` as text; learning rates are written that way."""
    text = "schema_version: 1\npasses: [{prune: {target_sparsity: 5e-1}}]\n"
    recipe = parse_recipe(text + "train: {learning_rate: 1e-4}")
    assert recipe.train.learning_rate == 1e-4 and recipe.passes[0].target_sparsity == 0.5
    assert load_recipe("int8", ["train.learning_rate=3E-5"]).train.learning_rate == 3e-5
    assert parse_recipe(text + "name: 1e3x").name == "1e3x"  # not a number: still text
