"""Dimensions of the search built from the model: per-layer precision (the space's
``precision`` block, the ranked layers a trial's ``precision.N`` names, the recipe's
``convert.precision``) and per-group channel keep ratios (``channels: {groups: N}``, the
recipe's ``ratios``)."""

from __future__ import annotations

import pytest

from tfedge.errors import RecipeError
from tfedge.search.space import dimensions, for_profile, parse_space, recipe_data


def test_precision_dimensions_follow_the_ranked_layers() -> None:
    space = parse_space("precision: {layers: 2}\nquant: [int8, float16]\nchannels: false\n")
    dims = dimensions(space)
    assert dims["precision.0"] == ("choice", ("int8", "int16", "float"))
    assert "precision.2" not in dims
    params = {"quant": "int8", "precision.0": "int16", "precision.1": "int8", "epochs": 1}
    data = recipe_data(params, space, ["conv2", "fc1"])
    assert data["convert"] == {"quant": "int8", "precision": {"conv2": "int16"}}
    float16 = recipe_data({**params, "quant": "float16"}, space, ["conv2", "fc1"])
    assert "precision" not in float16["convert"]  # per-layer precision is for int8 only
    qat = recipe_data({**params, "qat": True}, space.model_copy(update={"qat": True}), ["conv2"])
    assert "precision" not in qat["convert"]  # a QAT model keeps its own ranges


def test_precision_is_off_by_default_and_keeps_old_space_hashes() -> None:
    assert parse_space("").precision is None
    assert parse_space("precision: false\n").sha256 == parse_space("").sha256
    assert parse_space("precision: {layers: 1}\n").sha256 != parse_space("").sha256
    assert not any(name.startswith("precision") for name in dimensions(parse_space("")))


def test_a_full_integer_profile_keeps_int16_layers_only() -> None:
    space, notes = for_profile(parse_space("precision: {layers: 1}\n"), True)
    assert space.precision is not None and space.precision.choices == ("int16",)
    assert any("precision float left out" in note for note in notes)
    floats, _ = for_profile(parse_space("precision: {choices: [float]}\n"), True)
    assert floats.precision is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("precision: {layers: 0}\n", "layers"), ("precision: {choices: [int4]}\n", "choices")],
)
def test_bad_precision_blocks_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(RecipeError, match=fragment):
        parse_space(text)


class _Study:
    """What ``ranked_layers`` uses of an Optuna study: its user attributes."""

    def __init__(self) -> None:
        self.user_attrs: dict = {}

    def set_user_attr(self, key: str, value) -> None:
        self.user_attrs[key] = value


@pytest.mark.tf
def test_the_study_ranks_the_layers_once(digits, tmp_path) -> None:
    from tfedge.search.objectives import Inputs
    from tfedge.search.precision import ranked_layers

    space = parse_space("precision: {layers: 2}\nquant: [int8]\n")
    inputs = Inputs(str(digits.model), str(digits.train), str(digits.test))
    study = _Study()
    names = ranked_layers(space, study, inputs, tmp_path)
    assert len(names) == 2 and set(names) <= {"conv1", "conv2", "pool", "flatten", "fc1", "logits"}
    assert study.user_attrs["precision_layers"] == names
    (tmp_path / "precision" / "float32.tflite").unlink()
    assert ranked_layers(space, study, inputs, tmp_path) == names  # stored: not ranked again
    assert ranked_layers(parse_space("quant: [int8]\n"), _Study(), inputs, tmp_path) == []


def test_recipe_precision_is_checked() -> None:
    from tfedge.optimize.recipe import parse_recipe

    recipe = parse_recipe("schema_version: 1\nconvert: {quant: int8, precision: {fc1: int16}}\n")
    assert recipe.convert.precision == {"fc1": "int16"}
    plain = parse_recipe("schema_version: 1\n")
    assert "precision" not in plain.to_dict()["convert"]  # old recipes keep their hash
    assert recipe.canonical_sha256 != plain.canonical_sha256
    with pytest.raises(RecipeError, match="precision applies to quant int8"):
        parse_recipe("schema_version: 1\nconvert: {quant: float16, precision: {fc1: int16}}\n")
    with pytest.raises(RecipeError, match="qat trains int8 ranges"):
        parse_recipe(
            "schema_version: 1\npasses:\n  - qat: {epochs: 1}\n"
            "convert: {quant: int8, precision: {fc1: float}}\n"
        )


@pytest.mark.tf
@pytest.mark.slow
def test_optimize_keeps_the_named_layer_in_int16(digits, tmp_path) -> None:
    """What a trial's ``precision.N`` becomes: ``best/recipe.yaml`` rebuilds it."""
    import tfedge
    from tfedge.convert.keras_layers import keras_layers
    from tfedge.convert.layer_names import op_layers
    from tfedge.convert.tflite_model import read_tflite

    recipe = tmp_path / "mixed.yaml"
    recipe.write_text("schema_version: 1\nconvert: {quant: int8, precision: {fc1: int16}}\n")
    result = tfedge.optimize(digits.model, recipe, digits.train, digits.test, tmp_path / "out")
    model = read_tflite(result.model)
    names = op_layers(model.ops, keras_layers(digits.model))
    dtypes = {(name, op.name): op.outputs[0].dtype for op, name in zip(model.ops, names)}
    assert dtypes[("fc1", "FULLY_CONNECTED")] == "int16"  # QUANTIZE ops around it
    assert dtypes[("conv2", "CONV_2D")] == dtypes[("logits", "FULLY_CONNECTED")] == "int8"
    assert result.final.accuracy is not None and result.final.accuracy > 0.95


def test_channel_groups_get_their_own_keep_ratio() -> None:
    space = parse_space("channels: {keep: [0.3, 0.9], groups: 2}\nquant: [int8]\n")
    dims = dimensions(space)
    assert dims["channels.group.0"] == ("float", (0.3, 0.9)) and "channels.group.2" not in dims
    params = {"channels": True, "channels.keep": 0.5, "channels.group.0": 0.41234, "epochs": 1}
    data = recipe_data(params, space, groups=["conv2", "fc1"])
    assert data["passes"] == [
        {"channels": {"keep": 0.5, "epochs": 1, "ratios": {"conv2": 0.412}}}
    ]  # the group without a sampled ratio keeps the global one
    assert (
        parse_space("channels: {keep: [0.3, 0.9], groups: 0}\n").sha256
        == parse_space("channels: {keep: [0.3, 0.9]}\n").sha256
    )  # spaces from before groups keep their hash


@pytest.mark.tf
def test_the_study_finds_the_groups_with_the_most_macs(digits) -> None:
    from tfedge.optimize.recipe import parse_recipe
    from tfedge.search.groups import largest_groups
    from tfedge.search.objectives import Inputs

    space = parse_space("channels: {keep: [0.3, 0.9], groups: 2}\n")
    study = _Study()
    names = largest_groups(space, study, Inputs(str(digits.model), "", ""))
    assert names == ["conv2", "conv1"]  # conv2 holds most of digits' MACs; logits is whole
    assert study.user_attrs["channel_groups"] == names
    assert largest_groups(parse_space(""), _Study(), Inputs(str(digits.model), "", "")) == []
    ratios = {name: 0.5 for name in names}  # what a trial writes: a valid recipe
    parse_recipe(f"schema_version: 1\npasses:\n  - channels: {{ratios: {ratios}}}\n")
