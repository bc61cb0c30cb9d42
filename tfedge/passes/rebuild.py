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
from typing import Any

from tfedge.errors import RecipeError


def model_config(model) -> dict:
    """A deep copy of ``model``'s config with every layer's recorded input shape dropped."""
    if type(model).__name__ not in ("Sequential", "Functional"):
        raise RecipeError(
            f"model '{model.name}' is a subclassed {type(model).__name__}",
            "low_rank and distill need a Sequential or Functional model",
        )
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
    """Replace layer ``name`` by ``first`` (named ``name_lr``) feeding ``second`` (``name``)."""
    entry = layer_entry(config, name)
    index = config["layers"].index(entry)
    head = copy.deepcopy(entry)
    head["config"].update(first, name=f"{name}_lr")
    tail = copy.deepcopy(entry)
    tail["config"].update(second)
    if "inbound_nodes" in entry:  # functional
        head["name"] = f"{name}_lr"
        tail["inbound_nodes"] = [[[f"{name}_lr", 0, 0, {}]]]
    config["layers"][index : index + 1] = [head, tail]


def from_config(model, config: dict):
    """A fresh model of ``model``'s class built from ``config`` (new, untrained weights)."""
    from tfedge._tf import import_keras

    k = import_keras()
    cls = k.Sequential if type(model).__name__ == "Sequential" else k.Model
    return cls.from_config(config)


def copy_weights(source, target, skip: frozenset[str] | set[str] = frozenset()) -> None:
    """Copy weights layer by layer (by name) from ``source`` to ``target``, except ``skip``."""
    for layer in target.layers:
        if layer.name not in skip and layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())


def fold_for_qat(model):
    """``model`` prepared for tfmot's QAT: the Dense-following BatchNormalization and ReLU layers
    it mishandles folded into their Dense (see ``fold_dense_batchnorm`` and ``fold_dense_relu``),
    and activations it cannot quantize inside a layer moved out (``split_activations``).
    Returns ``(model, {folded_layer: dense}, {layer: its new activation layer})``."""
    from tfedge.passes.qat_configs import moved_activations

    model, bns = fold_dense_batchnorm(model)
    model, relus = fold_dense_relu(model)
    model, moved = split_activations(model, moved_activations(model))
    return model, {**bns, **relus}, moved


def split_activations(model, names: list[str]):
    """``model`` with the activation of each layer in ``names`` moved into a new ``Activation``
    layer ``<name>_activation`` right after it (same function, same weights).

    tfmot quantizes a Conv2D/Dense's own activation only for relu, swish, gelu, sigmoid, tanh and
    softmax; ``Conv2D(activation="relu6")`` or ``"hard_silu"``, as users write them, are
    quantized as their own layer. Returns ``(model, {layer: activation_layer})``.
    """
    if not names:
        return model, {}
    config = model_config(model)
    taken = {entry["config"]["name"] for entry in config["layers"]}
    moved = {name: _free_name(f"{name}_activation", taken) for name in names}
    functional = "output_layers" in config
    layers = []
    for entry in config["layers"]:
        if functional:
            entry["inbound_nodes"] = _rename_refs(entry["inbound_nodes"], moved)
        layers.append(entry)
        name = entry["config"]["name"]
        if name in moved:
            layers.append(_activation_entry(entry, moved[name], functional))
    config["layers"] = layers
    if functional:
        config["output_layers"] = _rename_refs(config["output_layers"], moved)
    split = from_config(model, config)
    copy_weights(model, split)
    return split, moved


def _activation_entry(entry: dict, name: str, functional: bool) -> dict:
    options = entry["config"]
    activation = options["activation"]
    options["activation"] = "linear"
    new: dict[str, Any] = {
        "class_name": "Activation",
        "config": {"name": name, "activation": activation, "dtype": options.get("dtype")},
    }
    if functional:
        new.update(name=name, inbound_nodes=[[[options["name"], 0, 0, {}]]])
    return new


def _free_name(name: str, taken: set[str]) -> str:
    candidate, i = name, 1
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


def fold_dense_batchnorm(model):
    """``model`` with every BatchNormalization that follows a linear Dense folded into that Dense.

    tfmot's 8-bit QAT folds BatchNormalization into a preceding Conv2D/DepthwiseConv2D but not
    into a Dense: the Dense kernel gets its fake-quant range, then the converter folds the BN
    scale into the kernel, so the int8 kernel is not the one QAT (and clustering) trained and the
    layer needs calibration. Folding first makes the trained kernel the deployed one. In
    inference the result computes the same function: ``kernel * s``, ``(bias - mean) * s + beta``
    with ``s = gamma / sqrt(variance + epsilon)``. Returns ``(model, {bn_name: dense_name})``;
    the model itself when there is nothing to fold.
    """
    pairs = _dense_bn_pairs(model)
    if not pairs:
        return model, {}
    folded = _without_layers(model, pairs, lambda options: options.update(use_bias=True))
    copy_weights(model, folded, skip=set(pairs.values()))
    for bn_name, dense_name in pairs.items():
        folded.get_layer(dense_name).set_weights(
            _folded_weights(model.get_layer(dense_name), model.get_layer(bn_name))
        )
    return folded, pairs


def fold_dense_relu(model):
    """``model`` with each plain ReLU layer after a linear Dense made that Dense's activation.

    tfmot's 8-bit QAT fuses a Dense with a separate ReLU layer through a transform that gives the
    Dense its default quantize config, so PCQAT/CQAT/PQAT no longer preserve its zeros and clusters
    (measured: 75% zeros and 16 values became 43-50% and 19-24 in the int8 file);
    ``Dense(activation="relu")`` keeps them. Same function, same weights. Returns
    ``(model, {relu_name: dense_name})``.
    """
    pairs = _dense_pairs(model, _is_plain_relu)
    if not pairs:
        return model, {}
    merged = _without_layers(model, pairs, lambda options: options.update(activation="relu"))
    copy_weights(model, merged)
    return merged, pairs


def _without_layers(model, pairs: dict[str, str], edit_dense):
    """A fresh model from ``model``'s config without the layers ``pairs`` names (keys), their
    consumers rewired to the Dense (values), whose config ``edit_dense`` updates."""
    config = model_config(model)
    config["layers"] = [e for e in config["layers"] if e["config"]["name"] not in pairs]
    for entry in config["layers"]:
        if entry["config"]["name"] in pairs.values():
            edit_dense(entry["config"])
        if "inbound_nodes" in entry:
            entry["inbound_nodes"] = _rename_refs(entry["inbound_nodes"], pairs)
    if "output_layers" in config:
        config["output_layers"] = _rename_refs(config["output_layers"], pairs)
    return from_config(model, config)


def _is_plain_relu(layer) -> bool:
    options = layer.get_config()
    if type(layer).__name__ == "Activation":
        return options.get("activation") == "relu"
    return (
        type(layer).__name__ == "ReLU"
        and options.get("max_value") is None
        and not options.get("negative_slope")
        and not options.get("threshold")
    )


def _is_last_axis_bn(layer) -> bool:
    if type(layer).__name__ != "BatchNormalization":
        return False
    rank = len(layer.input.shape)
    axes = [
        a % rank for a in (layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis])
    ]
    return axes == [rank - 1]


def _dense_bn_pairs(model) -> dict[str, str]:
    """{bn: dense} for each BatchNormalization over the last axis after a linear Dense."""
    return _dense_pairs(model, _is_last_axis_bn)


def _dense_pairs(model, follows) -> dict[str, str]:
    """{layer: dense} for each layer accepted by ``follows`` whose only input is a linear Dense
    that feeds nothing else."""
    if type(model).__name__ not in ("Sequential", "Functional"):
        return {}
    pairs = {}
    for i, layer in enumerate(model.layers):
        if not follows(layer):
            continue
        if type(model).__name__ == "Sequential":
            dense = model.layers[i - 1] if i > 0 else None
        else:
            nodes = layer.inbound_nodes
            inbound = nodes[0].inbound_layers if len(nodes) == 1 else None
            dense = (
                inbound if inbound is not None and not isinstance(inbound, (list, tuple)) else None
            )
        if (
            dense is None
            or type(dense).__name__ != "Dense"
            or dense.get_config()["activation"] != "linear"
        ):
            continue
        if len(dense.outbound_nodes) == 1 and len(dense.inbound_nodes) == 1:
            pairs[layer.name] = dense.name
    return pairs


def _rename_refs(value, renamed: dict):
    if isinstance(value, str):
        return renamed.get(value, value)
    if isinstance(value, list):
        return [_rename_refs(v, renamed) for v in value]
    if isinstance(value, tuple):
        return tuple(_rename_refs(v, renamed) for v in value)
    return value


def _folded_weights(dense, bn) -> list:
    import numpy as np

    kernel = dense.kernel.numpy()
    bias = dense.bias.numpy() if dense.use_bias else np.zeros(kernel.shape[-1], kernel.dtype)
    gamma = bn.gamma.numpy() if bn.scale else np.ones_like(bias)
    beta = bn.beta.numpy() if bn.center else np.zeros_like(bias)
    scale = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    return [
        (kernel * scale).astype(kernel.dtype),
        ((bias - bn.moving_mean.numpy()) * scale + beta).astype(bias.dtype),
    ]
