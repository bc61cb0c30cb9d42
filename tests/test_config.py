"""The shared validation layer (tfedge/config.py): messages in the project's words."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import Field, ValidationError, field_validator

from tfedge.config import Config, Names, json_schema, validate
from tfedge.errors import ProfileError, RecipeError


class Train(Config):
    optimizer: Literal["adam", "sgd", "rmsprop"] = "adam"
    learning_rate: float = Field(1e-3, gt=0, le=1)


class Prune(Config):
    target_sparsity: float = Field(0.5, ge=0, lt=1)
    layers: Names = ()
    epochs: int = Field(2, ge=0)
    train: Train = Train()

    @field_validator("epochs")
    @classmethod
    def _not_seven(cls, value: int) -> int:
        if value == 7:
            raise ValueError("seven epochs is unlucky (hint: use 6)")
        return value


@pytest.mark.parametrize(
    ("data", "message", "hint"),
    [
        (
            {"target_sparsity": 1.5},
            "target_sparsity = 1.5 is out of range",
            "use a value >= 0 and < 1",
        ),
        ({"target_sparsity": True}, "target_sparsity must be a number, got True", "plain number"),
        (
            {"targt_sparsity": 0.5},
            "unknown option 'targt_sparsity'",
            "did you mean 'target_sparsity'?",
        ),
        (
            {"train": {"optimizer": "adm"}},
            "train.optimizer = 'adm' is not one of adam, sgd, rmsprop",
            "did you mean 'adam'?",
        ),
        (
            {"train": {"learnin_rate": 1}},
            "train: unknown option 'learnin_rate'",
            "did you mean 'learning_rate'?",
        ),
        (
            {"train": {"learning_rate": 0}},
            "train.learning_rate = 0 is out of range",
            "> 0 and <= 1",
        ),
        ({"epochs": "2"}, "epochs must be an integer, got '2'", "without quotes"),
        ({"epochs": 7}, "epochs: seven epochs is unlucky", "use 6"),
        ({"layers": [1]}, "layers[0] must be a string, got 1", "layer name"),
        (5, "expected a mapping of options, got int", "key: value"),
    ],
)
def test_errors_name_the_key_path_and_hint(data, message, hint):
    with pytest.raises(RecipeError) as err:
        validate(Prune, data, "passes[0] prune")
    assert err.value.message == f"passes[0] prune: {message}"
    assert hint in err.value.hint


def test_valid_options_and_names():
    config = validate(Prune, {"target_sparsity": 0, "layers": "conv*"}, "prune")
    assert config.target_sparsity == 0.0 and isinstance(config.target_sparsity, float)
    assert config.layers == ("conv*",)
    assert validate(Prune, None, "prune") == Prune()
    with pytest.raises(ValidationError):  # frozen
        config.epochs = 3  # type: ignore[misc]


def test_error_class_is_the_callers():
    with pytest.raises(ProfileError):
        validate(Prune, {"nope": 1}, "profile rpi4", ProfileError)


def test_json_schema_forbids_unknown_keys():
    schema = json_schema(Prune, "prune options")
    assert schema["title"] == "prune options"
    assert schema["additionalProperties"] is False
    assert schema["properties"]["target_sparsity"]["exclusiveMaximum"] == 1


class Named(Config):
    name: str = Field("x", min_length=1, max_length=4, pattern=r"^[a-z]+$")


@pytest.mark.parametrize(
    ("value", "message", "hint"),
    [
        ("", "name = '' is too short", "at least 1 character"),
        ("abcdef", "name = 'abcdef' is too long", "at most 4 characters"),
        ("A1", "name = 'A1' has a wrong form", "match ^[a-z]+$"),
    ],
)
def test_string_limits_are_described(value, message, hint):
    with pytest.raises(RecipeError) as err:
        validate(Named, {"name": value}, "profile p")
    assert err.value.message == f"profile p: {message}"
    assert hint in err.value.hint
