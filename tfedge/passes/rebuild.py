"""Rebuild a Sequential or Functional tf_keras model from an edited config.

Used by ``low_rank`` (one layer becomes two) and ``distill`` (the teacher shrunk by a width
multiplier). Layers keep their names, so downstream references in the config stay valid.

Example:
    >>> config = model_config(model)
    >>> set_option(config, "fc1", units=32)
    >>> smaller = from_config(model, config)
"""
from __future__ import annotations

import copy

from ..errors import RecipeError


def model_config(model) -> dict:
    """A deep copy of ``model``'s config with every layer's recorded input shape dropped."""
    if type(model).__name__ not in ("Sequential", "Functional"):
        raise RecipeError(f"model '{model.name}' is a subclassed {type(model).__name__}",
                          "low_rank and distill need a Sequential or Functional model")
    config = copy.deepcopy(model.get_config())
    config.pop("build_input_shape", None)
    for layer in config["layers"]:
        layer.pop("build_config", None)
    return config


def layer_entry(config: dict, name: str) -> dict:
    for entry in config["layers"]:
        if entry["config"]["name"] == name:
            return entry
    raise KeyError(name)


def split_layer(config: dict, name: str, first: dict, second: dict) -> None:
    """Replace layer ``name`` by ``first`` (named ``name_lr``) feeding ``second`` (keeps ``name``)."""
    entry = layer_entry(config, name)
    index = config["layers"].index(entry)
    head = copy.deepcopy(entry)
    head["config"].update(first, name=f"{name}_lr")
    tail = copy.deepcopy(entry)
    tail["config"].update(second)
    if "inbound_nodes" in entry:  # functional
        head["name"] = f"{name}_lr"
        tail["inbound_nodes"] = [[[f"{name}_lr", 0, 0, {}]]]
    config["layers"][index:index + 1] = [head, tail]


def from_config(model, config: dict):
    """A fresh model of ``model``'s class built from ``config`` (new, untrained weights)."""
    from .._tf import import_keras

    k = import_keras()
    cls = k.Sequential if type(model).__name__ == "Sequential" else k.Model
    return cls.from_config(config)


def copy_weights(source, target, skip: set[str]) -> None:
    """Copy weights layer by layer (by name) from ``source`` to ``target``, except ``skip``."""
    for layer in target.layers:
        if layer.name not in skip and layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
