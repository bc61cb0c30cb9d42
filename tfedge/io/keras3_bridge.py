"""Keras 3 models in: rebuild a Keras 3 model as a tf_keras (Keras 2) model, then prove it.

tfmot works only on tf_keras. The bridge translates the Keras 3 config (layer arguments,
dtype policies, the graph's node format) into tf_keras form, builds the model, copies the
weights layer by layer, and checks both models agree on seeded inputs
(:func:`outputs_match`: float32 round-off, relative to each output's scale); otherwise it
names the first layer that diverged.

Example:
    >>> model = bridge_keras3_file("model_k3.keras")   # a tf_keras.Model, verified
"""

from __future__ import annotations

import inspect as pyinspect
from typing import Any

import numpy as np

from tfedge.errors import ModelLoadError
from tfedge.io import activations, keras3_layers
from tfedge.io.flatten import AUGMENTATION_LAYERS

SUPPORTED_LAYERS = frozenset(
    {
        "InputLayer",
        "Dense",
        "Conv1D",
        "Conv2D",
        "DepthwiseConv2D",
        "SeparableConv2D",
        "BatchNormalization",
        "LayerNormalization",
        "Activation",
        "ReLU",
        "LeakyReLU",
        "PReLU",
        "ELU",
        "Softmax",
        "MaxPooling1D",
        "MaxPooling2D",
        "AveragePooling1D",
        "AveragePooling2D",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "Flatten",
        "Reshape",
        "Dropout",
        "SpatialDropout2D",
        "Add",
        "Subtract",
        "Concatenate",
        "Multiply",
        "Average",
        "Maximum",
        "Minimum",
        "ZeroPadding1D",
        "ZeroPadding2D",
        "Rescaling",
        "Embedding",
        "LSTM",
        "GRU",
        "SimpleRNN",
        "Bidirectional",
        "Permute",
        "UpSampling2D",
        "Cropping2D",
        "Conv2DTranspose",
        "Normalization",
        "Resizing",
        "CenterCrop",
    }
    # data augmentation: identity at inference, dropped when the model is flattened
    | AUGMENTATION_LAYERS
)
MODEL_CLASSES = frozenset({"Functional", "Sequential"})
# Keras 3 op layers (``x + 3.0`` in a Functional graph, ``keras.src.ops.numpy``) -> the
# TFOpLambda function tf_keras itself records for the same code with a constant operand,
# and the merge layer for two tensors.
OP_LAYERS = {
    "Add": ("__operators__.add", "Add"),
    "Subtract": ("math.subtract", "Subtract"),
    "Multiply": ("math.multiply", "Multiply"),
    "TrueDivide": ("math.truediv", None),
    "Divide": ("math.truediv", None),
}
OPS_MODULE = "keras.src.ops.numpy"
BASE_LAYER_KWARGS = frozenset(
    {"name", "trainable", "dtype", "input_shape", "batch_input_shape", "batch_size", "input_dim"}
)
# Keras 3 argument names that tf_keras spells differently, per layer.
RENAMED_ARGS = {
    "InputLayer": {"batch_shape": "batch_input_shape"},
    "LeakyReLU": {"negative_slope": "alpha"},
}
SEEDED_INPUTS = 32
# Two float32 graphs computing the same function in another order differ by round-off that
# grows with depth and with the outputs' magnitude (a trained network on seeded normal inputs
# reaches logits near 100): the absolute tolerance scales with each output's largest value.
# A mistranslation (tf_keras's 0.2x+0.5 hard_sigmoid for Keras 3's relu6(x+3)/6) is 1e-2 off.
RTOL, ATOL_SCALE = 1e-4, 1e-5


def bridge_keras3_file(path: str):
    """Load a Keras 3 ``.keras``/``.h5`` file and return the verified tf_keras model."""
    from tfedge._tf import import_keras, import_keras3
    from tfedge.io.models import check_model_safe, detect_format, model_trusted

    check_model_safe(detect_format(path))  # before Keras 3 reads it (and maybe runs its code)
    keras = import_keras3()
    import_keras()
    try:
        model3 = keras.models.load_model(path, compile=False, safe_mode=not model_trusted())
    except Exception as exc:
        raise ModelLoadError(
            f"Keras 3 cannot load {path}: {_first_line(exc)}",
            "custom layers must be registered with keras.saving.register_keras_serializable",
        ) from exc
    return bridge_keras3_model(model3)


def bridge_keras3_model(model3):
    """Rebuild the in-memory Keras 3 ``model3`` in tf_keras, copy its weights and verify it."""
    check_translatable(model3)
    keras3_layers.register_keras3()  # the twins' way back (keras3_export)
    model2 = _build_tf_keras(model3)
    _copy_weights(model3, model2)
    verify_same_outputs(model3, model2)
    return model2


def check_translatable(model3) -> None:
    """ModelLoadError unless every layer of ``model3`` (nested models included) translates."""
    kind = type(model3).__name__
    if kind not in MODEL_CLASSES:
        raise ModelLoadError(
            f"the model is a subclassed Keras model ({kind}); "
            "its architecture is Python code, not data",
            "rewrite it with the Functional API (keras.Model(inputs, outputs)) or Sequential",
        )
    unknown = _untranslatable(model3, inside="")
    if not unknown:
        return
    if len(unknown) > 6:
        unknown = [*unknown[:5], f"and {len(unknown) - 5} more"]
    nested = any(" in '" in u for u in unknown)
    raise ModelLoadError(
        "the Keras 3 bridge cannot translate these layers: " + ", ".join(unknown),
        (
            "they are custom layers (Python code, not built-in Keras layers): give each a "
            "tf_keras twin registered as a custom object, or convert the model directly with "
            "`tfedge convert` / a post-training recipe (no bridge needed)"
        )
        if nested
        else (
            "use built-in layers for a model that needs tfmot passes, or convert it directly "
            "with `tfedge convert` / a post-training recipe (no bridge needed); custom layers "
            "need a tf_keras twin registered as a custom object"
        ),
    )


def _untranslatable(model3, inside: str) -> list[str]:
    where = f" in '{inside}'" if inside else ""
    unknown = []
    for op in getattr(model3, "operations", None) or model3.layers:
        cls, module = type(op).__name__, type(op).__module__
        if cls == "InputLayer":
            continue
        if cls in MODEL_CLASSES and module.startswith("keras"):
            unknown += _untranslatable(op, inside=op.name)
        elif module == OPS_MODULE:
            if cls not in OP_LAYERS:
                unknown.append(f"{op.name} (keras.ops {cls}){where}")
        elif cls in keras3_layers.TWINS and module.startswith("keras"):
            continue  # tfedge's tf_keras twin (ConvNeXt's LayerScale)
        elif cls not in SUPPORTED_LAYERS or not module.startswith("keras"):
            unknown.append(f"{op.name} ({cls}){where}")
    return unknown


def _build_tf_keras(model3):
    from tfedge._tf import import_keras

    k2 = import_keras()
    config = model3.get_config()
    try:
        if type(model3).__name__ == "Sequential":
            return k2.Sequential.from_config(_sequential_config(config, k2))
        return k2.Model.from_config(_functional_config(config, k2))
    except Exception as exc:
        raise ModelLoadError(
            f"tf_keras could not rebuild the Keras 3 graph: {_first_line(exc)}",
            "convert the model directly with `tfedge convert` (no tfmot passes)",
        ) from exc


def _functional_config(config: dict, k2) -> dict:
    """A Keras 3 Functional config in tf_keras form (nested models translated too)."""
    # tf_keras counts a nested model's internal first node (its Input) in every reference to
    # it; Keras 3 counts it only in ``output_layers``, and only for Functional models.
    built = {
        e["name"]: e["class_name"]
        for e in config["layers"]
        if e["class_name"] == "Functional"
        or (
            e["class_name"] == "Sequential"
            and e["config"]["layers"]
            and e["config"]["layers"][0]["class_name"] == "InputLayer"
        )
    }
    offsets = dict.fromkeys(built, 1)
    output_offsets = {name: 1 for name, kind in built.items() if kind == "Sequential"}
    layers = []
    for e in config["layers"]:
        if e.get("module") == OPS_MODULE:
            layers.append(_op_entry(e, offsets))
        else:
            nodes = _nodes(e["inbound_nodes"], offsets)
            layers.append(dict(_layer_entry(e, k2), name=e["name"], inbound_nodes=nodes))
    return {
        "name": config.get("name", "model"),
        "layers": layers,
        "input_layers": _endpoints(config["input_layers"]),
        "output_layers": [_offset(h, output_offsets) for h in _endpoints(config["output_layers"])],
    }


def _sequential_config(config: dict, k2) -> dict:
    layers = [_layer_entry(entry, k2) for entry in config["layers"]]
    return {"name": config.get("name", "sequential"), "layers": layers}


def _layer_entry(entry: dict, k2) -> dict:
    cls_name = entry["class_name"]
    if cls_name == "Functional":
        return {"class_name": "Functional", "config": _functional_config(entry["config"], k2)}
    if cls_name == "Sequential":
        return {"class_name": "Sequential", "config": _sequential_config(entry["config"], k2)}
    twin = keras3_layers.twin_class(cls_name, k2)
    cls = twin or getattr(k2.layers, cls_name)
    config = _layer_config(cls_name, entry["config"], cls, k2)
    return {"class_name": keras3_layers.TWINS[cls_name] if twin else cls_name, "config": config}


def _layer_config(cls_name: str, config: dict, cls, k2) -> dict:
    out = {}
    accepted = _accepted_args(cls)
    renames = RENAMED_ARGS.get(cls_name, {})
    for key, value in config.items():
        key = renames.get(key, key)
        if key.endswith("_initializer") or (accepted is not None and key not in accepted):
            continue  # weights are copied, so initializers do not matter
        out[key] = _value(key, value, k2)
    if cls_name == "Bidirectional":
        out["layer"] = _layer_entry(config["layer"], k2)
        if config.get("backward_layer"):
            out["backward_layer"] = _layer_entry(config["backward_layer"], k2)
    return out


def _accepted_args(cls) -> set[str] | None:
    params = pyinspect.signature(cls.__init__).parameters
    names = {n for n in params if n != "self"}
    return names | BASE_LAYER_KWARGS


def _value(key: str, value: Any, k2) -> Any:
    if key == "dtype" and isinstance(value, dict):
        return value.get("config", {}).get("name", "float32")
    if key == "activation":
        if isinstance(value, dict) and value.get("class_name") == "function":
            value = value.get("config")
        if isinstance(value, str):
            return activations.translate(value)
    if isinstance(value, dict) and "class_name" in value:
        return {"class_name": value["class_name"], "config": value.get("config", {})}
    return value


def _nodes(inbound_nodes: list, offsets: dict[str, int]) -> list:
    """Keras 3 inbound nodes -> tf_keras inbound nodes.

    ``{"args": [tensors...], "kwargs": {}}`` -> ``[[name, node, index, kwargs]]``.
    """
    out = []
    for node in inbound_nodes:
        kwargs = {
            k: v
            for k, v in node.get("kwargs", {}).items()
            if not _is_tensor(v) and k != "training"  # Keras 3 records the call's default
        }
        out.append([[*_offset(h, offsets), kwargs] for h in _histories(node.get("args", []))])
    return out


def _offset(history: list, offsets: dict[str, int]) -> list:
    name, node, index = history[:3]
    return [name, node + offsets.get(name, 0), index]


def _op_entry(entry: dict, offsets: dict[str, int]) -> dict:
    """A Keras 3 ``keras.ops`` layer (``x + 3.0``) -> what tf_keras records for that code.

    One constant operand: a ``TFOpLambda`` with the constant as the ``y`` call argument
    (``["_CONSTANT_VALUE", -1, c, {"y": x}]`` when the constant comes first, as tf_keras
    writes ``3.0 - x``). Two tensors: the merge layer (``Add``, ``Subtract``, ``Multiply``).
    """
    name, cls_name = entry["name"], entry["class_name"]
    function, merge = OP_LAYERS[cls_name]
    nodes: list[Any] = []
    merged: list[bool] = []
    for node in entry["inbound_nodes"]:
        args = node.get("args", [])
        if len(args) != 2 or node.get("kwargs"):
            raise _op_error(name, cls_name)
        a, b = (
            _offset(list(arg["config"]["keras_history"]), offsets) if _is_tensor(arg) else arg
            for arg in args
        )
        if _is_tensor(args[0]) and _is_tensor(args[1]):
            if merge is None:
                raise _op_error(name, cls_name)
            nodes.append([[*a, {}], [*b, {}]])
            merged.append(True)
        elif _is_tensor(args[0]) and isinstance(b, (int, float)):
            nodes.append([*a, {"y": b, "name": None}])  # one tensor: the node is the entry
            merged.append(False)
        elif _is_tensor(args[1]) and isinstance(a, (int, float)):
            nodes.append(["_CONSTANT_VALUE", -1, a, {"y": b, "name": None}])
            merged.append(False)
        else:
            raise _op_error(name, cls_name)
    if all(merged):
        layer = {"class_name": merge, "config": {"name": name, "trainable": True}}
    elif not any(merged):
        layer = {
            "class_name": "TFOpLambda",
            "config": {"name": name, "trainable": True, "dtype": "float32", "function": function},
        }
    else:
        raise _op_error(name, cls_name)
    return dict(layer, name=name, inbound_nodes=nodes)


def _op_error(name: str, cls_name: str) -> ModelLoadError:
    return ModelLoadError(
        f"the Keras 3 bridge cannot translate the op layer '{name}' (keras.ops {cls_name}): "
        "only a tensor with a Python number, or two tensors (add, subtract, multiply), translate",
        "use keras.layers.Add / Multiply / Rescaling, or convert the model directly with "
        "`tfedge convert` / a post-training recipe",
    )


def _histories(value) -> list:
    if _is_tensor(value):
        return [list(value["config"]["keras_history"])]
    if isinstance(value, (list, tuple)):
        return [h for item in value for h in _histories(item)]
    return []


def _is_tensor(value) -> bool:
    return isinstance(value, dict) and value.get("class_name") == "__keras_tensor__"


def _endpoints(value: list) -> list:
    return [value] if value and isinstance(value[0], str) else value


def _copy_weights(model3, model2) -> None:
    for layer3 in model3.layers:
        if type(layer3).__name__ in MODEL_CLASSES:
            _copy_weights(layer3, model2.get_layer(layer3.name))
            continue
        weights = layer3.get_weights()
        if not weights:
            continue
        layer2 = model2.get_layer(layer3.name)
        try:
            layer2.set_weights(weights)
        except ValueError as exc:
            raise ModelLoadError(
                f"layer '{layer3.name}': weights do not fit the tf_keras rebuild "
                f"({_first_line(exc)})",
                "convert the model directly with `tfedge convert`",
            ) from exc


def seeded_inputs(model, count: int = SEEDED_INPUTS, seed: int = 0) -> list[np.ndarray]:
    """Inputs for ``model``: normal floats, or token ids below every Embedding's vocabulary."""
    rng = np.random.default_rng(seed)
    vocab = min([l.input_dim for l in model.layers if type(l).__name__ == "Embedding"] or [10])
    out = []
    for tensor in model.inputs:
        shape = (count, *[d or 1 for d in tuple(tensor.shape)[1:]])
        dtype = np.dtype(getattr(tensor.dtype, "name", tensor.dtype))
        if np.issubdtype(dtype, np.integer):
            out.append(rng.integers(0, vocab, size=shape).astype(dtype))
        else:
            out.append(rng.normal(size=shape).astype(np.float32))
    return out


def verify_same_outputs(model3, model2) -> None:
    """Raise ModelLoadError naming the first diverging layer unless both models agree."""
    x = seeded_inputs(model3)
    if outputs_match(predict_outputs(model3, x), predict_outputs(model2, x)):
        return
    layer = _first_diverging_layer(model3, model2, x)
    raise ModelLoadError(
        f"the tf_keras rebuild differs from the Keras 3 model (first at layer '{layer}')",
        "convert the model directly with `tfedge convert` or a post-training recipe; "
        "report the layer to tfedge",
    )


def predict_outputs(model, x: list[np.ndarray]) -> list[np.ndarray]:
    """``model``'s outputs on ``x`` in inference mode, as a list of arrays."""
    out = model(x if len(x) > 1 else x[0], training=False)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


def outputs_match(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """Same shapes and values up to float32 round-off (``RTOL``, ``ATOL_SCALE`` x the scale)."""
    return len(a) == len(b) and all(
        p.shape == q.shape and np.allclose(p, q, rtol=RTOL, atol=ATOL_SCALE * max(1.0, _scale(p)))
        for p, q in zip(a, b)
    )


def _scale(p: np.ndarray) -> float:
    return float(np.max(np.abs(p), initial=0.0)) if p.size else 0.0


def _first_diverging_layer(model3, model2, x) -> str:
    import keras

    from tfedge._tf import import_keras

    k2 = import_keras()
    for layer3 in model3.layers:
        if type(layer3).__name__ == "InputLayer":
            continue
        try:
            probe3 = keras.Model(model3.inputs, layer3.output)
            probe2 = k2.Model(model2.inputs, model2.get_layer(layer3.name).output)
        except (ValueError, AttributeError, RuntimeError):
            continue  # a layer without one output in the outer graph (a shared model)
        if not outputs_match(predict_outputs(probe3, x), predict_outputs(probe2, x)):
            return layer3.name
    return model3.layers[-1].name


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
