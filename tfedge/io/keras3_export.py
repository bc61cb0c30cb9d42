"""Keras models out: a tf_keras model written back as a Keras 3 ``.keras`` file, verified.

``optimize`` trains in tf_keras (tfmot works only there). When its input was a Keras 3 file,
the result must load with Keras 3's ``keras.models.load_model``, which cannot read a tf_keras
``.keras`` file (``Could not locate class 'Functional'``) but does read a legacy tf_keras
``.h5``. So the model goes out as ``.h5``, its config is adjusted where Keras 3 spells a layer
differently (``groups`` on depthwise/separable/transposed convolutions, ``time_major`` on
recurrent layers, tfedge's own ``tfedge>hard_silu``-style activations back to Keras 3's
built-ins), Keras 3 reads it, both models must agree on seeded inputs (the bridge's
tolerance), and Keras 3 saves the ``.keras`` file.

Example:
    >>> save_as_keras3(tf_keras_model, "out/model.keras")   # KerasExportError if it differs
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TypeGuard

from tfedge.errors import ConversionError

# tf_keras config keys Keras 3's layers do not take (they are defaults there).
DROPPED_ARGS = {
    "DepthwiseConv2D": ("groups",),
    "SeparableConv1D": ("groups", "kernel_initializer", "kernel_regularizer", "kernel_constraint"),
    "SeparableConv2D": ("groups", "kernel_initializer", "kernel_regularizer", "kernel_constraint"),
    "Conv1DTranspose": ("groups",),
    "Conv2DTranspose": ("groups",),
    "Conv3DTranspose": ("groups",),
    "LSTM": ("time_major",),
    "GRU": ("time_major",),
    "SimpleRNN": ("time_major",),
    "SpatialDropout1D": ("trainable",),
    "SpatialDropout2D": ("trainable",),
    "SpatialDropout3D": ("trainable",),
}
ACTIVATION_KEYS = ("activation", "recurrent_activation")
TFEDGE_PREFIX = "tfedge>"  # tfedge's tf_keras twins of Keras 3 activations (tfedge.io.activations)


class KerasExportError(ConversionError):
    """The tf_keras model could not be written as an equivalent Keras 3 model."""


def save_as_keras3(model2, path: str | Path) -> None:
    """Write the tf_keras ``model2`` to ``path`` as a Keras 3 ``.keras`` file, verified.

    Raises:
        KerasExportError: Keras 3 cannot rebuild the model, or the rebuild computes
            something else on seeded inputs (naming the first output that differs).
    """
    model3 = to_keras3(model2)
    model3.save(str(path))


def to_keras3(model2):
    """The Keras 3 twin of the tf_keras ``model2`` (same layer names and weights), verified."""
    import h5py

    from tfedge._tf import import_keras3
    from tfedge.io.keras3_layers import register_keras3

    keras = import_keras3()
    register_keras3()  # a tf_keras twin (ConvNeXt's LayerScale) reads back as Keras 3's class
    with tempfile.TemporaryDirectory(prefix="tfedge-keras3-") as tmp:
        h5 = Path(tmp) / "model.h5"
        try:
            model2.save(h5, save_format="h5")
            with h5py.File(h5, "r+") as f:
                config = json.loads(_text(f.attrs["model_config"]))
                f.attrs["model_config"] = json.dumps(keras3_config(config))
            model3 = keras.models.load_model(str(h5), compile=False)
        except Exception as exc:  # noqa: BLE001  (any failure to rebuild is the same answer)
            raise KerasExportError(
                f"Keras 3 cannot rebuild the optimized model: {_summary(exc)}",
                "the tf_keras model is kept as model_tf_keras.keras (load it with tf_keras); "
                "report the layer to tfedge",
            ) from exc
    verify_keras3(model2, model3)
    return model3


def keras3_config(config):
    """A tf_keras model config (as saved in ``.h5``) adjusted to what Keras 3's layers take.

    Walks every nested layer entry (Functional/Sequential models used as layers, wrappers).
    """
    if isinstance(config, list):
        return [keras3_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    out = {key: keras3_config(value) for key, value in config.items()}
    if out.get("class_name") == "TFOpLambda" and "inbound_nodes" in out:
        return _op_as_rescaling(out)
    inner = out.get("config")
    if isinstance(inner, dict) and isinstance(out.get("class_name"), str):
        for key in DROPPED_ARGS.get(out["class_name"], ()):
            inner.pop(key, None)
        for key in ACTIVATION_KEYS:
            if key in inner:
                inner[key] = _activation(inner[key])
    return out


def _op_as_rescaling(entry: dict) -> dict:
    """A tf_keras ``TFOpLambda`` computing ``x + c``, ``x - c``, ``c - x``, ``x * c`` or
    ``x / c`` (what the bridge makes of Keras 3's ``keras.ops`` layers, and what tf_keras's
    own MobileNetV3 records) -> a ``Rescaling(scale, offset)`` of the same name, which Keras 3
    loads (it has no TFOpLambda). Anything else is left for Keras 3 to refuse."""
    affine = set()
    nodes = []
    for node in entry["inbound_nodes"]:
        found = _scalar_affine(entry["config"].get("function"), node)
        if found is None:
            return entry
        (scale, offset), tensor = found
        affine.add((scale, offset))
        nodes.append([[*tensor, {}]])
    if len(affine) != 1:  # a shared layer called with different constants
        return entry
    scale, offset = affine.pop()
    name = entry["config"]["name"]
    config = {"name": name, "trainable": True, "dtype": "float32"}
    config.update(scale=scale, offset=offset)
    return {"class_name": "Rescaling", "config": config, "name": name, "inbound_nodes": nodes}


def _scalar_affine(function, node) -> tuple[tuple[float, float], list] | None:
    """((scale, offset), input tensor) of one TFOpLambda call with one constant, else None."""
    if not isinstance(node, list) or len(node) != 4 or not isinstance(node[3], dict):
        return None
    kwargs = node[3]
    constant_first = node[0] == "_CONSTANT_VALUE"  # ``c - x``: tf_keras records it so
    value, tensor = (node[2], kwargs.get("y")) if constant_first else (kwargs.get("y"), node[:3])
    if not _number(value) or not isinstance(tensor, list) or len(tensor) < 3:
        return None
    if set(kwargs) - {"y", "name"}:
        return None
    c = float(value)
    table = {
        "__operators__.add": (1.0, c),
        "math.add": (1.0, c),
        "math.subtract": (-1.0, c) if constant_first else (1.0, -c),
        "math.multiply": (c, 0.0),
    }
    if not constant_first and c != 0:
        table["math.truediv"] = (1.0 / c, 0.0)
    if function not in table:
        return None
    scale, offset = table[function]
    return (scale, offset), list(tensor[:3])


def _number(value) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _activation(value):
    """``tfedge>hard_silu`` (a string, or a serialized function) -> Keras 3's ``hard_silu``."""
    if isinstance(value, str) and value.startswith(TFEDGE_PREFIX):
        return value[len(TFEDGE_PREFIX) :]
    if isinstance(value, dict):
        for key in ("config", "class_name", "registered_name"):
            name = value.get(key)
            if isinstance(name, str) and name.startswith(TFEDGE_PREFIX):
                return name[len(TFEDGE_PREFIX) :]
    return value


def verify_keras3(model2, model3) -> None:
    """KerasExportError unless both models agree on seeded inputs (the bridge's tolerance)."""
    import numpy as np

    from tfedge.io.keras3_bridge import outputs_match, seeded_inputs

    x = seeded_inputs(model2)
    a, b = _outputs(model2, x), _outputs(model3, x)
    for i, (p, q) in enumerate(zip(a, b)):
        if not outputs_match([p], [q]):
            worst = float(np.max(np.abs(p - q))) if p.shape == q.shape else float("nan")
            raise KerasExportError(
                f"the Keras 3 rebuild of the optimized model differs from it "
                f"(output {i}, largest difference {worst:.3g})",
                "the tf_keras model is kept as model_tf_keras.keras (load it with tf_keras); "
                "report the model to tfedge",
            )
    if len(a) != len(b):
        raise KerasExportError(
            f"the Keras 3 rebuild has {len(b)} outputs, the optimized model {len(a)}",
            "the tf_keras model is kept as model_tf_keras.keras (load it with tf_keras)",
        )


def _outputs(model, x) -> list:
    import warnings

    import numpy as np

    with warnings.catch_warnings():  # Keras 3 warns about list vs. tensor input structures
        warnings.simplefilter("ignore")
        out = model(x if len(x) > 1 else x[0], training=False)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _summary(exc: Exception) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__
