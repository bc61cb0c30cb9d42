"""Recipes are validated whole before anything trains.

TensorFlow is needed only where a recipe meets a model.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import assert_one_error_line
from tfedge.errors import RecipeError
from tfedge.optimize.recipe import builtin_recipes, load_recipe, parse_recipe

ISSUE_EXAMPLE = """
schema_version: 1
passes:
  - prune: {target_sparsity: 0.75, epochs: 2}
  - cluster: {clusters: 16, epochs: 1}
  - qat: {epochs: 1}
convert: {quant: int8}
"""


def test_issue_example_shape_is_accepted():
    recipe = parse_recipe(ISSUE_EXAMPLE)
    assert recipe.pass_names == ["prune", "cluster", "qat"]
    assert recipe.passes[0].target_sparsity == 0.75 and recipe.passes[1].clusters == 16
    assert recipe.train.optimizer == "adam" and recipe.train.batch_size == 32  # defaults
    assert len(recipe.sha256) == 64


@pytest.mark.parametrize(
    "name", ["int8", "prune-cluster-qat", "distill-lowrank-int8", "max-compress"]
)
def test_builtin_recipes_load_by_name(name):
    assert name in builtin_recipes()
    recipe = load_recipe(name)
    assert recipe.source == f"builtin:{name}" and recipe.convert.quant == "int8"


def test_recipe_file_and_student_path_resolved_next_to_it(tmp_path):
    (tmp_path / "student.keras").write_bytes(b"PK")
    path = tmp_path / "r.yaml"
    path.write_text(
        "schema_version: 1\npasses:\n  - distill: {student: student.keras, epochs: 1}\n"
    )
    assert load_recipe(path).passes[0].student == str(tmp_path / "student.keras")


BAD = [
    ("passes:\n  - prune: {}\n", "schema_version"),
    ("schema_version: 1\npasses:\n  - prnue: {}\n", "did you mean 'prune'"),
    (
        "schema_version: 1\npasses:\n  - prune: {target_sparsty: 0.5}\n",
        "did you mean 'target_sparsity'",
    ),
    ("schema_version: 1\npasss: []\n", "did you mean 'passes'"),
    ("schema_version: 1\npasses:\n  - prune: {target_sparsity: 1.5}\n", "target_sparsity"),
    ("schema_version: 1\npasses:\n  - prune: {epochs: two}\n", "epochs must be an integer"),
    ("schema_version: 1\npasses:\n  - prune: {structure: 2:4}\n", "quote it"),
    ("schema_version: 1\npasses:\n  - prune: {min_weights: -1}\n", "min_weights"),
    ("schema_version: 1\npasses:\n  - cluster: {clusters: 1}\n", "clusters"),
    ("schema_version: 1\npasses:\n  - cluster: {init: kmeans}\n", "did you mean 'kmeans++'"),
    ("schema_version: 1\npasses:\n  - qat: {}\n  - prune: {}\n", "qat must be the last pass"),
    ("schema_version: 1\npasses:\n  - cluster: {}\n  - prune: {}\n", "prune after cluster"),
    ("schema_version: 1\npasses:\n  - prune: {}\n  - low_rank: {}\n", "low_rank after prune"),
    ("schema_version: 1\npasses:\n  - qat: {}\nconvert: {quant: float16}\n", "qat trains for int8"),
    ("schema_version: 1\npasses:\n  - low_rank: {energy: 0.9, param_ratio: 0.5}\n", "not both"),
    ("schema_version: 1\npasses:\n  - distill: {student: missing.keras}\n", "does not exist"),
    ("schema_version: 1\ntrain: {optimiser: adam}\n", "did you mean 'optimizer'"),
    ("schema_version: 1\ntrain: {learning_rate: -1}\n", "learning_rate"),
    ("schema_version: 1\nmax_accuracy_drop: lots\n", "max_accuracy_drop"),
    ("schema_version: 1\npasses: [prune: {a: 1}, 3]\n", "unknown option 'a'"),
    ("schema_version: 1\npasses:\n  - prune: {target_sparsity: 0.5\n", "not valid YAML"),
    # rules across options, and values pydantic's strict types refuse
    ("schema_version: 1\npasses:\n  - prune: {initial_sparsity: 0.5}\n", "must be below"),
    (
        'schema_version: 1\npasses:\n  - prune: {structure: "2:4", block_size: [1, 4]}\n',
        "block_size and structure 2:4 cannot be combined",
    ),
    ("schema_version: 1\npasses:\n  - prune: {block_size: [4]}\n", "two positive integers"),
    ("schema_version: 1\npasses:\n  - prune: {target_sparsity: .nan}\n", "finite number"),
    ("schema_version: 1\npasses:\n  - qat: {epochs: true}\n", "epochs must be an integer"),
    ("schema_version: 1\npasses:\n  - cluster: {per_channel: 1}\n", "true or false"),
    ("schema_version: 1\npasses:\n  - distill: {builder: dgits}\n", "did you mean 'digits'"),
    ("schema_version: 1\npasses:\n  - distill: {features: [fc1]}\n", "[teacher_layer, "),
    ("schema_version: 1\npasses:\n  - distill: {student: s.keras, width: 0.5}\n", "student file"),
    ("schema_version: 1\nconvert: {quant: int9}\n", "did you mean 'int8'"),
    ("schema_version: 1\nseed: -1\n", "seed = -1 is out of range"),
]


@pytest.mark.parametrize("text,fragment", BAD)
def test_bad_recipes_are_rejected_with_a_clear_error(text, fragment, tmp_path):
    (tmp_path / "s.keras").write_bytes(b"PK")
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "r.yaml", tmp_path)
    assert fragment.lower() in str(info.value).lower()


@pytest.mark.tf
def test_max_compress_prunes_the_big_conv_and_dense_kernels_of_any_model():
    """Selection by type and size, not by name, so the recipe applies to every reference model."""
    from tfedge.zoo.reference import digits_model, kws_model

    prune = next(p for p in load_recipe("max-compress").passes if p.pass_name == "prune")
    assert prune.selected(digits_model()) == ["conv2", "fc1"]  # conv1: 144 weights, logits: 640
    assert prune.selected(kws_model()) == [
        "conv0",
        "pw1",
        "pw2",
        "pw3",
        "pw4",
    ]  # no depthwise, no head


def test_unknown_builtin_suggests_the_close_one():
    with pytest.raises(RecipeError, match="did you mean 'prune-cluster-qat'"):
        load_recipe("prune-clustr-qat")


def test_loading_recipes_does_not_import_tensorflow():
    code = (
        "import sys, tfedge; from tfedge.optimize.recipe import builtin_recipes, load_recipe\n"
        "[load_recipe(n) for n in builtin_recipes()]\nassert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_recipes_list_show_check(run_cli, tmp_path):
    listed = run_cli("recipes", "list")
    assert "prune-cluster-qat" in listed.stdout and "max-compress" in listed.stdout
    shown = run_cli("recipes", "show", "prune-cluster-qat")
    assert parse_recipe(shown.stdout).pass_names == ["prune", "cluster", "qat"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 1\npasses:\n  - prune: {}\n  - clustr: {clusters: 8}\n")
    assert_one_error_line(
        run_cli("recipes", "check", bad, expect=1), "passes[1]", "did you mean 'cluster'"
    )


def test_optimize_rejects_a_bad_recipe_before_loading_or_training(run_cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "schema_version: 1\npasses:\n"
        "  - prune: {target_sparsity: 0.75}\n  - qat: {}\n  - cluster: {}\n"
    )
    model = tmp_path / "model.keras"
    model.write_bytes(b"not read")
    data = tmp_path / "d.npz"
    data.write_bytes(b"not read")
    result = run_cli(
        "optimize",
        model,
        "--recipe",
        bad,
        "--data",
        data,
        "--eval",
        data,
        "-o",
        tmp_path / "out",
        expect=1,
    )
    # The model and data files are not loadable: any error but the recipe's means they were read.
    assert_one_error_line(result, "qat must be the last pass")
    assert not (tmp_path / "out").exists()
